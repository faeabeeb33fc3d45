// layerfs-overlay as a drop-in for fuse-overlayfs: podman's argv, mount(8) and fstab through
// mount.fuse3, symlinked lower entries, 500 lowers, and every bad input (one line, non-zero,
// nothing touched).
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { HELPER, ROOT, daemonPid, isMounted, requireFuse, tempDir, unmountAll } from './helpers/mount';

/** The command line of the daemon serving mnt. */
function daemonCmdline(mnt: string): string {
  return fs.readFileSync(`/proc/${daemonPid(mnt)}/cmdline`, 'utf8').split('\0').join(' ');
}

const OVERLAY_CLI = path.join(ROOT, 'dist/src/cli/layerfs-overlay.js');

function overlay(args: string[]): ReturnType<typeof spawnSync<string>> {
  return spawnSync(process.execPath, [OVERLAY_CLI, ...args], { encoding: 'utf8', timeout: 60_000 });
}

/** Every name and size below dir: to prove a failed mount touched nothing. */
function snapshot(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const n of fs.readdirSync(d).sort()) {
      const p = path.join(d, n);
      const st = fs.lstatSync(p);
      out.push(`${path.relative(dir, p)} ${st.mode} ${st.size} ${st.mtimeMs}`);
      if (st.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return out;
}

describe('layerfs-overlay command line', () => {
  let base: string, l1: string, l2: string, up: string, work: string, mnt: string;

  beforeAll(() => {
    requireFuse();
    base = tempDir('ovcli');
    // containers-storage layout: overlay/<id>/diff, short links in overlay/l/
    for (const id of ['abc', 'def']) fs.mkdirSync(path.join(base, 'overlay', id, 'diff'), { recursive: true });
    fs.mkdirSync(path.join(base, 'overlay', 'l'));
    fs.symlinkSync('../abc/diff', path.join(base, 'overlay', 'l', 'ABC'));
    fs.symlinkSync('../def/diff', path.join(base, 'overlay', 'l', 'DEF'));
    l1 = path.join(base, 'overlay', 'l', 'ABC');
    l2 = path.join(base, 'overlay', 'l', 'DEF');
    fs.writeFileSync(path.join(base, 'overlay/abc/diff/top'), 'top');
    fs.writeFileSync(path.join(base, 'overlay/def/diff/bottom'), 'bottom');
    up = path.join(base, 'overlay', 'ctr', 'diff');
    work = path.join(base, 'overlay', 'ctr', 'work');
    mnt = path.join(base, 'overlay', 'ctr', 'merged');
    for (const d of [up, work, mnt]) fs.mkdirSync(d, { recursive: true });
  });
  afterAll(() => unmountAll(base));

  test("podman's mount_program argv: returns once mounted, never holds the caller's pipes", async () => {
    const opts = `lowerdir=${l1}:${l2},upperdir=${up},workdir=${work},volatile,` +
      'context="system_u:object_r:container_file_t:s0:c1,c2",some_future_option=1';
    const t0 = Date.now();
    const { code, stderr } = await new Promise<{ code: number; stderr: string }>((resolve) => {
      const c = spawn(process.execPath, [OVERLAY_CLI, '-o', opts, mnt], { stdio: ['ignore', 'pipe', 'pipe'] });
      let err = '';
      c.stderr.on('data', (d) => (err += d));
      c.on('close', (code) => resolve({ code: code ?? -1, stderr: err }));
    });
    expect(code, stderr).toBe(0);
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect(stderr.trim().split('\n')).toEqual([expect.stringMatching(/unknown option some_future_option ignored/)]);
    expect(isMounted(mnt)).toBe(true);
    expect(fs.readFileSync(path.join(mnt, 'top'), 'utf8')).toBe('top');
    expect(fs.readFileSync(path.join(mnt, 'bottom'), 'utf8')).toBe('bottom');
    fs.writeFileSync(path.join(mnt, 'new'), 'n');
    expect(fs.readFileSync(path.join(up, 'new'), 'utf8')).toBe('n');
    expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).toMatch(new RegExp(`${mnt} .* - fuse\\.layerfs-overlay `));
    expect(spawnSync('umount', [mnt]).status).toBe(0);
  });

  /** layerfs-overlay as `make install` puts it: a link to this checkout's mount helper. */
  function checkoutWrapper(dir: string): string {
    fs.mkdirSync(dir, { recursive: true });
    const w = path.join(dir, 'layerfs-overlay');
    fs.symlinkSync(HELPER, w);
    return w;
  }

  function mountThenCheck(args: string[], file: string, want: string): void {
    const r = spawnSync('mount', args, { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    try {
      expect(fs.readFileSync(path.join(mnt, file), 'utf8')).toBe(want);
      // the mount is served by this checkout's build: its command line names this checkout's CLI
      expect(daemonCmdline(mnt)).toContain(path.join(ROOT, 'dist/src/cli/'));
    } finally {
      expect(spawnSync('umount', [mnt]).status).toBe(0);
    }
  }

  test("mount -t fuse with the checkout's program named explicitly, and the same fstab line", () => {
    // mount(8) runs mount.fuse3 with a fixed PATH: PROG#SOURCE names the program by path
    const prog = checkoutWrapper(path.join(base, 'bin'));
    const opts = `lowerdir=${l1}:${l2},upperdir=${up},workdir=${work}`;
    mountThenCheck(['-t', 'fuse', `${prog}#layerfs-overlay`, mnt, '-o', opts], 'bottom', 'bottom');
    const fstab = path.join(base, 'fstab');
    fs.writeFileSync(fstab, `${prog}#layerfs-overlay ${mnt} fuse ${opts},noauto 0 0\n`);
    mountThenCheck(['-T', fstab, mnt], 'top', 'top');
  });

  test('mount -t fuse.layerfs-overlay and its fstab line find the program by name (put back afterwards)', () => {
    // mount.fuse3 looks the name up in /usr/local/bin first: this checkout's program goes there
    // for the test, and whatever was there (an installed or a stale copy) is put back
    const slot = '/usr/local/bin/layerfs-overlay';
    const saved = path.join(base, 'saved-layerfs-overlay');
    const had = fs.existsSync(slot);
    if (had) fs.renameSync(slot, saved);
    try {
      fs.symlinkSync(HELPER, slot);
      const opts = `lowerdir=${l1}:${l2},upperdir=${up},workdir=${work}`;
      mountThenCheck(['-t', 'fuse.layerfs-overlay', 'layerfs-overlay', mnt, '-o', opts], 'bottom', 'bottom');
      const fstab = path.join(base, 'fstab2');
      fs.writeFileSync(fstab, `layerfs-overlay ${mnt} fuse.layerfs-overlay ${opts},noauto 0 0\n`);
      mountThenCheck(['-T', fstab, mnt], 'top', 'top');
    } finally {
      fs.rmSync(slot, { force: true });
      if (had) fs.renameSync(saved, slot);
    }
  });

  test("Docker's fuse-overlayfs driver: the helper linked as fuse-overlayfs mounts as layerfs-overlay, daemonized, with dockerd's three arguments", () => {
    const bin = path.join(base, 'dockerbin');
    fs.mkdirSync(bin);
    fs.symlinkSync(HELPER, path.join(bin, 'fuse-overlayfs'));
    // dockerd: `fuse-overlayfs -o lowerdir=…,upperdir=…,workdir=… MERGED` from its PATH, and it
    // waits for the program's stderr to close
    const r = spawnSync('fuse-overlayfs', ['-o', `lowerdir=${l1}:${l2},upperdir=${up},workdir=${work}`, mnt],
      { encoding: 'utf8', env: { ...process.env, PATH: `${bin}:/usr/sbin:/usr/bin:/sbin:/bin` }, timeout: 30_000 });
    expect(r.status, r.stderr).toBe(0);
    try {
      expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).toMatch(new RegExp(`${mnt} .* - fuse\\.layerfs-overlay `));
      expect(fs.readFileSync(path.join(mnt, 'bottom'), 'utf8')).toBe('bottom');
      const v = spawnSync(path.join(bin, 'fuse-overlayfs'), ['--version'], { encoding: 'utf8' });
      expect(v.stdout).toMatch(/^layerfs-overlay: fuse-overlayfs-compatible layerfs /);
    } finally {
      expect(spawnSync('umount', [mnt]).status).toBe(0);
    }
  });

  test('options in the order mount.fuse passes them, several -o', () => {
    const r = overlay(['layerfs-overlay', mnt, '-o', `lowerdir=${l1}:${l2}`, '-o', `upperdir=${up},workdir=${work}`, '-o', 'rw,nodev']);
    expect(r.status, r.stderr).toBe(0);
    expect(fs.existsSync(path.join(mnt, 'top'))).toBe(true);
    expect(spawnSync('umount', [mnt]).status).toBe(0);
  });

  test('500 lower layers; an escaped colon in a lower path', () => {
    const many = path.join(base, 'many');
    const dirs: string[] = [];
    for (let i = 0; i < 500; i++) {
      const d = path.join(many, i === 250 ? 'with:colon' : `l${i}`);
      fs.mkdirSync(d, { recursive: true });
      fs.writeFileSync(path.join(d, `f${i}`), String(i));
      dirs.push(d.replace(/:/g, '\\:'));
    }
    const r = overlay(['-o', `lowerdir=${dirs.join(':')}`, mnt]);
    expect(r.status, r.stderr).toBe(0);
    expect(fs.readFileSync(path.join(mnt, 'f499'), 'utf8')).toBe('499');
    expect(fs.readFileSync(path.join(mnt, 'f250'), 'utf8')).toBe('250');
    expect(fs.readdirSync(mnt).length).toBe(500);
    expect(() => fs.writeFileSync(path.join(mnt, 'x'), 'x')).toThrow(/EROFS/);
    expect(spawnSync('umount', [mnt]).status).toBe(0);
    const r2 = overlay(['-o', `lowerdir=${[...dirs, dirs[0]].join(':')}`, mnt]);
    expect(r2.status).not.toBe(0);
    expect(r2.stderr).toMatch(/too many lower layers: 501/);
  });

  // What engines send, and what can go wrong between their --version probe and the mount: each
  // argv run by fuse-overlayfs and by layerfs-overlay on the same dirs. Both accept or both refuse;
  // layerfs refuses in one line (fuse-overlayfs prints three).
  describe('as fuse-overlayfs answers engines', () => {
    const cases: [string, () => string, boolean][] = [
      ['a trailing comma (an empty option)', () => `lowerdir=${l1}:${l2},upperdir=${up},workdir=${work},`, true],
      ["',,volatile' (podman's --rm)", () => `lowerdir=${l1}:${l2},upperdir=${up},workdir=${work},,volatile`, true],
      ['an option it does not know', () => `lowerdir=${l1},upperdir=${up},workdir=${work},some_new_option=1`, true],
      ['lowerdir only (a read-only build or commit mount), an empty dir at the bottom', () => `lowerdir=${l1}:${base}/emptylow`, true],
      ['uidmapping with a leading colon', () => `lowerdir=${l1},upperdir=${up},workdir=${work},uidmapping=:0:0:1:1:100000:65536,gidmapping=:0:0:1`, true],
      ['a lower named by a dangling link in l/', () => `lowerdir=${l1}:${base}/overlay/l/GONE,upperdir=${up},workdir=${work}`, false],
      ['a lower removed after --version', () => `lowerdir=${base}/overlay/vanished/diff:${l1},upperdir=${up},workdir=${work}`, false],
    ];
    test.each(cases)('%s', (_name, opts, ok) => {
      fs.mkdirSync(path.join(base, 'emptylow'), { recursive: true });
      fs.rmSync(path.join(base, 'overlay/l/GONE'), { force: true });
      fs.symlinkSync('../gone/diff', path.join(base, 'overlay/l/GONE'));
      const vanished = path.join(base, 'overlay/vanished/diff');
      fs.mkdirSync(vanished, { recursive: true });
      expect(spawnSync(HELPER, ['--as-overlay', '--version']).status).toBe(0);
      fs.rmSync(path.dirname(vanished), { recursive: true });
      const outcome = (argv0: string[]): { status: number | null; stderr: string } => {
        const r = spawnSync(argv0[0], [...argv0.slice(1), '-o', opts(), mnt], { encoding: 'utf8', timeout: 30_000 });
        if (isMounted(mnt)) expect(spawnSync('umount', [mnt]).status).toBe(0);
        return r;
      };
      const fo = outcome(['/usr/bin/fuse-overlayfs']);
      const lfs = outcome([HELPER, '--as-overlay']);
      expect(fo.status === 0, `fuse-overlayfs: ${fo.stderr}`).toBe(ok);
      expect(lfs.status === 0, `layerfs: ${lfs.stderr}`).toBe(ok);
      if (!ok) expect(lfs.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^layerfs-overlay: lowerdir .* does not exist$/)]);
    });
  });

  describe('bad input', () => {
    const cases: [string, () => string, RegExp][] = [
      ['lowerdir missing', () => `lowerdir=${base}/nope,upperdir=${up},workdir=${work}`, /lowerdir .*nope does not exist/],
      ['lowerdir not a dir', () => `lowerdir=${base}/fstab-file,upperdir=${up},workdir=${work}`, /not a directory/],
      ['upperdir inside a lowerdir', () => `lowerdir=${base}/overlay,upperdir=${up},workdir=${work}`, /upperdir .* is inside lowerdir/],
      ['lowerdir inside the upper', () => `lowerdir=${up}/sub,upperdir=${up},workdir=${work}`, /lowerdir .* is inside upperdir/],
      ['workdir not on the upper filesystem', () => `lowerdir=${l1},upperdir=${up},workdir=/dev/shm`, /not on the upper's filesystem/],
      ['missing workdir with an upperdir', () => `lowerdir=${l1},upperdir=${up}`, /upperdir given without workdir/],
      ['malformed uidmapping', () => `lowerdir=${l1},upperdir=${up},workdir=${work},uidmapping=0:1000`, /bad value for option uidmapping/],
      ['bad value of a known option', () => `lowerdir=${l1},upperdir=${up},workdir=${work},fsync=maybe`, /bad value for option fsync/],
      ['no lowerdir', () => `upperdir=${up},workdir=${work}`, /no lowerdir/],
    ];
    test.each(cases)('%s', (_name, opts, re) => {
      fs.writeFileSync(path.join(base, 'fstab-file'), '');
      fs.mkdirSync(path.join(up, 'sub'), { recursive: true });
      const before = snapshot(path.join(base, 'overlay'));
      const r = overlay(['-o', opts(), mnt]);
      expect(r.status).not.toBe(0);
      const lines = r.stderr.trim().split('\n');
      expect(lines.length, r.stderr).toBe(1);
      expect(lines[0]).toMatch(re);
      expect(isMounted(mnt)).toBe(false);
      expect(snapshot(path.join(base, 'overlay'))).toEqual(before);
    });

    test('mountpoint inside a layer', () => {
      const inner = path.join(base, 'overlay/abc/diff/mnt-here');
      fs.mkdirSync(inner, { recursive: true });
      const r = overlay(['-o', `lowerdir=${l1},upperdir=${up},workdir=${work}`, inner]);
      expect(r.status).not.toBe(0);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/mountpoint .* is inside layer/);
      fs.rmdirSync(inner);
    });
  });
});
