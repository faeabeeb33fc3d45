// aufs mode with several writable branches: where new objects and copy-ups go (every create=
// and cpup= policy of the aufs manual, on small tmpfs branches of different free space), removal
// with and without lower copies, renames in place, the manual's whiteout/opaque exception, branch
// verbs on rw branches; a seeded random sequence on rw/ro/rw/ro branches against a plain
// directory holding the same tree (a union must behave as one filesystem); and unionfs-fuse
// (copy-on-write over ro branches) and mergerfs (rw branches) as oracles where their semantics
// agree with aufs's.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { layerfs, mountOk, requireFuse, tempDir, unmountAll } from './helpers/mount';
import { shown, treeHash } from './helpers/overlay';
import { randomOps, run, type OpSpace } from './helpers/union-ops';

const SPACE: OpSpace = {
  known: ['etc/a', 'etc/b', 'etc/d', 'etc/e', 'var/x', 'var/y', 'var/sub/y', 'usr/conf', 'usr/lib/z', 'usr/lib/lib.so', 'opq/a', 'top/t'],
  dirs: ['', 'etc', 'var', 'var/sub', 'usr', 'usr/lib', 'opq', 'top'],
  names: ['a', 'b', 'c', 'd', 'x', 'y', 'sub', 'lib'],
  rmrf: ['var/sub', 'opq', 'top', 'usr/lib'],
};

const SPACE_ORACLE: OpSpace = {
  known: ['etc/a', 'etc/b', 'etc/sub/x', 'usr/lib/lib.so', 'var/y', 'var/x', 'usr/conf'],
  dirs: ['', 'etc', 'etc/sub', 'usr', 'usr/lib', 'var'],
  names: ['a', 'b', 'c', 'conf', 'sub', 'x', 'y'],
  rmrf: ['etc/sub', 'var', 'usr/lib'],
};

function write(base: string, rel: string, data: string): void {
  fs.mkdirSync(path.dirname(path.join(base, rel)), { recursive: true });
  fs.writeFileSync(path.join(base, rel), data);
}

/** rw0, ro1, rw2, ro3 with overlapping dirs, whiteouts and an opaque dir in a ro branch. */
function buildBranches(dir: string): Record<'rw0' | 'ro1' | 'rw2' | 'ro3' | 'mnt' | 'plain', string> {
  const b = Object.fromEntries(['rw0', 'ro1', 'rw2', 'ro3', 'mnt', 'plain'].map((n) => [n, path.join(dir, n)])) as Record<'rw0' | 'ro1' | 'rw2' | 'ro3' | 'mnt' | 'plain', string>;
  for (const d of Object.values(b)) fs.mkdirSync(d, { recursive: true });
  write(b.rw0, 'etc/a', 'a0'); write(b.rw0, 'top/t', 't0');
  write(b.ro1, 'etc/a', 'a1'); write(b.ro1, 'etc/b', 'b1'); write(b.ro1, 'usr/conf', 'conf1');
  write(b.ro1, 'opq/.wh..wh..opq', ''); write(b.ro1, 'opq/a', 'oa1'); write(b.ro1, 'etc/.wh.c', '');
  write(b.rw2, 'etc/c', 'c2'); write(b.rw2, 'etc/d', 'd2'); write(b.rw2, 'var/x', 'x2'); write(b.rw2, 'var/sub/y', 'y2');
  write(b.rw2, 'usr/lib/z', 'z2');
  write(b.ro3, 'etc/a', 'a3'); write(b.ro3, 'etc/e', 'e3'); write(b.ro3, 'var/y', 'vy3'); write(b.ro3, 'opq/c', 'oc3');
  write(b.ro3, 'usr/lib/lib.so', 'so3');
  return b;
}

