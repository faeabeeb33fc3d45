// aufs mode: one rw branch over ro/rr branches. A seeded random operation sequence on an aufs
// stack and on the same stack in overlay mode (redirect_dir=off: aufs renames a dir with lower
// parts only with dirren) gives the same results and views; what aufs writes on disk (whiteouts
// as hard links to .wh..wh.aufs, .wh..wh..opq) is read back as a branch of another aufs stack;
// reserved .wh. names, 242-byte names, branch syntax and overlap errors.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { HELPER, isMounted, layerfs, mountOk, requireFuse, tempDir, unmountAll } from './helpers/mount';
import { view } from './helpers/overlay';
import { randomOps, run, type OpSpace } from './helpers/union-ops';
import { ensureUser, runAs } from './helpers/users';


const SPACE: OpSpace = {
  known: ['etc/a', 'etc/sub/x', 'usr/lib/lib.so', 'var/y', 'var/x', 'opq/a', 'usr/conf', 'usr/conf.hl', 'etc/b'],
  dirs: ['', 'etc', 'etc/sub', 'usr', 'usr/lib', 'var', 'opq'],
  names: ['a', 'b', 'c', 'conf', 'lib.so', 'sub', 'lib', 'x', 'y'],
  rmrf: ['etc/sub', 'opq', 'var', 'new'],
};

/** Two ro branches with overlapping dirs, a file hidden by a whiteout, and a hard link. */
function buildBranches(base: string): void {
  const w = (rel: string, data: string): void => {
    fs.mkdirSync(path.dirname(path.join(base, rel)), { recursive: true });
    fs.writeFileSync(path.join(base, rel), data);
  };
  w('ro2/etc/a', 'a2'); w('ro2/etc/b', 'b2'); w('ro2/etc/sub/x', 'x2'); w('ro2/usr/lib/lib.so', 'so');
  w('ro2/var/y', 'y2'); w('ro2/opq/c', 'c2');
  w('ro1/etc/a', 'a1'); w('ro1/usr/conf', 'conf1'); w('ro1/var/x', 'x1'); w('ro1/opq/.wh..wh..opq', '');
  w('ro1/opq/a', 'a1'); w('ro1/etc/.wh.b', '');
  fs.linkSync(path.join(base, 'ro1/usr/conf'), path.join(base, 'ro1/usr/conf.hl'));
}

