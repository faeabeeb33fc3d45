// Overlay semantics that the oracle cannot show: the daemon never follows a symlink or a
// redirect out of a layer, other users get the kernel's permission checks, handles opened
// before a copy-up read the copy, st_dev/statfs, remounts, and the `.wh.` layer format.
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { native } from '../src/sys/native';
import { isMounted, layerfs, mountOk, requireFuse, tempDir, unmountAll } from './helpers/mount';
import { view } from './helpers/overlay';
import { TEST_USER, ensureUser, runAs } from './helpers/users';

let uid = 0;

/** Runs a shell command as the test user (no supplementary groups). */
function asUser(cmd: string): { status: number; stdout: string; stderr: string } {
  return runAs(uid, ['sh', '-c', cmd]);
}

function tree(dir: string): string {
  const h = crypto.createHash('sha256');
  const walk = (d: string): void => {
    for (const n of fs.readdirSync(d).sort()) {
      const p = path.join(d, n);
      const st = fs.lstatSync(p);
      h.update(`${p} ${st.mode} ${st.uid} ${st.gid} ${st.size} ${st.mtimeMs}\n`);
      const x = native.listxattr(p, 0);
      if (typeof x !== 'number') h.update(x);
      if (st.isFile()) h.update(fs.readFileSync(p));
      if (st.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return h.digest('hex');
}

describe('overlay semantics', () => {
  let base: string, l1: string, l2: string, up: string, work: string, mnt: string, victim: string;
  const opts = (): string => `lowerdir=${l1}:${l2},upperdir=${up},workdir=${work}`;

  beforeAll(() => {
    requireFuse();
    uid = ensureUser();
    base = tempDir('sem');
    fs.chmodSync(base, 0o755);
    [l1, l2, up, work, mnt, victim] = ['l1', 'l2', 'up', 'work', 'mnt', 'victim'].map((d) => path.join(base, d));
    for (const d of [l1, l2, up, work, mnt, victim]) fs.mkdirSync(d);
    // the host files a malicious layer points at
    fs.writeFileSync(path.join(victim, 'secret'), 'host secret', { mode: 0o600 });
    fs.mkdirSync(path.join(victim, 'dir'));
    fs.writeFileSync(path.join(victim, 'dir', 'inner'), 'inner');
    // layers
    fs.symlinkSync(victim, path.join(l1, 'escape'));
    fs.symlinkSync('../../../../../../../../..', path.join(l1, 'up'));
    fs.mkdirSync(path.join(l2, 'a'));
    fs.writeFileSync(path.join(l2, 'a', 'file'), 'lower a/file');
    fs.symlinkSync(victim, path.join(l1, 'a2'));         // a symlink where a dir of the same name could be
    fs.writeFileSync(path.join(l2, 'rootonly'), 'root only', { mode: 0o600 });
    fs.writeFileSync(path.join(l2, 'public'), 'public', { mode: 0o644 });
    fs.mkdirSync(path.join(l2, 'shared'), { mode: 0o1777 });
    fs.chmodSync(path.join(l2, 'shared'), 0o1777);
    fs.writeFileSync(path.join(l2, 'big'), Buffer.alloc(1 << 20, 'A'));
    // the containers-storage / aufs format in a lower layer
    fs.mkdirSync(path.join(l1, 'wh'));
    fs.writeFileSync(path.join(l1, 'wh', '.wh.gone'), '');
    fs.mkdirSync(path.join(l1, 'whopq'));
    fs.writeFileSync(path.join(l1, 'whopq', '.wh..wh..opq'), '');
    fs.writeFileSync(path.join(l1, 'whopq', 'kept'), 'kept');
    fs.mkdirSync(path.join(l1, 'uopq'));
    native.setxattr(path.join(l1, 'uopq'), 'user.overlay.opaque', Buffer.from('y'), 0, 0);
    fs.mkdirSync(path.join(l1, 'fopq'));
    native.setxattr(path.join(l1, 'fopq'), 'user.fuseoverlayfs.opaque', Buffer.from('y'), 0, 0);
    for (const d of ['wh', 'whopq', 'uopq', 'fopq']) {
      fs.mkdirSync(path.join(l2, d));
      fs.writeFileSync(path.join(l2, d, 'gone'), 'below');
      fs.writeFileSync(path.join(l2, d, 'also'), 'below');
    }
    mountOk(['-o', opts(), mnt]);
  });
  afterAll(() => {
    unmountAll(base);
    spawnSync('userdel', [TEST_USER]);
  });

  test('symlinks inside layers are shown, never followed by the daemon; the host is untouched', () => {
    const before = tree(victim);
    const lowersBefore = [tree(l1), tree(l2)];
    expect(fs.readlinkSync(path.join(mnt, 'escape'))).toBe(victim);
    expect(fs.readlinkSync(path.join(mnt, 'up'))).toBe('../../../../../../../../..');
    // operations on the links themselves copy up the link, never the target
    fs.lchownSync(path.join(mnt, 'escape'), 4321, 4321);
    expect(native.setxattr(path.join(mnt, 'escape'), 'trusted.evil', Buffer.from('1'), 0, 0)).toBe(0);
    fs.renameSync(path.join(mnt, 'escape'), path.join(mnt, 'escape2'));
    fs.unlinkSync(path.join(mnt, 'up'));
    fs.renameSync(path.join(mnt, 'a2'), path.join(mnt, 'a3'));
    expect(fs.lstatSync(path.join(up, 'escape2')).isSymbolicLink()).toBe(true);
    expect(fs.lstatSync(path.join(up, 'escape2')).uid).toBe(4321);
    expect(tree(victim)).toBe(before);
    expect([tree(l1), tree(l2)]).toEqual(lowersBefore);
  });

  test('a redirect pointing out of the layer exposes nothing', () => {
    for (const [name, target] of [['r1', '/../../../../..' + victim], ['r2', '../../victim'], ['r3', '/escape'], ['r4', '/a2'], ['r5', '/a']]) {
      fs.mkdirSync(path.join(up, name));
      expect(native.setxattr(path.join(up, name), 'trusted.overlay.redirect', Buffer.from(target), 0, 0)).toBe(0);
    }
    // a fresh mount reads the planted xattrs
    expect(spawnSync('umount', [mnt]).status).toBe(0);
    mountOk(['-o', opts(), mnt]);
    for (const name of ['r1', 'r2', 'r3', 'r4']) {
      expect(fs.readdirSync(path.join(mnt, name)), name).toEqual([]);
    }
    // a redirect inside the layer is followed (the kernel's redirect_dir format)
    expect(fs.readdirSync(path.join(mnt, 'r5'))).toEqual(['file']);
  });

  test('another user gets the kernel permission checks; a 0600 root file stays unreadable', () => {
    expect(asUser(`cat ${mnt}/rootonly`).status).not.toBe(0);
    expect(asUser(`cat ${mnt}/rootonly`).stderr).toMatch(/Permission denied/);
    expect(asUser(`cat ${mnt}/public`).stdout).toBe('public');
    expect(asUser(`echo x >> ${mnt}/public`).status).not.toBe(0);
    expect(asUser(`echo mine > ${mnt}/shared/mine`).status).toBe(0);
    const st = fs.statSync(path.join(mnt, 'shared', 'mine'));
    expect([st.uid, st.gid]).toEqual([uid, uid]);
    expect(fs.statSync(path.join(up, 'shared', 'mine')).uid).toBe(uid);
    expect(asUser(`rm ${mnt}/public`).status).not.toBe(0);
    // sticky dir: root's file in it cannot be removed by the user
    fs.writeFileSync(path.join(mnt, 'shared', 'roots'), 'r');
    expect(asUser(`rm -f ${mnt}/shared/roots`).status).not.toBe(0);
    expect(fs.existsSync(path.join(mnt, 'shared', 'roots'))).toBe(true);
  });

  test("every object reports the mount's st_dev; statfs is the upper's", () => {
    const dev = fs.statSync(mnt).dev;
    for (const n of ['public', 'a', 'a/file', 'shared', 'escape2']) expect(fs.lstatSync(path.join(mnt, n)).dev, n).toBe(dev);
    expect(fs.statSync(mnt).dev).not.toBe(fs.statSync(up).dev);
    const a = fs.statfsSync(mnt), b = fs.statfsSync(up);
    expect([a.blocks, a.bsize]).toEqual([b.blocks, b.bsize]);
  });

  // A reader opened on a lower file, then another process writes it (a copy-up).
  const copyUpScript = `
import os, mmap, sys
p, direct = sys.argv[1], sys.argv[2] == "1"
r = os.open(p, os.O_RDONLY | (os.O_DIRECT if direct else 0))
buf = mmap.mmap(-1, 4096)
os.preadv(r, [buf], 0)
first = bytes(buf[:4])
w = os.open(p, os.O_WRONLY)
os.pwrite(w, b"B" * 4096, 0)
os.fsync(w)
os.close(w)
os.preadv(r, [buf], 0)
with open(p, "rb") as f: fresh = f.read(4)
print(first.decode(), bytes(buf[:4]).decode(), fresh.decode())
`;

  /** A fresh big lower file in its own mount with these options; the script's output. */
  function copyUpRun(name: string, extra: string, direct: boolean): string {
    const lo = path.join(base, `cu-${name}-l`), u = path.join(base, `cu-${name}-u`), w = path.join(base, `cu-${name}-w`), m = path.join(base, `cu-${name}-m`);
    for (const d of [lo, u, w, m]) fs.mkdirSync(d);
    fs.writeFileSync(path.join(lo, 'big'), Buffer.alloc(1 << 20, 'A'));
    mountOk(['-o', `lowerdir=${lo},upperdir=${u},workdir=${w}${extra}`, m]);
    try {
      const r = spawnSync('python3', ['-c', copyUpScript, path.join(m, 'big'), direct ? '1' : '0'], { encoding: 'utf8' });
      expect(r.stderr).toBe('');
      expect(fs.readFileSync(path.join(lo, 'big')).subarray(0, 4).toString()).toBe('AAAA');  // the lower never changes
      return r.stdout.trim();
    } finally {
      spawnSync('umount', [m]);
    }
  }

  test('passthrough=off: a handle opened before a copy-up reads the copy, as on kernel overlayfs', () => {
    expect(copyUpRun('off', ',passthrough=off', true)).toBe('AAAA BBBB BBBB');
    expect(copyUpRun('off2', ',passthrough=off', false)).toBe('AAAA BBBB BBBB');
  });

  test('with passthrough (the default as root): the writer and later opens see the copy; an earlier reader keeps the lower data', () => {
    // the kernel reads the earlier reader's file itself (documented difference)
    expect(copyUpRun('pt', ',passthrough=on', true)).toBe('AAAA AAAA BBBB');
    expect(copyUpRun('pt2', ',passthrough=on', false)).toBe('AAAA AAAA BBBB');
  });

  test('the .wh. format, .wh..wh..opq and user./fuseoverlayfs opaque xattrs are read; none shows', () => {
    expect(fs.readdirSync(path.join(mnt, 'wh')).sort()).toEqual(['also']);
    expect(fs.existsSync(path.join(mnt, 'wh', 'gone'))).toBe(false);
    expect(fs.existsSync(path.join(mnt, 'wh', '.wh.gone'))).toBe(false);
    for (const d of ['whopq', 'uopq', 'fopq']) {
      expect(fs.existsSync(path.join(mnt, d, 'also')), d).toBe(false);
    }
    expect(fs.readdirSync(path.join(mnt, 'whopq'))).toEqual(['kept']);
    const x = native.listxattr(path.join(mnt, 'uopq'), 0);
    expect(typeof x === 'number' ? '' : x.toString()).not.toMatch(/overlay/);
  });

  test('changes made directly in a layer show within timeout=SECS', async () => {
    const m2 = path.join(base, 'mnt-t'), up2 = path.join(base, 'up-t'), w2 = path.join(base, 'work-t');
    for (const d of [m2, up2, w2]) fs.mkdirSync(d);
    mountOk(['-o', `lowerdir=${l1}:${l2},upperdir=${up2},workdir=${w2},timeout=1`, m2]);
    try {
      expect(fs.existsSync(path.join(m2, 'late'))).toBe(false);
      const before = fs.readdirSync(path.join(m2, 'a'));
      fs.writeFileSync(path.join(l2, 'late'), 'arrived');
      fs.writeFileSync(path.join(l2, 'a', 'late2'), 'x');
      fs.writeFileSync(path.join(l2, 'public'), 'public, changed');
      await new Promise((r) => setTimeout(r, 1300));
      expect(fs.readFileSync(path.join(m2, 'late'), 'utf8')).toBe('arrived');
      expect(fs.readdirSync(path.join(m2, 'a')).sort()).toEqual([...before, 'late2'].sort());
      expect(fs.readFileSync(path.join(m2, 'public'), 'utf8')).toBe('public, changed');
    } finally {
      spawnSync('umount', [m2]);
      fs.rmSync(path.join(l2, 'late'));
      fs.rmSync(path.join(l2, 'a', 'late2'));
      fs.writeFileSync(path.join(l2, 'public'), 'public');
    }
  });

  test('with the default (long) timeout, changes in a lower layer show at once (inotify)', async () => {
    const m3 = path.join(base, 'mnt-w'), up3 = path.join(base, 'up-w'), w3 = path.join(base, 'work-w');
    for (const d of [m3, up3, w3]) fs.mkdirSync(d);
    mountOk(['-o', `lowerdir=${l1}:${l2},upperdir=${up3},workdir=${w3}`, m3]);
    try {
      // let the kernel cache all of it: a negative entry, a listing, a file's attributes and pages
      expect(fs.existsSync(path.join(m3, 'a', 'fresh'))).toBe(false);
      const before = fs.readdirSync(path.join(m3, 'a'));
      expect(fs.readFileSync(path.join(m3, 'public'), 'utf8')).toBe('public');
      fs.writeFileSync(path.join(l2, 'a', 'fresh'), 'new');
      fs.writeFileSync(path.join(l2, 'public'), 'public, edited');
      fs.rmSync(path.join(l2, 'a', 'file'));
      const ok = await (async () => {
        for (let i = 0; i < 40; i++) {
          await new Promise((r) => setTimeout(r, 50));
          const names = fs.readdirSync(path.join(m3, 'a')).sort();
          if (fs.existsSync(path.join(m3, 'a', 'fresh')) && names.includes('fresh') && !names.includes('file') &&
            fs.readFileSync(path.join(m3, 'public'), 'utf8') === 'public, edited') return true;
        }
        return false;
      })();
      expect(ok, `listing before: ${before}`).toBe(true);
      expect(fs.existsSync(path.join(m3, 'a', 'file'))).toBe(false);
    } finally {
      spawnSync('umount', [m3]);
      fs.rmSync(path.join(l2, 'a', 'fresh'));
      fs.writeFileSync(path.join(l2, 'a', 'file'), 'lower a/file');
      fs.writeFileSync(path.join(l2, 'public'), 'public');
    }
  });

  test('after umount and a fresh mount of the same upper/work, everything looks the same', () => {
    const v1 = view(mnt);
    const ino1 = fs.statSync(path.join(mnt, 'big')).ino;
    expect(layerfs(['umount', mnt]).status).toBe(0);
    expect(isMounted(mnt)).toBe(false);
    mountOk(['-o', opts(), mnt]);
    expect(view(mnt)).toEqual(v1);
    expect(fs.statSync(path.join(mnt, 'big')).ino).toBe(ino1);
  });
});
