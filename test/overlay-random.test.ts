// Random-operation differential test: a seeded, reproducible sequence of operations on kernel
// overlayfs and on layerfs over identical layers; every result and the final state compared.
// The operations run in other processes, in blocks, as root, as a non-root user, and as root
// having changed only its effective ids; each under a random umask; over a tree with mixed
// owners and modes (0, 0700, sticky, set-id) and names of 255 and 256 bytes.
// LAYERFS_SEED=n reproduces a run; LAYERFS_OPS=n changes its length.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { RENAME_EXCHANGE, RENAME_NOREPLACE } from '../src/sys/constants';
import { requireFuse, tempDir, unmountAll } from './helpers/mount';
import { buildLowers, mountSide, prepareSide, unmountSide, upperView, view } from './helpers/overlay';
import { ensureUser } from './helpers/users';
import { mulberry32 } from './helpers/random';


const LONG = 'L'.repeat(255), TOO_LONG = 'L'.repeat(256);
// Not 'xw' (a dir with kernel xattr whiteouts in a lower layer): the kernel lists it empty once
// its entries are removed, yet its rmdir says ENOTEMPTY (its emptiness check counts lower xattr
// whiteouts); layerfs removes it. Reads of 'xw' are covered by the oracle scenarios.
const DIRS = ['', 'etc', 'etc/conf.d', 'usr', 'usr/lib', 'usr/bin', 'var', 'var/log', 'deep/a', 'deep/a/b/c', 'opq',
  'home/user', 'n', 'n/m', 'emptydir', 'pub', 'priv', 'mine', 'sgid'];
// Not the lower hard links 'hard1'/'hard2': layerfs keeps them linked across copy-up (the
// kernel's index=on), this oracle runs the kernel's default index=off; overlay-hardlinks.test.ts
// compares them with index=on.
const NAMES = ['passwd', 'hosts', 'group', 'a.conf', 'libx.so', 'liby.so', 'tool', 'old.log', 'new.log', 'f.txt', 'hidden3',
  'kept2', 'stay', 'gone2', 'x', 'y', 'z', 'n', 'm', 'conf.d', 'lib', 'log', 'b', 'c', 'base.txt', 'top.txt',
  'theirs', 'own', 'secret', 'zero', 'suid', LONG, TOO_LONG];
const MODES = [0, 0o600, 0o644, 0o755, 0o700, 0o777, 0o1777, 0o2775, 0o4755];
const UMASKS = [0, 0o002, 0o022, 0o077];
const BLOCK = 50;

type Who = 'root' | 'user' | 'euid';
interface Op { op: string; a: string; b?: string; data?: string; mode?: number; flags?: number; uid?: number; len?: number; umask: number }

/** A top layer with mixed owners and modes: a sticky public dir, a private one, mode 0, set-id. */
function buildMixed(dir: string, uid: number): string {
  const l = path.join(dir, 'L0');
  const mk = (rel: string, mode: number, owner: number, file?: string): void => {
    const p = path.join(l, rel);
    if (file === undefined) fs.mkdirSync(p, { recursive: true });
    else fs.writeFileSync(p, file);
    fs.chownSync(p, owner, owner);
    fs.chmodSync(p, mode);
  };
  mk('', 0o755, 0);
  mk('pub', 0o1777, 0);
  mk('pub/theirs', 0o644, 0, 'root\n');
  mk('pub/own', 0o644, uid, 'user\n');
  mk('priv', 0o700, 0);
  mk('priv/secret', 0o600, 0, 'secret\n');
  mk('mine', 0o755, uid);
  mk('mine/own', 0o600, uid, 'mine\n');
  mk('sgid', 0o2775, 0);
  mk('zero', 0, 0, 'mode 0\n');
  mk('suid', 0o4755, 0, '#!/bin/sh\n');
  return l;
}

