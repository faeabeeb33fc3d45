// Random-operation differential test: a seeded, reproducible sequence of operations on kernel
// overlayfs and on layerfs over identical layers; every result and the final state compared.
// LAYERFS_SEED=n reproduces a run; LAYERFS_OPS=n changes its length.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { native } from '../src/sys/native';
import { AT_FDCWD, RENAME_EXCHANGE, RENAME_NOREPLACE } from '../src/sys/constants';
import { requireFuse, tempDir, unmountAll } from './helpers/mount';
import { buildLowers, mountSide, prepareSide, sysCall, unmountSide, upperView, view } from './helpers/overlay';

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Not 'xw' (a dir with kernel xattr whiteouts in a lower layer): the kernel lists it empty once
// its entries are removed, yet its rmdir says ENOTEMPTY (its emptiness check counts lower xattr
// whiteouts); layerfs removes it. Reads of 'xw' are covered by the oracle scenarios.
const DIRS = ['', 'etc', 'etc/conf.d', 'usr', 'usr/lib', 'usr/bin', 'var', 'var/log', 'deep/a', 'deep/a/b/c', 'opq',
  'home/user', 'n', 'n/m', 'emptydir'];
// Not the lower hard links 'hard1'/'hard2': layerfs keeps them linked across copy-up (the
// kernel's index=on), this oracle runs the kernel's default index=off; overlay-hardlinks.test.ts
// compares them with index=on.
const NAMES = ['passwd', 'hosts', 'group', 'a.conf', 'libx.so', 'liby.so', 'tool', 'old.log', 'new.log', 'f.txt', 'hidden3',
  'kept2', 'stay', 'gone2', 'x', 'y', 'z', 'n', 'm', 'conf.d', 'lib', 'log', 'b', 'c', 'base.txt', 'top.txt'];

type Op = { name: string; run: (root: string) => unknown };

function genOps(seed: number, count: number): Op[] {
  const rnd = mulberry32(seed);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)];
  const p = (): string => path.posix.join(pick(DIRS), pick(NAMES));
  const d = (): string => pick(DIRS);
  const ops: Op[] = [];
  for (let i = 0; i < count; i++) {
    const k = Math.floor(rnd() * 15);
    const a = p(), b = p(), data = `d${i}-${Math.floor(rnd() * 1e6)}\n`;
    const at = (r: string, x: string): string => path.join(r, x);
    switch (k) {
      case 0: ops.push({ name: `write ${a}`, run: (r) => fs.writeFileSync(at(r, a), data) }); break;
      case 1: ops.push({ name: `append ${a}`, run: (r) => fs.appendFileSync(at(r, a), data) }); break;
      case 2: ops.push({ name: `read ${a}`, run: (r) => fs.readFileSync(at(r, a), 'utf8') }); break;
      case 3: ops.push({ name: `mkdir ${a}`, run: (r) => fs.mkdirSync(at(r, a)) }); break;
      case 4: ops.push({ name: `unlink ${a}`, run: (r) => fs.unlinkSync(at(r, a)) }); break;
      case 5: ops.push({ name: `rmdir ${a}`, run: (r) => fs.rmdirSync(at(r, a)) }); break;
      case 6: ops.push({ name: `rename ${a} ${b}`, run: (r) => fs.renameSync(at(r, a), at(r, b)) }); break;
      case 7: {
        const f = rnd() < 0.5 ? RENAME_NOREPLACE : RENAME_EXCHANGE;
        ops.push({ name: `renameat2 ${f} ${a} ${b}`, run: (r) => sysCall(native.renameat2(AT_FDCWD, at(r, a), AT_FDCWD, at(r, b), f)) });
        break;
      }
      case 8: {
        const m = pick([0o600, 0o644, 0o755, 0o700, 0o4755]);
        ops.push({ name: `chmod ${a} ${m.toString(8)}`, run: (r) => fs.chmodSync(at(r, a), m) });
        break;
      }
      case 9: {
        const len = Math.floor(rnd() * 3) * 1000;
        ops.push({ name: `truncate ${a} ${len}`, run: (r) => fs.truncateSync(at(r, a), len) });
        break;
      }
      case 10: ops.push({ name: `symlink ${a}`, run: (r) => fs.symlinkSync(b, at(r, a)) }); break;
      case 11: ops.push({ name: `link ${a} ${b}`, run: (r) => fs.linkSync(at(r, a), at(r, b)) }); break;
      case 12: {
        const dd = d();
        ops.push({ name: `readdir ${dd}`, run: (r) => fs.readdirSync(at(r, dd)).sort() });
        break;
      }
      case 13: {
        const dd = d();
        ops.push({ name: `rm -r ${dd}`, run: (r) => (dd ? fs.rmSync(at(r, dd), { recursive: true }) : 'skip') });
        break;
      }
      default: {
        const v = Buffer.from(data);
        ops.push({ name: `setxattr ${a}`, run: (r) => sysCall(native.setxattr(at(r, a), 'user.r', v, 0, 0)) });
      }
    }
  }
  return ops;
}

function apply(root: string, op: Op): unknown {
  try {
    const v = op.run(root);
    if (v && typeof v === 'object' && !Array.isArray(v)) return 'ok';
    return v === undefined ? 'ok' : v;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
}

describe('random operations: kernel overlayfs vs layerfs', () => {
  let base: string, lowers: string[];
  beforeAll(() => {
    requireFuse();
    base = tempDir('random');
    lowers = buildLowers(path.join(base, 'template'));
  });
  afterAll(() => { if (!process.env.LAYERFS_KEEP) unmountAll(base); });

  const seed = Number(process.env.LAYERFS_SEED ?? 20261123);
  const count = Number(process.env.LAYERFS_OPS ?? 2500);

  test(`seed ${seed}, ${count} operations`, () => {
    const ops = genOps(seed, count);
    const k = prepareSide(base, 'kernel', lowers);
    const l = prepareSide(base, 'layerfs', lowers);
    try {
      mountSide(k);
      mountSide(l);
      for (let i = 0; i < ops.length; i++) {
        const rk = apply(k.mnt, ops[i]);
        const rl = apply(l.mnt, ops[i]);
        if (process.env.LAYERFS_TRACE_NAME && ops[i].name.includes(process.env.LAYERFS_TRACE_NAME)) {
          process.stderr.write(`op ${i} ${ops[i].name}: kernel ${JSON.stringify(rk)} layerfs ${JSON.stringify(rl)}\n`);
        }
        expect(rl, `op ${i} (${ops[i].name}), seed ${seed}`).toEqual(rk);
        if (i % 250 === 249) expect(view(l.mnt), `state after op ${i}, seed ${seed}`).toEqual(view(k.mnt));
      }
      expect(view(l.mnt)).toEqual(view(k.mnt));
    } finally {
      if (process.env.LAYERFS_KEEP) process.stderr.write(`kept mounted: ${k.mnt} ${l.mnt}\n`);
      else {
        unmountSide(k);
        unmountSide(l);
      }
    }
    expect(upperView(l.upper)).toEqual(upperView(k.upper));
  });
});