const xattr = (p: string, name: string): string => {
  const r = spawnSync('getfattr', ['--only-values', '-n', name, p], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  return r.stdout;
};

describe('aufs mode, several writable branches', () => {
  let base: string;
  const d = (n: string): string => path.join(base, n);
  const tmpfs: string[] = [];

  beforeAll(() => {
    requireFuse();
    base = tempDir('aufs-br');
  });
  afterAll(() => {
    unmountAll(base);
    for (const t of tmpfs.reverse()) spawnSync('umount', [t]);
    fs.rmSync(base, { recursive: true, force: true });
  });

  /** A tmpfs of `mib` MiB at base/name (each policy test has branches of known free space). */
  function smallFs(name: string, mib: number): string {
    const p = d(name);
    fs.mkdirSync(p, { recursive: true });
    const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${mib}m`, 'tmpfs', p], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    tmpfs.push(p);
    return p;
  }

  for (const [create, cpup] of [['tdp', 'tdp'], ['rr', 'bup'], ['mfs', 'bu'], ['pmfsrr:1', 'tdp']]) {
    test(`a random sequence on rw/ro/rw/ro branches (create=${create}, cpup=${cpup}) gives what one plain directory gives`, () => {
      const seed = Number(process.env.LAYERFS_SEED ?? Date.now() % 100000);
      const b = buildBranches(d(`rand-${create.replace(/:/g, '')}`));
      const ro = [b.ro1, b.ro3].map(treeHash);
      const opts = `br=${b.rw0}=rw:${b.ro1}=ro+wh:${b.rw2}=rw:${b.ro3}=ro,create=${create},cpup=${cpup}`;
      mountOk(['-t', 'aufs', '-o', opts, b.mnt]);
      try {
        expect(spawnSync('cp', ['-a', `${b.mnt}/.`, b.plain]).status).toBe(0);
        expect(shown(b.mnt)).toEqual(shown(b.plain));
        expect(fs.readFileSync(path.join(b.mnt, 'etc/a'), 'utf8')).toBe('a0');
        expect(fs.existsSync(path.join(b.mnt, 'etc/c'))).toBe(false);   // under ro1's whiteout
        let done = 0;
        for (let block = 0; block < 4; block++) {
          const ops = randomOps(seed * 10 + block, 60, SPACE) as { op: string }[];
          const got = run(b.mnt, ops);
          // aufs renames a dir with parts in several branches only with dirren: EXDEV, as mv expects
          const same = ops.map((o, i) => (got[i] === 'EXDEV' && (o.op === 'rename' || o.op === 'link') ? { op: 'noop' } : o));
          const want = run(b.plain, same).map((r, i) => (same[i].op === 'noop' ? got[i] : r));
          const first = got.findIndex((r, i) => r !== want[i]);
          expect(got, `seed ${seed} block ${block}: op ${first} ${JSON.stringify(ops[first])}`).toEqual(want);
          done += got.filter((x) => !/^E[A-Z]+$/.test(x)).length;
          expect(shown(b.mnt), `seed ${seed} block ${block}`).toEqual(shown(b.plain));
        }
        expect(done, `seed ${seed}`).toBeGreaterThan(60);
      } finally {
        layerfs(['umount', b.mnt]);
      }
      expect([b.ro1, b.ro3].map(treeHash), 'the ro branches never change').toEqual(ro);
      // both rw branches were written (the policies spread the changes)
      const changed = (p: string): boolean => fs.readdirSync(p, { recursive: true }).some((n) => !String(n).startsWith('.wh..wh.'));
      expect(changed(b.rw0) && changed(b.rw2)).toBe(true);
      // read back after a remount: the on-disk format alone holds the tree
      mountOk(['-t', 'aufs', '-o', opts, b.mnt]);
      try {
        expect(shown(b.mnt), `seed ${seed}`).toEqual(shown(b.plain));
      } finally {
        layerfs(['umount', b.mnt]);
      }
    });
  }

  /** Simple branches (no whiteouts: neither oracle reads aufs's) for the oracle tests. */
  function plainBranches(dir: string): Record<'b0' | 'b1' | 'b2' | 'mnt', string> {
    const b = Object.fromEntries(['b0', 'b1', 'b2', 'mnt'].map((n) => [n, path.join(dir, n)])) as Record<'b0' | 'b1' | 'b2' | 'mnt', string>;
    for (const x of Object.values(b)) fs.mkdirSync(x, { recursive: true });
    write(b.b2, 'etc/a', 'a2'); write(b.b2, 'etc/b', 'b2'); write(b.b2, 'etc/sub/x', 'x2'); write(b.b2, 'usr/lib/lib.so', 'so');
    write(b.b2, 'var/y', 'y2'); write(b.b1, 'etc/a', 'a1'); write(b.b1, 'usr/conf', 'c1'); write(b.b1, 'var/x', 'x1');
    return b;
  }

  const ORACLES: [string, string, (b: Record<'b0' | 'b1' | 'b2' | 'mnt', string>) => string[]][] = [
    ['unionfs-fuse -o cow (1 rw + 2 ro)', 'rw:ro:ro', (b) => ['unionfs', '-o', 'cow', `${b.b0}=RW:${b.b1}=RO:${b.b2}=RO`, b.mnt]],
    ['mergerfs category.create=ff (3 rw)', 'rw:rw:rw', (b) => ['mergerfs', '-o', 'category.create=ff', `${b.b0}=RW:${b.b1}=RW:${b.b2}=RW`, b.mnt]],
  ];
  for (const [name, perms, argv] of ORACLES) {
    test(`${name} as an oracle: the same results and views for the same random sequences`, () => {
      const seed = Number(process.env.LAYERFS_SEED ?? Date.now() % 100000);
      const tag = name.split(' ')[0];
      const a = plainBranches(d(`oracle-${tag}/a`)), o = plainBranches(d(`oracle-${tag}/o`));
      const p = perms.split(':');
      mountOk(['-t', 'aufs', '-o', `br=${a.b0}=${p[0]}:${a.b1}=${p[1]}:${a.b2}=${p[2]}`, a.mnt]);
      const cmd = argv(o);
      const r = spawnSync(cmd[0], cmd.slice(1), { encoding: 'utf8' });
      expect(r.status, `${cmd[0]}: ${r.stderr}`).toBe(0);
      // unionfs-fuse keeps its whiteouts in a dir it shows: not part of the tree
      const meta = (x: string): string => x.split(',').filter((n) => n !== '.unionfs-fuse').join(',');
      const tree = (root: string): ReturnType<typeof shown> => {
        const v = shown(root, (rel) => rel === '.unionfs-fuse');
        for (const x of Object.values(v)) delete x.nlink;   // unionfs-fuse breaks hard links: left out
        return v;
      };
      try {
        let done = 0;
        for (let block = 0; block < 3; block++) {
          // no hard links (unionfs-fuse copies each name up apart); the dir renames aufs refuses
          // without dirren (EXDEV, as mv expects) are left out of the oracle's sequence
          const ops = (randomOps(seed * 10 + block, 50, SPACE_ORACLE) as { op: string }[]).filter((x) => x.op !== 'link');
          const got = run(a.mnt, ops);
          const same = ops.map((x, i) => (got[i] === 'EXDEV' && x.op === 'rename' ? { op: 'noop' } : x));
          const want = run(o.mnt, same).map((x, i) => (same[i].op === 'noop' ? got[i] : same[i].op === 'list' ? meta(x) : x));
          const first = got.findIndex((x, i) => x !== want[i]);
          expect(got, `seed ${seed} block ${block}: op ${first} ${JSON.stringify(ops[first])}`).toEqual(want);
          done += got.filter((x) => x === 'ok').length;
          expect(tree(a.mnt), `seed ${seed} block ${block}`).toEqual(tree(o.mnt));
        }
        expect(done, `seed ${seed}`).toBeGreaterThan(30);
      } finally {
        layerfs(['umount', a.mnt]);
        spawnSync('umount', [o.mnt]);
      }
    });
  }

  /** Three rw tmpfs branches of 8, 16 and 32 MiB (a, b, c) over a ro dir; mounted with opts. */
  function policyStack(tag: string, opts: string): { a: string; b: string; c: string; ro: string; mnt: string; where: (rel: string) => string } {
    const s = { a: smallFs(`${tag}/a`, 8), b: smallFs(`${tag}/b`, 16), c: smallFs(`${tag}/c`, 32), ro: d(`${tag}/ro`), mnt: d(`${tag}/mnt`) };
    fs.mkdirSync(s.mnt, { recursive: true });
    write(s.ro, 'lower/file', 'lf');
    write(s.ro, 'shared/r', 'r');
    write(s.ro, 'aonly/r', 'ar');
    fs.mkdirSync(path.join(s.a, 'aonly'));
    fs.mkdirSync(path.join(s.a, 'shared'));
    fs.mkdirSync(path.join(s.c, 'shared'));
    fs.mkdirSync(path.join(s.b, 'bonly'));
    mountOk(['-t', 'aufs', '-o', `br=${s.a}=rw:${s.b}=rw:${s.c}=rw:${s.ro}=ro${opts ? `,${opts}` : ''}`, s.mnt]);
    const names = new Map([[s.a, 'a'], [s.b, 'b'], [s.c, 'c'], [s.ro, 'ro']]);
    return { ...s, where: (rel) => names.get(xattr(path.join(s.mnt, rel), 'user.aufs.branch')) ?? '?' };
  }

  function withStack(tag: string, opts: string, fn: (s: ReturnType<typeof policyStack>) => void): void {
    const s = policyStack(tag, opts);
    try {
      fn(s);
    } finally {
      layerfs(['umount', s.mnt]);
    }
  }

  const mk = (s: { mnt: string }, rel: string, data = 'x'): void => fs.writeFileSync(path.join(s.mnt, rel), data);

  test('create=tdp: the highest writable branch holding the parent; else the parent is copied up bottom-up', () => {
    withStack('tdp', '', (s) => {
      mk(s, 'root-file');
      mk(s, 'bonly/f');
      mk(s, 'shared/f');
      mk(s, 'lower/new');
      fs.mkdirSync(path.join(s.mnt, 'bonly/dir'));
      expect(['root-file', 'bonly/f', 'shared/f', 'lower/new', 'bonly/dir'].map(s.where)).toEqual(['a', 'b', 'a', 'c', 'b']);
      expect(fs.existsSync(path.join(s.c, 'lower/new'))).toBe(true);   // lower/ copied to the nearest rw above ro
    });
  });

  test('create=rr: files round-robin over the writable branches; new dirs all on one', () => {
    withStack('rr', 'create=rr', (s) => {
      for (let i = 0; i < 6; i++) mk(s, `f${i}`);
      const per = ['a', 'b', 'c'].map((x) => Array.from({ length: 6 }, (_, i) => s.where(`f${i}`)).filter((w) => w === x).length);
      expect(per).toEqual([2, 2, 2]);
      for (let i = 0; i < 4; i++) fs.mkdirSync(path.join(s.mnt, `d${i}`));
      expect(new Set(Array.from({ length: 4 }, (_, i) => s.where(`d${i}`))).size).toBe(1);
      // what was made reads back whichever branch holds it
      expect(Array.from({ length: 6 }, (_, i) => fs.readFileSync(path.join(s.mnt, `f${i}`), 'utf8'))).toEqual(Array(6).fill('x'));
    });
  });

  test('create=mfs[:SECS]: the branch with most free space, read again after SECS', () => {
    withStack('mfs', 'create=mfs:1', (s) => {
      mk(s, 'one');
      expect(s.where('one')).toBe('c');
      fs.writeFileSync(path.join(s.c, 'filler'), Buffer.alloc(24 << 20));   // c now has ~8 MiB free
      spawnSync('sleep', ['1.1']);
      mk(s, 'two');
      expect(s.where('two')).toBe('b');
      expect(fs.existsSync(path.join(s.b, 'two'))).toBe(true);
    });
  });

  test('create=tdmfs:LOW: the highest writable branch with LOW bytes free, else the most free', () => {
    withStack('tdmfs', `create=tdmfs:${12 << 20}`, (s) => {
      mk(s, 'f');
      expect(s.where('f')).toBe('b');   // a (8 MiB) has less than 12 MiB free
    });
    withStack('tdmfs2', `create=tdmfs:${64 << 20}`, (s) => {
      mk(s, 'f');
      expect(s.where('f')).toBe('c');
    });
  });

  test('create=pmfs: among the writable branches holding the parent, the most free; create=mfsrr/pmfsrr:LOW fall back to round-robin', () => {
    withStack('pmfs', 'create=pmfs', (s) => {
      mk(s, 'shared/f');
      mk(s, 'bonly/f');
      expect([s.where('shared/f'), s.where('bonly/f')]).toEqual(['c', 'b']);
    });
    withStack('mfsrr', `create=mfsrr:${64 << 20}`, (s) => {
      for (let i = 0; i < 3; i++) mk(s, `f${i}`);
      expect(new Set([0, 1, 2].map((i) => s.where(`f${i}`)))).toEqual(new Set(['a', 'b', 'c']));
    });
    withStack('mfsrr2', `create=mfsrr:${1 << 20}`, (s) => {
      for (let i = 0; i < 3; i++) mk(s, `f${i}`);
      expect([0, 1, 2].map((i) => s.where(`f${i}`))).toEqual(['c', 'c', 'c']);
    });
    withStack('pmfsrr', `create=pmfsrr:${64 << 20}`, (s) => {
      for (let i = 0; i < 3; i++) mk(s, `shared/f${i}`);
      expect(new Set([0, 1, 2].map((i) => s.where(`shared/f${i}`)))).toEqual(new Set(['a', 'b', 'c']));
    });
  });

  test('cpup=tdp|bup|bu: a copy-up goes to the highest rw branch holding the parent, the nearest one above the source holding it, or the nearest one above', () => {
    // shared/ is on a and c, aonly/ on a, lower/ on no rw branch (then every policy goes bottom-up)
    const expected: Record<string, string[]> = { tdp: ['a', 'a', 'c'], bup: ['c', 'a', 'c'], bu: ['c', 'c', 'c'] };
    for (const [cpup, want] of Object.entries(expected)) {
      withStack(`cpup-${cpup}`, `cpup=${cpup}`, (s) => {
        const files = ['shared/r', 'aonly/r', 'lower/file'];
        for (const f of files) fs.appendFileSync(path.join(s.mnt, f), '+');
        expect(files.map(s.where), cpup).toEqual(want);
        expect(fs.existsSync(path.join(s.c, 'aonly/r'))).toBe(cpup === 'bu');   // bu copies the parent down to c
        expect(fs.readFileSync(path.join(s.mnt, 'shared/r'), 'utf8')).toBe('r+');
        expect(fs.readFileSync(path.join(s.ro, 'shared/r'), 'utf8')).toBe('r');
      });
    }
  });

  test('removal in place, with a whiteout only where a lower branch still shows the name; renames stay in their branch', () => {
    withStack('rm', '', (s) => {
      const m = (r: string): string => path.join(s.mnt, r);
      fs.writeFileSync(path.join(s.b, 'bonly/solo'), 'solo');   // only on b
      fs.writeFileSync(path.join(s.c, 'shared/r'), 'r-c');      // on c, above ro's shared/r
      fs.writeFileSync(path.join(s.c, 'shared/gone'), 'g');
      // udba=notify: the kernel learns of what changed in the branches
      spawnSync('sleep', ['0.2']);
      expect(fs.readFileSync(m('shared/r'), 'utf8')).toBe('r-c');
      fs.unlinkSync(m('bonly/solo'));
      expect(fs.readdirSync(path.join(s.b, 'bonly'))).toEqual([]);   // no whiteout needed
      fs.unlinkSync(m('shared/r'));
      expect(fs.existsSync(path.join(s.c, 'shared/r'))).toBe(false);
      // the whiteout is in c, where r was: a hard link to c's own whiteout base
      expect(fs.statSync(path.join(s.c, 'shared/.wh.r')).ino).toBe(fs.statSync(path.join(s.c, '.wh..wh.aufs')).ino);
      expect(fs.existsSync(m('shared/r'))).toBe(false);
      // a rename of a file of c stays in c (no copy), and the old name goes
      fs.renameSync(m('shared/gone'), m('shared/moved'));
      expect(s.where('shared/moved')).toBe('c');
      expect(fs.readdirSync(path.join(s.c, 'shared')).filter((n) => !n.startsWith('.wh.'))).toEqual(['moved']);
      // a rename over a name of a higher branch lands there
      fs.writeFileSync(path.join(s.a, 'shared/top'), 'top-a');
      spawnSync('sleep', ['0.2']);
      fs.renameSync(m('shared/moved'), m('shared/top'));
      expect(s.where('shared/top')).toBe('a');
      expect(fs.readFileSync(m('shared/top'), 'utf8')).toBe('g');
      expect(fs.readdirSync(m('shared')).sort()).toEqual(['top']);
      // a file of a ro branch: its whiteout goes where a copy-up would (no rw branch holds
      // lower/: the nearest one above the ro branch, c)
      fs.unlinkSync(m('lower/file'));
      expect(fs.existsSync(path.join(s.c, 'lower/.wh.file'))).toBe(true);
      expect(fs.readFileSync(path.join(s.ro, 'lower/file'), 'utf8')).toBe('lf');
    });
  });

  test("a name whited out on a higher branch is made there, whatever the policy picked (the manual's exception)", () => {
    withStack('wh', 'create=rr', (s) => {
      const m = (r: string): string => path.join(s.mnt, r);
      fs.writeFileSync(path.join(s.c, 'shared/x'), 'cx');
      spawnSync('sleep', ['0.2']);
      fs.unlinkSync(m('shared/x'));
      fs.writeFileSync(path.join(s.a, 'shared/.wh.y'), '');   // a whiteout of y in a
      fs.writeFileSync(path.join(s.c, 'shared/y'), 'cy');
      spawnSync('sleep', ['0.2']);
      expect(fs.existsSync(m('shared/y'))).toBe(false);
      for (let i = 0; i < 3; i++) {
        fs.writeFileSync(m('shared/y'), `y${i}`);
        expect(fs.readFileSync(m('shared/y'), 'utf8')).toBe(`y${i}`);
        fs.unlinkSync(m('shared/y'));
        fs.writeFileSync(m('shared/x'), `x${i}`);
        expect(fs.readFileSync(m('shared/x'), 'utf8')).toBe(`x${i}`);
        fs.unlinkSync(m('shared/x'));
      }
      expect(fs.readdirSync(m('shared')).sort()).toEqual(['r']);
    });
  });

  test('branch verbs on rw branches: append an rw branch, mod rw<->ro, del one while its files are open (EBUSY), never the last writable one', () => {
    withStack('verbs', '', (s) => {
      const m = (r: string): string => path.join(s.mnt, r);
      const aufs = (...verbs: string[]): ReturnType<typeof layerfs> => layerfs(['aufs', s.mnt, ...verbs]);
      const extra = d('verbs/extra');
      write(extra, 'bonly/e', 'e');
      let r = aufs(`append:${extra}=rw`);
      expect(r.status, r.stderr).toBe(0);
      expect(fs.existsSync(path.join(extra, '.wh..wh.aufs'))).toBe(true);
      fs.appendFileSync(m('bonly/e'), '+');   // extra is below b: written in place
      expect(fs.readFileSync(path.join(extra, 'bonly/e'), 'utf8')).toBe('e+');
      r = aufs(`mod:${extra}=ro`);
      expect(r.status, r.stderr).toBe(0);
      fs.appendFileSync(m('bonly/e'), '!');   // now copied up, to b (the parent's branch)
      expect(fs.readFileSync(path.join(extra, 'bonly/e'), 'utf8')).toBe('e+');
      expect(fs.readFileSync(path.join(s.b, 'bonly/e'), 'utf8')).toBe('e+!');
      const fd = fs.openSync(m('bonly/e'), 'r');
      try {
        r = aufs(`del:${s.b}`);
        expect(r.status).toBe(1);
        expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/is busy: pid \d+ \(node\) has bonly\/e open/)]);
      } finally {
        fs.closeSync(fd);
      }
      r = aufs(`del:${s.b}`);
      expect(r.status, r.stderr).toBe(0);
      expect(fs.readFileSync(m('bonly/e'), 'utf8')).toBe('e+');
      r = aufs(`del:${s.c}`, `mod:${s.a}=ro`);
      expect(r.status).toBe(1);
      expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/the last writable branch/)]);
      const rows = JSON.parse(aufs('--json').stdout) as { path: string; perm: string }[];
      expect(rows.map((x) => `${x.path}=${x.perm}`)).toEqual([`${s.a}=rw`, `${s.ro}=ro`, `${extra}=ro`]);
    });
  });
});