function genOps(seed: number, count: number, uid: number): Op[] {
  const rnd = mulberry32(seed);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)];
  const p = (): string => path.posix.join(pick(DIRS), pick(NAMES));
  const ops: Op[] = [];
  for (let i = 0; i < count; i++) {
    const a = p(), b = p(), data = `d${i}-${Math.floor(rnd() * 1e6)}\n`, umask = pick(UMASKS);
    const k = Math.floor(rnd() * 19);
    const o: Op = [
      { op: 'write', a, data, mode: pick(MODES) }, { op: 'append', a, data }, { op: 'read', a },
      { op: 'mkdir', a, mode: pick(MODES) }, { op: 'unlink', a }, { op: 'rmdir', a }, { op: 'rename', a, b },
      { op: 'renameat2', a, b, flags: rnd() < 0.5 ? RENAME_NOREPLACE : RENAME_EXCHANGE },
      { op: 'chmod', a, mode: pick(MODES) }, { op: 'truncate', a, len: Math.floor(rnd() * 3) * 1000 },
      { op: 'symlink', a, b }, { op: 'link', a, b }, { op: 'readdir', a: pick(DIRS) }, { op: 'rm -r', a: pick(DIRS) },
      { op: 'setxattr', a, data }, { op: 'create', a, mode: pick(MODES) }, { op: 'stat', a }, { op: 'stat', a: pick(DIRS) },
      { op: 'chown', a, uid: pick([0, uid]) },
    ][k] as Op;
    ops.push({ ...o, umask });
  }
  return ops;
}

/** Runs a block of ops below root as `who`; one result per op. */
function runBlock(root: string, ops: Op[], who: Who, uid: number): unknown[] {
  const runner = path.join(__dirname, 'helpers/ops-runner.cjs');
  const input = JSON.stringify({ root, ops, ...(who === 'euid' ? { euid: uid } : {}) });
  const argv = who === 'user'
    ? ['setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', process.execPath, runner]] as const
    : [process.execPath, [runner]] as const;
  const r = spawnSync(argv[0], [...argv[1]], { input, encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`ops runner as ${who}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

describe('random operations: kernel overlayfs vs layerfs', () => {
  let base: string, lowers: string[], uid: number;
  beforeAll(() => {
    requireFuse();
    uid = ensureUser();
    base = tempDir('random');
    fs.chmodSync(base, 0o755);  // the test user must reach the mounts
    const t = path.join(base, 'template');
    fs.mkdirSync(t, { mode: 0o755 });
    lowers = [buildMixed(t, uid), ...buildLowers(t)];
  });
  afterAll(() => { if (!process.env.LAYERFS_KEEP) unmountAll(base); });

  const seed = Number(process.env.LAYERFS_SEED ?? 20261130);
  const count = Number(process.env.LAYERFS_OPS ?? 2500);

  test(`seed ${seed}, ${count} operations as root, a user and an effective-ids-only caller`, () => {
    const ops = genOps(seed, count, uid);
    const rnd = mulberry32(seed ^ 0x5eed);
    const k = prepareSide(base, 'kernel', lowers);
    const l = prepareSide(base, 'layerfs', lowers);
    const whos: Record<Who, number> = { root: 0, user: 0, euid: 0 };
    try {
      mountSide(k);
      mountSide(l);
      for (let i = 0; i < ops.length; i += BLOCK) {
        const block = ops.slice(i, i + BLOCK);
        const who = (['root', 'user', 'euid'] as Who[])[Math.floor(rnd() * 3)];
        whos[who]++;
        const rk = runBlock(k.mnt, block, who, uid);
        const rl = runBlock(l.mnt, block, who, uid);
        const named = (rs: unknown[]): [string, unknown][] => rs.map((r, j) =>
          [`op ${i + j} as ${who}, umask ${block[j].umask.toString(8)}: ${block[j].op} ${block[j].a} ${block[j].b ?? ''}`, r]);
        expect(named(rl), `seed ${seed}`).toEqual(named(rk));
        if ((i / BLOCK) % 10 === 9) expect(view(l.mnt), `state after op ${i + BLOCK}, seed ${seed}`).toEqual(view(k.mnt));
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
    // every kind of caller took part
    expect(Object.values(whos).every((n) => n > 0), JSON.stringify(whos)).toBe(true);
  });
});