describe('aufs mode', () => {
  let base: string;
  const d = (n: string): string => path.join(base, n);

  beforeAll(() => {
    requireFuse();
    base = tempDir('aufs');
  });
  afterAll(() => {
    unmountAll(base);
    fs.rmSync(base, { recursive: true, force: true });
  });

  /** Fresh copies of the ro branches and an empty rw branch under dir. */
  function stack(dir: string): { rw: string; ro1: string; ro2: string; mnt: string } {
    buildBranches(dir);
    for (const n of ['rw', 'mnt', 'up', 'work']) fs.mkdirSync(path.join(dir, n), { recursive: true });
    return { rw: path.join(dir, 'rw'), ro1: path.join(dir, 'ro1'), ro2: path.join(dir, 'ro2'), mnt: path.join(dir, 'mnt') };
  }

  // without dirren aufs renames no dir with lower parts (EXDEV), as overlayfs with redirect_dir=off;
  // with it, as overlayfs with redirect_dir=on (and the same redirect xattr on disk)
  for (const [dirren, redirect] of [['', 'off'], [',dirren', 'on']]) test(`a random operation sequence gives what overlay mode (redirect_dir=${redirect}) gives over the same branches${dirren ? ', with dirren' : ''}`, () => {
    const seed = Number(process.env.LAYERFS_SEED ?? Date.now() % 100000);
    const host = (): string[] => ['/etc/passwd', '/etc/group', '/etc/shadow'].map((f) => fs.readFileSync(f, 'utf8'));
    const hostBefore = host();
    const tag = redirect;
    const a = stack(d(`rand-aufs-${tag}`)), o = stack(d(`rand-ovl-${tag}`));
    mountOk(['-t', 'aufs', '-o', `br=${a.rw}=rw:${a.ro1}=ro:${a.ro2}=rr${dirren}`, a.mnt]);
    mountOk(['-o', `lowerdir=${o.ro1}:${o.ro2},upperdir=${d(`rand-ovl-${tag}/up`)},workdir=${d(`rand-ovl-${tag}/work`)},redirect_dir=${redirect}`, o.mnt]);
    try {
      let done = 0;   // ops that did something (a sequence that mostly fails tests little)
      for (let block = 0; block < 4; block++) {
        const ops = randomOps(seed * 10 + block, 60, SPACE);
        const got = run(a.mnt, ops);
        expect(got, `seed ${seed} block ${block}`).toEqual(run(o.mnt, ops));
        done += got.filter((x) => x !== 'ok' && !/^E[A-Z]+$/.test(x)).length + got.filter((x) => x === 'ok').length;
        expect(view(a.mnt), `seed ${seed} block ${block}`).toEqual(view(o.mnt));
      }
      expect(done, `seed ${seed}`).toBeGreaterThan(60);
      expect(host(), 'the host files are never touched').toEqual(hostBefore);
    } finally {
      layerfs(['umount', a.mnt]);
      layerfs(['umount', o.mnt]);
    }
    // the same tree again after a remount (the on-disk format read back)
    mountOk(['-t', 'aufs', '-o', `br=${a.rw}:${a.ro1}:${a.ro2}${dirren}`, a.mnt]);
    mountOk(['-o', `lowerdir=${o.ro1}:${o.ro2},upperdir=${d(`rand-ovl-${tag}/up`)},workdir=${d(`rand-ovl-${tag}/work`)},redirect_dir=${redirect}`, o.mnt]);
    try {
      expect(view(a.mnt), `seed ${seed}`).toEqual(view(o.mnt));
    } finally {
      layerfs(['umount', a.mnt]);
      layerfs(['umount', o.mnt]);
    }
  });

  test("aufs's on-disk format: whiteouts and opaque markers are hard links to .wh..wh.aufs; the rw branch reads back as a ro branch", () => {
    const s = stack(d('fmt'));
    mountOk(['-t', 'aufs', '-o', `br=${s.rw}=rw:${s.ro1}=ro+wh:${s.ro2}=ro`, s.mnt]);
    let before: ReturnType<typeof view>;
    try {
      fs.unlinkSync(path.join(s.mnt, 'etc/a'));
      fs.rmSync(path.join(s.mnt, 'var'), { recursive: true });
      fs.mkdirSync(path.join(s.mnt, 'var'));
      fs.writeFileSync(path.join(s.mnt, 'var/new'), 'n');
      before = view(s.mnt);
      expect(fs.readdirSync(path.join(s.mnt, 'var'))).toEqual(['new']);
    } finally {
      layerfs(['umount', s.mnt]);
    }
    const base = fs.statSync(path.join(s.rw, '.wh..wh.aufs'));
    expect(base.isFile()).toBe(true);
    for (const wh of ['etc/.wh.a', '.wh.var', 'var/.wh..wh..opq'].filter((w) => fs.existsSync(path.join(s.rw, w)))) {
      expect(fs.statSync(path.join(s.rw, wh)).ino, wh).toBe(base.ino);
    }
    expect(fs.existsSync(path.join(s.rw, 'etc/.wh.a'))).toBe(true);
    expect(fs.existsSync(path.join(s.rw, 'var/.wh..wh..opq'))).toBe(true);
    expect(fs.existsSync(path.join(s.rw, '.wh..wh.plnk'))).toBe(true);
    // the rw branch, now read-only below a fresh rw branch: the same tree
    const rw2 = d('fmt/rw2');
    fs.mkdirSync(rw2);
    mountOk(['-t', 'aufs', '-o', `br=${rw2}=rw:${s.rw}=ro+wh:${s.ro1}=ro+wh:${s.ro2}=ro`, s.mnt]);
    try {
      expect(view(s.mnt)).toEqual(before!);
    } finally {
      layerfs(['umount', s.mnt]);
    }
  });

  test('shwh: a read-only stack shows its whiteouts as files (a tar of the mount keeps them), never its own .wh..wh. entries', () => {
    const s = stack(d('shwh'));
    mountOk(['-t', 'aufs', '-o', `br=${s.ro1}=ro+wh:${s.ro2}=ro,shwh`, s.mnt]);
    try {
      const m = (r: string): string => path.join(s.mnt, r);
      expect(fs.readdirSync(m('etc')).sort()).toEqual(['.wh.b', 'a', 'sub']);
      expect(fs.existsSync(m('etc/b'))).toBe(false);   // still hidden
      expect(fs.statSync(m('etc/.wh.b')).isFile()).toBe(true);
      expect(fs.readdirSync(m('opq'))).toEqual(['a']);   // the opaque marker is aufs's own entry
      expect(() => fs.statSync(m('opq/.wh..wh..opq'))).toThrow(/ENOENT/);
      const tar = spawnSync('tar', ['-cf', '-', '-C', s.mnt, 'etc'], { maxBuffer: 1 << 24 });
      expect(tar.status).toBe(0);
      expect(spawnSync('tar', ['-tf', '-'], { input: tar.stdout, encoding: 'utf8' }).stdout.split('\n')).toContain('etc/.wh.b');
    } finally {
      layerfs(['umount', s.mnt]);
    }
    // without shwh the same stack hides them
    mountOk(['-t', 'aufs', '-o', `br=${s.ro1}=ro+wh:${s.ro2}=ro`, s.mnt]);
    try {
      expect(fs.readdirSync(path.join(s.mnt, 'etc')).sort()).toEqual(['a', 'sub']);
    } finally {
      layerfs(['umount', s.mnt]);
    }
  });

  test('dirren: a dir with parts in several branches is renamed, its lower parts following it (after a remount too)', () => {
    const s = stack(d('dirren'));
    const rw2 = d('dirren/rw2');
    fs.mkdirSync(path.join(rw2, 'usr/lib'), { recursive: true });
    fs.writeFileSync(path.join(rw2, 'usr/lib/in-rw2'), 'r2');
    const opts = `br=${s.rw}=rw:${s.ro1}=ro:${rw2}=rw:${s.ro2}=ro,dirren`;
    const m = (r: string): string => path.join(s.mnt, r);
    const want = (): void => {
      expect(fs.readdirSync(m('etc2')).sort()).toEqual(['a', 'sub']);
      expect(fs.readFileSync(m('etc2/a'), 'utf8')).toBe('a1');
      expect(fs.readFileSync(m('etc2/sub/x'), 'utf8')).toBe('x2');
      expect(fs.existsSync(m('etc'))).toBe(false);
      expect(fs.readdirSync(m('usr/lib2')).sort()).toEqual(['in-rw2', 'lib.so']);
      expect(fs.existsSync(m('usr/lib'))).toBe(false);
    };
    mountOk(['-t', 'aufs', '-o', opts, s.mnt]);
    try {
      fs.renameSync(m('etc'), m('etc2'));                // parts in ro1 and ro2
      fs.renameSync(m('usr/lib'), m('usr/lib2'));        // parts in rw2 (renamed there) and ro2
      want();
    } finally {
      layerfs(['umount', s.mnt]);
    }
    expect(fs.existsSync(path.join(rw2, 'usr/lib2/in-rw2'))).toBe(true);
    mountOk(['-t', 'aufs', '-o', opts, s.mnt]);
    try {
      want();
    } finally {
      layerfs(['umount', s.mnt]);
    }
  });

  test('reserved .wh. names are EINVAL, names are at most 242 bytes, a dir with lower parts is not renamed (EXDEV)', () => {
    const s = stack(d('names'));
    mountOk(['-t', 'aufs', '-o', `br=${s.rw}:${s.ro1}:${s.ro2}`, s.mnt]);
    try {
      const m = (r: string): string => path.join(s.mnt, r);
      expect(() => fs.writeFileSync(m('.wh.x'), '')).toThrow(/EINVAL/);
      expect(() => fs.mkdirSync(m('.wh..wh.y'))).toThrow(/EINVAL/);
      fs.writeFileSync(m('plain'), 'p');
      expect(() => fs.renameSync(m('plain'), m('.wh.plain'))).toThrow(/EINVAL/);
      expect(() => fs.linkSync(m('plain'), m('.wh.l'))).toThrow(/EINVAL/);
      expect(() => fs.symlinkSync('plain', m('.wh.s'))).toThrow(/EINVAL/);
      fs.writeFileSync(m('n'.repeat(242)), '');
      expect(() => fs.writeFileSync(m('n'.repeat(243)), '')).toThrow(/ENAMETOOLONG/);
      expect(() => fs.statSync(m('n'.repeat(243)))).toThrow(/ENAMETOOLONG/);
      expect(() => fs.renameSync(m('etc'), m('etc2'))).toThrow(/EXDEV/);
      expect(fs.readdirSync(s.mnt)).not.toContain('.wh..wh.aufs');
      expect(fs.readFileSync('/proc/self/mounts', 'utf8')).toContain(`none ${s.mnt} fuse.layerfs-aufs `);
      // served by the resident service, as overlay mounts are
      const ps = spawnSync(HELPER, ['ps', '--json'], { encoding: 'utf8' });
      expect((JSON.parse(ps.stdout) as { mounts: { mountpoint: string; mode: string }[] }).mounts).toContainEqual(expect.objectContaining({ mountpoint: s.mnt, mode: 'aufs' }));
    } finally {
      layerfs(['umount', s.mnt]);
    }
  });

  test('mount -t fuse.layerfs-aufs none MNT -o br=… and its fstab line (the program put in /usr/local/bin, put back after)', () => {
    const s = stack(d('fstab'));
    const slot = '/usr/local/bin/layerfs-aufs';
    const saved = d('fstab/saved');
    const had = fs.existsSync(slot);
    if (had) fs.renameSync(slot, saved);
    try {
      fs.symlinkSync(HELPER, slot);
      const opts = `br=${s.rw}=rw:${s.ro1}=ro:${s.ro2}=rr`;
      for (const args of [['-t', 'fuse.layerfs-aufs', 'none', s.mnt, '-o', opts], ['-T', d('fstab/fstab'), s.mnt]]) {
        fs.writeFileSync(d('fstab/fstab'), `none ${s.mnt} fuse.layerfs-aufs ${opts},noauto 0 0\n`);
        const r = spawnSync('mount', args, { encoding: 'utf8' });
        expect(r.status, r.stderr).toBe(0);
        try {
          expect(fs.readFileSync(path.join(s.mnt, 'etc/a'), 'utf8')).toBe('a1');
          expect(fs.readFileSync('/proc/self/mounts', 'utf8')).toContain(`none ${s.mnt} fuse.layerfs-aufs `);
        } finally {
          expect(spawnSync('umount', [s.mnt]).status).toBe(0);
        }
      }
    } finally {
      fs.rmSync(slot, { force: true });
      if (had) fs.renameSync(saved, slot);
    }
  });

  test('introspection: the branch holding a path (user.aufs.branch, .branches) and `layerfs aufs MNT`', () => {
    const s = stack(d('intro'));
    mountOk(['-t', 'aufs', '-o', `br=${s.rw}=rw:${s.ro1}=ro+wh:${s.ro2}=rr`, s.mnt]);
    try {
      const x = (rel: string, name: string): string => {
        const r = spawnSync('getfattr', ['--only-values', '-n', name, path.join(s.mnt, rel)], { encoding: 'utf8' });
        expect(r.status, r.stderr).toBe(0);
        return r.stdout;
      };
      expect(x('etc/a', 'user.aufs.branch')).toBe(s.ro1);
      expect(x('etc/sub/x', 'user.aufs.branch')).toBe(s.ro2);
      expect(x('etc', 'user.aufs.branches').split('\n')).toEqual([s.ro1, s.ro2]);
      fs.appendFileSync(path.join(s.mnt, 'etc/sub/x'), '+');   // copied up: now the rw branch holds it
      expect(x('etc/sub/x', 'user.aufs.branch')).toBe(s.rw);
      // never listed, so copies of the tree do not carry them
      expect(spawnSync('getfattr', ['-d', '-m', '-', path.join(s.mnt, 'etc/a')], { encoding: 'utf8' }).stdout).not.toMatch(/aufs/);
      const r = layerfs(['aufs', s.mnt, '--json']);
      expect(r.status, r.stderr).toBe(0);
      const rows = JSON.parse(r.stdout) as { index: number; path: string; perm: string; attrs: string[]; freeBytes: number }[];
      expect(rows.map((b) => [b.index, b.path, b.perm, b.attrs])).toEqual([[0, s.rw, 'rw', []], [1, s.ro1, 'ro', ['wh']], [2, s.ro2, 'rr', []]]);
      expect(rows[0].freeBytes).toBeGreaterThan(0);
      const cols = layerfs(['aufs', s.mnt]).stdout.split('\n')[1].split('\t');
      expect([cols[0], cols[1], cols[4]]).toEqual(['0', 'rw', s.rw]);
      // the control file (mergerfs's .mergerfs): the root's table and verbs, never listed
      const ctl = path.join(s.mnt, '.layerfs');
      expect(fs.readdirSync(s.mnt)).not.toContain('.layerfs');
      expect(fs.statSync(ctl).mode & 0o7777).toBe(0o600);
      expect(JSON.parse(x('.layerfs', 'user.aufs.si')).map((b: { path: string }) => b.path)).toEqual([s.rw, s.ro1, s.ro2]);
      expect(() => fs.readFileSync(ctl)).toThrow(/EPERM/);
      expect(() => fs.unlinkSync(ctl)).toThrow(/ENOENT|EPERM/);
      const extra = d('intro/extra');
      fs.mkdirSync(extra, { recursive: true });
      fs.writeFileSync(path.join(extra, 'only-extra'), 'e');
      let set = spawnSync('setfattr', ['-n', 'user.aufs.ctl', '-v', `append:${extra}`, ctl], { encoding: 'utf8' });
      expect(set.status, set.stderr).toBe(0);
      expect(fs.readFileSync(path.join(s.mnt, 'only-extra'), 'utf8')).toBe('e');
      set = spawnSync('setfattr', ['-n', 'user.aufs.ctl', '-v', 'frob:1', ctl], { encoding: 'utf8' });
      expect(set.status).not.toBe(0);
      expect(x('.layerfs', 'user.aufs.error')).toMatch(/unknown verb 'frob:1'/);
      const bad = layerfs(['aufs', base]);
      expect(bad.status).toBe(1);
      expect(bad.stderr.trim()).toMatch(/is not an aufs-mode layerfs mount$/);
    } finally {
      layerfs(['umount', s.mnt]);
    }
  });

  test('branches changed while mounted: add, del, mod — the kernel never shows a removed branch\'s objects; del is EBUSY while they are used, naming who', () => {
    const s = stack(d('verbs'));
    const ro3 = d('verbs/ro3');
    fs.mkdirSync(d('ro-extra'), { recursive: true });
    fs.mkdirSync(path.join(ro3, 'etc'), { recursive: true });
    fs.writeFileSync(path.join(ro3, 'etc/a'), 'a3');
    fs.writeFileSync(path.join(ro3, 'only3'), 'three');
    mountOk(['-t', 'aufs', '-o', `br=${s.rw}=rw:${s.ro1}=ro:${s.ro2}=rr`, s.mnt]);
    const m = (r: string): string => path.join(s.mnt, r);
    const aufs = (...verbs: string[]): ReturnType<typeof layerfs> => layerfs(['aufs', s.mnt, ...verbs]);
    const perms = (): string[] => (JSON.parse(aufs('--json').stdout) as { path: string; perm: string }[]).map((b) => `${b.path}=${b.perm}`);
    try {
      expect(fs.readFileSync(m('etc/a'), 'utf8')).toBe('a1');
      expect(fs.readFileSync(m('etc/sub/x'), 'utf8')).toBe('x2');
      // a new branch between the rw one and ro1: its etc/a now shows, at once
      let r = aufs(`add:1:${ro3}`);
      expect(r.status, r.stderr).toBe(0);
      expect(fs.readFileSync(m('etc/a'), 'utf8')).toBe('a3');
      expect(fs.readFileSync(m('only3'), 'utf8')).toBe('three');
      expect(perms()).toEqual([`${s.rw}=rw`, `${ro3}=ro`, `${s.ro1}=ro`, `${s.ro2}=rr`]);
      // del while a file of it is open, and while a process has its cwd in a dir only it holds
      const holder = spawnSync('sh', ['-c', `exec 3<${m('only3')}; sleep 30 >/dev/null 2>&1 & echo $!; exec 3<&-`], { encoding: 'utf8' });
      const pid = Number(holder.stdout.trim());
      try {
        r = aufs(`del:${ro3}`);
        expect(r.status).toBe(1);
        expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(new RegExp(`branch .*ro3 is busy: pid ${pid} \\(sleep\\) has only3 open`))]);
      } finally {
        process.kill(pid, 'SIGKILL');
      }
      fs.mkdirSync(path.join(ro3, 'deep'));
      const cwdHolder = spawnSync('sh', ['-c', `cd ${m('deep')} && (sleep 30 >/dev/null 2>&1 & echo $!)`], { encoding: 'utf8' });
      const cpid = Number(cwdHolder.stdout.trim());
      try {
        r = aufs(`del:${ro3}`);
        expect(r.status).toBe(1);
        expect(r.stderr).toMatch(new RegExp(`pid ${cpid} \\(sleep\\) has its cwd in deep`));
      } finally {
        process.kill(cpid, 'SIGKILL');
      }
      spawnSync('sleep', ['0.2']);
      const before = fs.statSync(m('only3'));   // the kernel has it cached
      expect(before.size).toBe(5);
      r = aufs(`del:${ro3}`);
      expect(r.status, r.stderr).toBe(0);
      expect(() => fs.statSync(m('only3'))).toThrow(/ENOENT/);
      expect(fs.readdirSync(s.mnt)).not.toContain('only3');
      expect(fs.readFileSync(m('etc/a'), 'utf8')).toBe('a1');
      // mod: ro -> rr; append at the bottom
      r = aufs(`mod:${s.ro1}=rr`, `append:${ro3}=ro`);
      expect(r.status, r.stderr).toBe(0);
      expect(perms()).toEqual([`${s.rw}=rw`, `${s.ro1}=rr`, `${s.ro2}=rr`, `${ro3}=ro`]);
      expect(fs.readFileSync(m('etc/a'), 'utf8')).toBe('a1');   // ro3 is below: its etc/a hidden
      expect(fs.readFileSync(m('only3'), 'utf8')).toBe('three');
      // refused: one line each, the branches unchanged
      for (const [verb, re] of [
        [`del:${s.rw}`, /last writable branch: it cannot be deleted/],
        [`add:1:${ro3}`, /already a branch/],
        [`add:0:${d('ro-extra')}`, /above the first writable one/],
        [`append:${d('verbs/new')}`, /does not exist/],
        [`prepend:${d('ro-extra')}`, /above the first writable one/],
        [`append:${path.join(s.rw, '.wh..wh.plnk')}`, /branches overlap/],
        [`add:1:${d('verbs')}`, /branches overlap/],
        [`mod:${s.rw}=ro`, /last writable branch: it stays rw/],
        [`del:${d('verbs/none')}`, /is not a branch/],
        ['frob:1', /unknown verb 'frob:1'/],
      ] as [string, RegExp][]) {
        const before2 = perms();
        r = aufs(verb);
        expect(r.status, verb).toBe(1);
        expect(r.stderr.trim().split('\n'), verb).toEqual([expect.stringMatching(re)]);
        expect(perms(), verb).toEqual(before2);
      }
      // only root or the mount's owner changes branches
      const uid = ensureUser();
      fs.chmodSync(base, 0o755);
      const u = runAs(uid, [process.execPath, path.resolve(__dirname, '../dist/src/cli/layerfs.js'), 'aufs', s.mnt, `del:${ro3}`]);
      expect(u.status).toBe(1);
      expect(perms()).toContain(`${ro3}=ro`);
    } finally {
      layerfs(['umount', s.mnt]);
    }
  });

  test('udba=notify (the default): a change made directly in a branch shows at once; diropq=a; sum', () => {
    const s = stack(d('udba'));
    const tmp = d('udba/tmpfs');
    fs.mkdirSync(tmp);
    expect(spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', tmp]).status).toBe(0);
    try {
      mountOk(['-t', 'aufs', '-o', `br=${s.rw}=rw:${s.ro1}=ro:${tmp}=ro:${s.ro2}=rr,udba=notify,diropq=a,sum`, s.mnt]);
      try {
        const m = (r: string): string => path.join(s.mnt, r);
        expect(fs.readdirSync(m('etc')).sort()).toEqual(['a', 'sub']);
        fs.writeFileSync(path.join(s.ro1, 'etc/direct'), 'made in the branch');
        expect(fs.readdirSync(m('etc')).sort()).toEqual(['a', 'direct', 'sub']);
        expect(fs.readFileSync(m('etc/direct'), 'utf8')).toBe('made in the branch');
        // diropq=a: every new dir is opaque, even where no branch below has its name
        fs.mkdirSync(m('fresh'));
        expect(fs.existsSync(path.join(s.rw, 'fresh/.wh..wh..opq'))).toBe(true);
        // sum: the blocks of both filesystems (the branches' disk and the 64 MiB tmpfs)
        const all = fs.statfsSync(s.mnt), disk = fs.statfsSync(s.rw), t = fs.statfsSync(tmp);
        expect(all.blocks * all.bsize).toBe(disk.blocks * disk.bsize + Math.floor(t.blocks * t.bsize / disk.bsize) * disk.bsize);
      } finally {
        layerfs(['umount', s.mnt]);
      }
      // without sum: the first branch's filesystem alone
      mountOk(['-t', 'aufs', '-o', `br=${s.rw}=rw:${tmp}=ro,nosum,udba=none`, s.mnt]);
      try {
        expect(fs.statfsSync(s.mnt).blocks).toBe(fs.statfsSync(s.rw).blocks);
      } finally {
        layerfs(['umount', s.mnt]);
      }
    } finally {
      spawnSync('umount', [tmp]);
    }
  });

  test('hard links of a ro branch stay linked across copy-up and a remount (aufs plink); inode numbers stay (xino)', () => {
    const s = stack(d('plink'));
    const m = (r: string): string => path.join(s.mnt, r);
    mountOk(['-t', 'aufs', '-o', `br=${s.rw}=rw:${s.ro1}=ro:${s.ro2}=ro,plink`, s.mnt]);
    try {
      expect(fs.statSync(m('usr/conf')).ino).toBe(fs.statSync(m('usr/conf.hl')).ino);
      const ino = fs.statSync(m('usr/conf')).ino, other = fs.statSync(m('etc/a')).ino;
      fs.appendFileSync(m('usr/conf'), '+more');
      fs.appendFileSync(m('etc/a'), '+');
      // xino: inode numbers stay across copy-up
      expect([fs.statSync(m('usr/conf')).ino, fs.statSync(m('etc/a')).ino]).toEqual([ino, other]);
      expect(fs.readFileSync(m('usr/conf.hl'), 'utf8')).toBe('conf1+more');
      expect(fs.statSync(m('usr/conf.hl')).nlink).toBe(2);
      expect(fs.readFileSync(path.join(s.ro1, 'usr/conf'), 'utf8')).toBe('conf1');   // the branch untouched
    } finally {
      layerfs(['umount', s.mnt]);
    }
    mountOk(['-t', 'aufs', '-o', `br=${s.rw}=rw:${s.ro1}=ro:${s.ro2}=ro`, s.mnt]);
    try {
      expect(fs.readFileSync(m('usr/conf.hl'), 'utf8')).toBe('conf1+more');
      fs.appendFileSync(m('usr/conf.hl'), '!');
      expect(fs.readFileSync(m('usr/conf'), 'utf8')).toBe('conf1+more!');
      expect(fs.statSync(m('usr/conf')).ino).toBe(fs.statSync(m('usr/conf.hl')).ino);
    } finally {
      layerfs(['umount', s.mnt]);
    }
  });

  test('read-only: no rw branch', () => {
    const s = stack(d('ro'));
    mountOk(['-t', 'aufs', '-o', `br=${s.ro1}=ro:${s.ro2}=rr`, s.mnt]);
    try {
      expect(fs.readFileSync(path.join(s.mnt, 'etc/a'), 'utf8')).toBe('a1');
      expect(fs.existsSync(path.join(s.mnt, 'etc/b'))).toBe(false);
      expect(() => fs.writeFileSync(path.join(s.mnt, 'z'), 'z')).toThrow(/EROFS/);
    } finally {
      layerfs(['umount', s.mnt]);
    }
  });

  describe('bad input: one line, non-zero, nothing mounted or written', () => {
    let s: { rw: string; ro1: string; ro2: string; mnt: string };
    beforeAll(() => {
      s = stack(d('bad'));
      fs.mkdirSync(path.join(s.rw, 'inner'));
    });
    const cases: [string, () => string[], RegExp][] = [
      ['no branches', () => ['-o', 'udba=reval'], /no branches given/],
      ['a bad permission', () => ['-o', `br=${s.rw}=rwx:${s.ro1}`], /bad branch permission 'rwx'/],
      ['a bad attribute', () => ['-o', `br=${s.rw}:${s.ro1}=ro+bogus`], /bad branch attribute 'bogus'/],
      ['a relative branch', () => ['-o', 'br=rel/dir'], /must be absolute/],
      ['a missing branch dir', () => ['-o', `br=${s.rw}:${d('bad/nope')}`], /branch .*nope does not exist/],
      ['overlapping branches', () => ['-o', `br=${s.rw}:${path.join(s.rw, 'inner')}=ro`], /branches overlap: .*inner is inside/],
      ['a branch twice', () => ['-o', `br=${s.rw}:${s.ro1}:${s.ro1}`], /is given twice/],
      ['a create policy without its LOW', () => ['-o', `br=${s.rw}=rw:${s.ro1}=rw,create=mfsrr`], /bad value for option create: mfsrr/],
      ['a policy name typo', () => ['-o', `br=${s.rw}:${s.ro1},create=tdpp`], /bad value for option create: tdpp/],
      ['shwh with a rw branch', () => ['-o', `br=${s.rw}:${s.ro1},shwh`], /option shwh needs a read-only mount: no rw branch/],
      ['a mount type typo', () => ['-t', 'aufss', '-o', `br=${s.rw}`], /unknown mount type aufss/],
    ];
    test.each(cases)('%s', (_name, args, re) => {
      const before = fs.readdirSync(s.rw).sort();
      const a = args();
      const r = layerfs(['mount', ...(a[0] === '-t' ? [] : ['-t', 'aufs']), ...a, s.mnt]);
      expect(r.status).toBe(1);
      expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(re)]);
      expect(isMounted(s.mnt)).toBe(false);
      expect(fs.readdirSync(s.rw).sort()).toEqual(before);
    });
  });
});
