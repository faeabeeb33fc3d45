// podman with layerfs-overlay as its mount_program, root and rootless (the test user through its
// subordinate ids), against the same steps on a store of the kernel's overlayfs (rootless: the
// kernel's overlayfs in podman's user namespace): run --rm (volatile), a detached container, a
// build that changes the base layer, commit, save/load in both archive formats, --userns=keep-id.
// Images are compared as the trees their layers make, layer by layer (image_trees.py).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Podman, busyboxTar, buildContext, containersConf, imageTrees, must, releaseUser, type Who } from '../bench/engines';
import { layerfs, mountOk, requireFuse, tempDir } from './helpers/mount';
import { view } from './helpers/overlay';

const IMG = 'localhost/bb:1';
const RUN = ['run', '--rm', '--pull=never', '--network', 'none'];

describe.each(['root', 'rootless'] as Who[])('podman %s on layerfs', (who) => {
  let base: string, ctx: string;
  let lfs: Podman, kern: Podman;
  const both = (): Podman[] => [lfs, kern];

  beforeAll(() => {
    requireFuse();
    if (spawnSync('podman', ['--version']).status !== 0) throw new Error('podman is not installed: make test installs it (Debian package podman)');
    base = tempDir(`podman-${who}`);
    fs.chmodSync(base, 0o755);
    const tar = busyboxTar(base);
    ctx = buildContext(base, IMG);
    spawnSync('chmod', ['-R', 'a+rX', ctx]);
    const conf = containersConf(base);
    lfs = new Podman(base, who, 'layerfs', who === 'root' ? 0 : 2, conf);
    kern = new Podman(base, who, 'kernel', who === 'root' ? 1 : 3, conf);
    for (const p of both()) p.must(['import', tar, IMG]);
  });

  afterAll(() => {
    for (const p of [lfs, kern]) p?.reset();
    if (who === 'rootless') releaseUser(Number(spawnSync('id', ['-u', 'layerfs-test'], { encoding: 'utf8' }).stdout));
    if (base) fs.rmSync(base, { recursive: true, force: true });
  });

  test('the store uses layerfs-overlay, the oracle the kernel', () => {
    expect(lfs.must(['info', '--format', '{{json .Store.GraphOptions}}'])).toMatch(/layerfs-overlay/);
    expect(kern.must(['info', '--format', '{{json .Store.GraphOptions}}'])).not.toMatch(/mount_program/);
  });

  test('run --rm (a volatile mount): the base layer as the kernel shows it', () => {
    const cmd = [...RUN, IMG, 'sh', '-c', 'cat /base/keep; ls -ln /base /base/dir; stat -c "%a %u %g" /base/suid /tmp; echo x > /new; cat /new'];
    const out = lfs.must(cmd);
    expect(out).toContain('keep\n');
    expect(out).toContain('4755 0 0');
    expect(out).toBe(kern.must(cmd));
  });

  test('a detached container: its rootfs is a fuse.layerfs-overlay mount, exec writes reach its upper', () => {
    const id = lfs.must(['run', '-d', '--pull=never', '--network', 'none', IMG, 'sleep', '600']).trim();
    try {
      const merged = lfs.must(['inspect', '--format', '{{.GraphDriver.Data.MergedDir}}', id]).trim();
      const upper = lfs.must(['inspect', '--format', '{{.GraphDriver.Data.UpperDir}}', id]).trim();
      // rootless, the mount lives in podman's own mount namespace
      const mounts = who === 'root' ? fs.readFileSync('/proc/self/mountinfo', 'utf8') : lfs.must(['unshare', 'cat', '/proc/self/mountinfo']);
      expect(mounts).toMatch(new RegExp(`${merged} .* - fuse\\.layerfs-overlay `));
      lfs.must(['exec', id, 'sh', '-c', 'echo hi > /hi; rm /base/keep']);
      const inUpper = who === 'root' ? fs.readFileSync(path.join(upper, 'hi'), 'utf8') : lfs.must(['unshare', 'cat', path.join(upper, 'hi')]);
      expect(inUpper).toBe('hi\n');
      expect(lfs.must(['exec', id, 'sh', '-c', 'ls /base'])).not.toMatch(/keep/);
    } finally {
      lfs.run(['rm', '-f', '-t', '0', id]);
    }
  });

  test('one page cache: a big image file read in three containers is cached once', () => {
    // as root FUSE passthrough hands reads to the backing file; rootless (uid 0 of podman's user
    // namespace: no passthrough there) big lower files are read direct (page_cache=auto), and
    // what busybox cat's sendfile leaves in a mount's cache goes at the last close
    const ctxBig = path.join(base, 'ctx-big');
    fs.mkdirSync(ctxBig, { recursive: true });
    fs.writeFileSync(path.join(ctxBig, 'big'), Buffer.alloc(80 << 20, 7));
    fs.writeFileSync(path.join(ctxBig, 'Containerfile'), `FROM ${IMG}\nCOPY big /big\n`);
    spawnSync('chmod', ['-R', 'a+rX', ctxBig]);
    lfs.must(['build', '-q', '--pull=never', '--network', 'none', '-t', 'localhost/big:1', ctxBig]);
    const ids = [0, 1, 2].map(() => lfs.must(['run', '-d', '--pull=never', '--network', 'none', 'localhost/big:1', 'sleep', '600']).trim());
    try {
      const cachedMiB = (): number => Number(/^Cached:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))![1]) / 1024;
      for (const id of ids) lfs.must(['exec', id, 'true']);   // podman's and runc's own pages in first
      // only the image file's pages out: the layer's copy of it, evicted with fadvise
      const lower = spawnSync('sh', ['-c', `ls ${lfs.dir}/root/overlay/*/diff/big`], { encoding: 'utf8' }).stdout.trim().split('\n');
      spawnSync('sync');
      must(spawnSync('/usr/bin/python3', ['-c', 'import os,sys\nfor p in sys.argv[1:]:\n  fd=os.open(p,os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED); os.close(fd)', ...lower], { encoding: 'utf8' }), 'fadvise');
      const before = cachedMiB();
      for (const id of ids) lfs.must(['exec', id, 'cat', '/big']);
      spawnSync('sleep', ['1']);   // the last release's invalidation is sent by the notify thread
      const grown = cachedMiB() - before;
      expect(grown).toBeGreaterThan(60);      // the lower file itself, once
      expect(grown).toBeLessThan(120);        // not once per container (240 MiB)
    } finally {
      lfs.run(['rm', '-f', '-t', '0', ...ids]);
    }
  });

  let built: Record<string, unknown>[];
  test('build (create, modify, delete from the base, rm -rf and mv dirs, chown, re-create): the image the kernel builds', () => {
    const trees: Record<string, unknown>[][] = [];
    for (const p of both()) {
      p.must(['build', '--no-cache', '-q', '--pull=never', '--network', 'none', '-t', 'localhost/built:1', ctx]);
      const oci = path.join(p.dir, 'built.oci.tar');
      p.must(['save', '--format', 'oci-archive', '-o', oci, 'localhost/built:1']);
      trees.push(imageTrees(oci));
    }
    built = trees[0];
    const top = built[built.length - 1] as Record<string, { type: string; uid?: number; mode?: string }>;
    // what the steps did, read from the layers themselves
    expect(top['base/dir/f3']).toBeTruthy();
    expect(top['base/dir/f1']).toBeUndefined();
    expect(top['base/dir/f2']).toBeUndefined();
    expect(top['base/mvme']).toBeUndefined();
    expect(top['base/moved/sub/x'].uid).toBe(7);
    expect(top['base/moved'].mode).toBe('0o700');
    expect(top['etc/dd/old']).toBeUndefined();        // fuse-overlayfs 1.10 brought this one back
    expect(top['etc/dd/new']).toBeTruthy();
    expect(top['etc/sibling']).toBeUndefined();
    expect(top['bin/vi']).toBeUndefined();
    expect(top['data2/sym']).toMatchObject({ type: 'l' });
    expect(top['base/suid'].mode).toBe('0o600');
    expect(trees[0]).toEqual(trees[1]);
  });

  test('commit of a changed container: the layer the kernel store commits', () => {
    const trees: Record<string, unknown>[][] = [];
    for (const p of both()) {
      const ctr = p.must(['run', '-d', '--pull=never', '--network', 'none', 'localhost/built:1', 'sh', '-c',
        'rm -rf /base/moved /data2/hl && echo c > /c && mkdir /base/dir/n && chown 3:4 /c && touch /base/keep && sleep 600']).trim();
      spawnSync('sleep', ['1']);
      p.must(['commit', '-q', ctr, 'localhost/committed:1']);
      p.run(['rm', '-f', '-t', '0', ctr]);
      const arch = path.join(p.dir, 'committed.docker.tar');
      p.must(['save', '--format', 'docker-archive', '-o', arch, 'localhost/committed:1']);
      trees.push(imageTrees(arch));
    }
    const top = trees[0][trees[0].length - 1] as Record<string, { uid?: number }>;
    expect(top['c'].uid).toBe(3);
    expect(top['base/moved']).toBeUndefined();
    expect(trees[0]).toEqual(trees[1]);
  });

  // Image-layer formats, with `podman export` of a container on the kernel's store as the oracle:
  // the image's layers taken from its archive and mounted by layerfs as lowers (overlay and aufs
  // mode), and a changed
  // container's upper turned into a layer by `layerfs layer pack` and mounted back.
  test('podman export is what layerfs shows of the image\'s layers as lowers, and of a packed container upper', () => {
    const work = path.join(base, `export-${who}`);
    fs.mkdirSync(work, { recursive: true });
    const tree = (root: string): ReturnType<typeof view> => {
      const v = view(root);
      for (const k of Object.keys(v)) {
        // what the engine itself puts into every container's rootfs; and link counts: an export
        // flattens them, an overlay shows a lower inode's count also where a name is whited out
        if (/^(run|dev|proc|sys|etc\/(hosts|hostname|resolv\.conf))(\/|$)/.test(k)) delete v[k];
        else delete v[k].nlink;
      }
      return v;
    };
    const exported = (p: Podman, ctr: string): ReturnType<typeof view> => {
      const tar = path.join(p.dir, `${ctr}.export.tar`);
      p.must(['export', '-o', tar, ctr]);
      const dir = path.join(work, `${p.store}-${ctr}`);
      fs.mkdirSync(dir);
      must(spawnSync('tar', ['--numeric-owner', '--xattrs', '--xattrs-include=*', '-xpf', tar, '-C', dir], { encoding: 'utf8' }), 'tar x');
      return tree(dir);
    };
    // the image's layers as the archive carries them (.wh. files), each extracted by GNU tar
    const arch = path.join(kern.dir, 'layers.docker.tar');
    kern.must(['save', '--format', 'docker-archive', '-o', arch, 'localhost/built:1']);
    const outer = path.join(work, 'archive');
    fs.mkdirSync(outer);
    must(spawnSync('tar', ['-xf', arch, '-C', outer], { encoding: 'utf8' }), 'tar x archive');
    const layers = (JSON.parse(fs.readFileSync(path.join(outer, 'manifest.json'), 'utf8'))[0].Layers as string[]).map((l, i) => {
      const d = path.join(work, `layer${i}`);
      fs.mkdirSync(d);
      must(spawnSync('tar', ['--numeric-owner', '--xattrs', '--xattrs-include=*', '-xpf', path.join(outer, l), '-C', d], { encoding: 'utf8' }), 'tar x layer');
      return d;
    });
    const mnt = path.join(work, 'mnt');
    fs.mkdirSync(mnt);
    kern.must(['create', '--name', 'plain', '--pull=never', '--network', 'none', 'localhost/built:1', 'true']);
    const want = exported(kern, 'plain');
    mountOk(['-o', `lowerdir=${[...layers].reverse().join(':')}`, mnt]);
    try {
      expect(tree(mnt)).toEqual(want);
    } finally {
      layerfs(['umount', mnt]);
    }
    // the same layers as aufs branches (Docker's aufs driver layout): read-only, and under a rw one
    const rw = path.join(work, 'aufs-rw');
    fs.mkdirSync(rw);
    for (const br of [[...layers].reverse().map((l) => `${l}=ro+wh`), [`${rw}=rw`, ...[...layers].reverse().map((l) => `${l}=ro+wh`)]]) {
      mountOk(['-t', 'aufs', '-o', `br=${br.join(':')}`, mnt]);
      try {
        expect(tree(mnt)).toEqual(want);
      } finally {
        layerfs(['umount', mnt]);
      }
    }
    // a changed container on the layerfs store: its upper packed (with its lowers for what it
    // renamed), unpacked again and stacked on the image's layers by the kernel's overlayfs
    if (who === 'root') {
      const change = 'rm -rf /base/moved /data2/hl && echo c > /c && mkdir -p /base/dir/n && chown 3:4 /c && mv /etc/dd /etc/dd2 && rm /bin/ls';
      for (const p of both()) {
        p.must(['run', '--name', 'changed', '--pull=never', '--network', 'none', 'localhost/built:1', 'sh', '-c', change]);
      }
      const upper = lfs.must(['inspect', '--format', '{{.GraphDriver.Data.UpperDir}}', 'changed']).trim();
      const lowers = lfs.must(['inspect', '--format', '{{.GraphDriver.Data.LowerDir}}', 'changed']).trim();
      const packed = path.join(work, 'changed.layer.tar');
      const pk = layerfs(['layer', 'pack', upper, '--lowerdir', lowers, '-f', packed]);
      expect(pk.status, pk.stderr).toBe(0);
      // kernel overlayfs reads only its own whiteouts: every layer unpacked in the overlay form
      const unpacked = [packed, ...(JSON.parse(fs.readFileSync(path.join(outer, 'manifest.json'), 'utf8'))[0].Layers as string[]).map((l) => path.join(outer, l)).reverse()]
        .map((t, i) => {
          const d = path.join(work, `overlay-form-${i}`);
          fs.mkdirSync(d);
          const u = layerfs(['layer', 'unpack', d, '-f', t]);
          expect(u.status, u.stderr).toBe(0);
          return d;
        });
      must(spawnSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${unpacked.join(':')}`, mnt], { encoding: 'utf8' }), 'mount overlay');
      try {
        expect(tree(mnt)).toEqual(exported(kern, 'changed'));
        expect(tree(mnt)).toEqual(exported(lfs, 'changed'));
      } finally {
        spawnSync('umount', [mnt]);
      }
      for (const p of both()) p.run(['rm', '-f', 'changed']);
    }
    kern.run(['rm', '-f', 'plain']);
  });

  test('image save and load (docker-archive and oci-archive) through the layerfs store round-trip', () => {
    for (const format of ['docker-archive', 'oci-archive']) {
      const arch = path.join(lfs.dir, `rt.${format}.tar`);
      lfs.must(['save', '--format', format, '-o', arch, 'localhost/built:1']);
      lfs.must(['rmi', '-f', 'localhost/built:1']);
      lfs.must(['load', '-q', '-i', arch]);
      const name = lfs.must(['images', '--format', '{{.Repository}}:{{.Tag}}']).split('\n').find((n) => n.includes('built'));
      expect(name, format).toBeTruthy();
      if (name !== 'localhost/built:1') lfs.must(['tag', name!, 'localhost/built:1']);
      expect(lfs.must([...RUN, 'localhost/built:1', 'cat', '/etc/dd/new', '/base/dir/f3'])).toBe('new\nagain\n');
      const again = path.join(lfs.dir, `rt2.${format}.tar`);
      lfs.must(['save', '--format', format, '-o', again, 'localhost/built:1']);
      expect(imageTrees(again), format).toEqual(built);
    }
  });

  if (who === 'rootless') test('--userns=keep-id (uidmapping with a leading colon and several triples)', () => {
    const cmd = ['run', '--rm', '--pull=never', '--network', 'none', '--userns=keep-id', IMG, 'sh', '-c',
      'id -u; touch /tmp/mine; stat -c "%u %g" /tmp/mine /base/keep /base/suid; echo x >> /base/keep; stat -c "%u %g %a" /base/keep'];
    const out = lfs.must(cmd);
    const id = (flag: string): string => spawnSync('id', [flag, 'layerfs-test'], { encoding: 'utf8' }).stdout.trim();
    expect(out.split('\n').slice(0, 3)).toEqual([id('-u'), `${id('-u')} ${id('-g')}`, '0 0']);   // the image's root files stay root's
    expect(out).toBe(kern.must(cmd));
  });
});
