// Docker Engine (a private dockerd) with its fuse-overlayfs storage driver resolved to layerfs
// (the helper linked as `fuse-overlayfs` on dockerd's PATH), against a dockerd on the kernel's
// overlay2: import, load of a locally built image, run, build, commit, save — images compared as
// the trees their layers make.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Docker, busyboxTar, buildContext, imageTrees } from '../bench/engines';
import { requireFuse, tempDir } from './helpers/mount';

const IMG = 'bb:1';
const RUN = ['run', '--rm', '--network', 'none'];

describe('Docker Engine on layerfs (the fuse-overlayfs driver)', () => {
  let base: string, tar: string, ctx: string;
  let lfs: Docker, kern: Docker;
  const both = (): Docker[] => [lfs, kern];

  beforeAll(() => {
    requireFuse();
    if (!fs.existsSync('/usr/sbin/dockerd')) throw new Error('dockerd is missing: make test installs it (Debian package docker.io)');
    base = tempDir('docker');
    tar = busyboxTar(base);
    ctx = buildContext(base, IMG);
    fs.renameSync(path.join(ctx, 'Containerfile'), path.join(ctx, 'Dockerfile'));
    lfs = Docker.start(base, 'layerfs', 0);
    kern = Docker.start(base, 'kernel', 1);
    for (const d of both()) d.must(['import', tar, IMG]);
  }, 180_000);

  afterAll(() => {
    for (const d of [lfs, kern]) d?.stop();
    if (base) fs.rmSync(base, { recursive: true, force: true });
  });

  test('the daemon runs layerfs for its mounts', () => {
    expect(lfs.must(['info', '--format', '{{.Driver}}']).trim()).toBe('fuse-overlayfs');
    const id = lfs.must(['run', '-d', '--network', 'none', IMG, 'sleep', '600']).trim();
    try {
      const merged = lfs.must(['inspect', '--format', '{{.GraphDriver.Data.MergedDir}}', id]).trim();
      expect(fs.readFileSync('/proc/self/mountinfo', 'utf8')).toMatch(new RegExp(`${merged} .* - fuse\\.layerfs-overlay `));
      lfs.must(['exec', id, 'sh', '-c', 'echo hi > /hi']);
      const upper = lfs.must(['inspect', '--format', '{{.GraphDriver.Data.UpperDir}}', id]).trim();
      expect(fs.readFileSync(path.join(upper, 'hi'), 'utf8')).toBe('hi\n');
    } finally {
      lfs.run(['rm', '-f', id]);
    }
  });

  test('run: the base layer as the kernel shows it', () => {
    const cmd = [...RUN, IMG, 'sh', '-c', 'cat /base/keep; ls -ln /base /base/dir; stat -c "%a %u %g" /base/suid /tmp; echo x > /new; cat /new'];
    const out = lfs.must(cmd);
    expect(out).toContain('keep\n');
    expect(out).toBe(kern.must(cmd));
  });

  test('build (classic builder), commit and save: the images the kernel store makes', () => {
    const trees: Record<string, unknown>[][][] = [];
    for (const d of both()) {
      d.must(['build', '--no-cache', '-q', '--network', 'none', '-t', 'built:1', ctx]);
      const ctr = d.must(['run', '-d', '--network', 'none', 'built:1', 'sh', '-c',
        'rm -rf /base/moved /data2/hl && echo c > /c && mkdir /base/dir/n && chown 3:4 /c && touch /base/keep && sleep 600']).trim();
      spawnSync('sleep', ['1']);
      d.must(['commit', ctr, 'committed:1']);
      d.run(['rm', '-f', ctr]);
      const out: Record<string, unknown>[][] = [];
      for (const img of ['built:1', 'committed:1']) {
        const arch = path.join(d.dir, `${img.replace(':', '-')}.tar`);
        d.must(['save', '-o', arch, img]);
        out.push(imageTrees(arch));
      }
      trees.push(out);
    }
    const built = trees[0][0];
    const top = built[built.length - 1] as Record<string, { uid?: number; mode?: string }>;
    expect(top['base/dir/f3']).toBeTruthy();
    expect(top['base/dir/f1']).toBeUndefined();
    expect(top['etc/dd/old']).toBeUndefined();
    expect(top['base/moved/sub/x'].uid).toBe(7);
    const committed = trees[0][1];
    expect((committed[committed.length - 1] as Record<string, { uid?: number }>)['c'].uid).toBe(3);
    expect(trees[0]).toEqual(trees[1]);
  });

  test('load of an image saved by the other daemon, then run', () => {
    const arch = path.join(kern.dir, 'built-1.tar');
    lfs.must(['rmi', '-f', 'built:1', 'committed:1']);
    lfs.must(['load', '-q', '-i', arch]);
    expect(lfs.must([...RUN, 'built:1', 'cat', '/etc/dd/new', '/base/dir/f3', '/base/added'])).toBe('new\nagain\nadded by COPY\n');
    const again = path.join(lfs.dir, 'reloaded.tar');
    lfs.must(['save', '-o', again, 'built:1']);
    expect(imageTrees(again)).toEqual(imageTrees(arch));
  });
});
