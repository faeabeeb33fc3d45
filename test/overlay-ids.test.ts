// Owners and modes: uidmapping/gidmapping (fuse-overlayfs's order and meaning, with it as the oracle),
// squash_to_uid/gid, and xattr_permissions=2 (user.containers.override_stat, never shown).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { native } from '../src/sys/native';
import { mountOk, requireFuse, tempDir, unmountAll } from './helpers/mount';

describe('overlay owners and modes', () => {
  let base: string, lower: string;

  beforeAll(() => {
    requireFuse();
    base = tempDir('ids');
    lower = path.join(base, 'lower');
    fs.mkdirSync(lower);
    fs.writeFileSync(path.join(lower, 'mapped'), 'm');
    fs.chownSync(path.join(lower, 'mapped'), 1, 2);
    fs.writeFileSync(path.join(lower, 'unmapped'), 'u');
    fs.chownSync(path.join(lower, 'unmapped'), 50, 50);
    fs.writeFileSync(path.join(lower, 'rootless'), 'r', { mode: 0o600 });
    fs.chownSync(path.join(lower, 'rootless'), 1234, 1234);
    native.setxattr(path.join(lower, 'rootless'), 'user.containers.override_stat', Buffer.from('0:0:0755'), 0, 0);
    fs.mkdirSync(path.join(lower, 'sub'));
  });
  afterAll(() => unmountAll(base));

  function mountWith(name: string, extra: string): { mnt: string; up: string } {
    const [up, work, mnt] = ['up', 'work', 'mnt'].map((d) => path.join(base, name, d));
    for (const d of [up, work, mnt]) fs.mkdirSync(d, { recursive: true });
    mountOk(['-o', `lowerdir=${lower},upperdir=${up},workdir=${work},${extra}`, mnt]);
    return { mnt, up };
  }

  test('uidmapping/gidmapping in fuse-overlayfs\'s order (stored:shown:len, a leading colon), as fuse-overlayfs maps them', () => {
    const opts = 'uidmapping=:0:1000:10:10:0:1,gidmapping=0:2000:10:10:0:1';
    const seen = (prog: string | null): unknown[] => {
      const name = prog ? 'map-fo' : 'map';
      const [up, work, mnt] = ['up', 'work', 'mnt'].map((d) => path.join(base, name, d));
      for (const d of [up, work, mnt]) fs.mkdirSync(d, { recursive: true });
      const o = `lowerdir=${lower},upperdir=${up},workdir=${work},${opts}`;
      if (prog) expect(spawnSync(prog, ['-o', o, mnt]).status).toBe(0);
      else mountOk(['-o', o, mnt]);
      try {
        const ids = (p: string): number[] => { const st = fs.lstatSync(p); return [st.uid, st.gid]; };
        const out: unknown[] = [ids(path.join(mnt, 'mapped')), ids(path.join(mnt, 'unmapped')), ids(path.join(mnt, 'ten'))];
        fs.chownSync(path.join(mnt, 'mapped'), 1003, 2004);
        out.push(ids(path.join(up, 'mapped')), ids(path.join(mnt, 'mapped')));
        fs.writeFileSync(path.join(mnt, 'created'), 'c');     // the caller (root, shown 0) is stored as 10
        out.push(ids(path.join(up, 'created')), ids(path.join(mnt, 'created')));
        return out;
      } finally {
        expect(spawnSync('umount', [mnt]).status).toBe(0);
      }
    };
    fs.writeFileSync(path.join(lower, 'ten'), 't');
    fs.chownSync(path.join(lower, 'ten'), 10, 3);
    const got = seen(null);
    expect(got.slice(0, 3)).toEqual([[1001, 2002], [65534, 65534], [0, 2003]]);
    expect(got).toEqual(seen('/usr/bin/fuse-overlayfs'));
    // stricter than fuse-overlayfs (which stores 65534): an id the mapping cannot store is EINVAL
    const { mnt } = mountWith('map-strict', opts);
    expect(() => fs.chownSync(path.join(mnt, 'mapped'), 50, 50)).toThrow(/EINVAL/);
    expect(spawnSync('umount', [mnt]).status).toBe(0);
  });

  test('squash_to_uid/squash_to_gid show one owner', () => {
    const { mnt } = mountWith('squash', 'squash_to_uid=7,squash_to_gid=8');
    for (const n of ['mapped', 'unmapped', 'sub']) {
      const st = fs.statSync(path.join(mnt, n));
      expect([st.uid, st.gid], n).toEqual([7, 8]);
    }
    expect(spawnSync('umount', [mnt]).status).toBe(0);
  });

  test('xattr_permissions=2: owner and mode from user.containers.override_stat, written there, never shown', () => {
    const { mnt, up } = mountWith('xp', 'xattr_permissions=2');
    const st = fs.statSync(path.join(mnt, 'rootless'));
    expect([st.uid, st.gid, (st.mode & 0o7777).toString(8)]).toEqual([0, 0, '755']);
    const list = native.listxattr(path.join(mnt, 'rootless'), 0);
    expect(typeof list === 'number' ? '' : list.toString()).not.toMatch(/override_stat/);
    fs.chmodSync(path.join(mnt, 'rootless'), 0o700);
    fs.chownSync(path.join(mnt, 'rootless'), 33, 44);
    const after = fs.statSync(path.join(mnt, 'rootless'));
    expect([after.uid, after.gid, (after.mode & 0o7777).toString(8)]).toEqual([33, 44, '700']);
    // on disk: the real owner and mode are untouched, the xattr holds the shown ones
    const disk = fs.statSync(path.join(up, 'rootless'));
    expect([disk.uid, (disk.mode & 0o7777).toString(8)]).toEqual([1234, '600']);
    const x = native.getxattr(path.join(up, 'rootless'), 'user.containers.override_stat', 0);
    expect(typeof x === 'number' ? x : x.toString()).toBe('33:44:0700');
    fs.writeFileSync(path.join(mnt, 'new'), 'n', { mode: 0o640 });
    const nx = native.getxattr(path.join(up, 'new'), 'user.containers.override_stat', 0);
    expect(typeof nx === 'number' ? nx : nx.toString()).toMatch(/^0:0:0640$/);
    expect(spawnSync('umount', [mnt]).status).toBe(0);
  });
});
