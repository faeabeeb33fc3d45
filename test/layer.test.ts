// Image-layer tars: `layerfs layer pack` of an upper written by kernel overlayfs (whiteouts,
// opaque and redirected dirs, hard links, binary xattrs), `layer unpack` back, and the union of
// the unpacked layer (kernel overlayfs for the overlay form, layerfs for the `.wh.` form) against
// the kernel's view of the original mount. GNU tar reads what pack writes.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { layerfs, mountOk, requireFuse, tempDir, unmountAll } from './helpers/mount';
import { view } from './helpers/overlay';
import { ensureUser, runAs } from './helpers/users';

const sh = (cmd: string, cwd: string): string => {
  const r = spawnSync('sh', ['-ec', cmd], { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr}`);
  return r.stdout;
};
// a file capability (cap_net_raw+ep), binary: the codec must carry raw bytes
const CAP = '0x0100000200200000000000000000000000000000';

/** The merged view without dir link counts: the kernel shows 1 for a merged dir with a redirect. */
function tree(root: string): ReturnType<typeof view> {
  const v = view(root);
  for (const r of Object.values(v)) if (r.type === 'd') delete r.nlink;
  return v;
}

describe('image-layer tars', () => {
  let base: string;
  let oracle: ReturnType<typeof view>;
  const d = (n: string): string => path.join(base, n);

  beforeAll(() => {
    requireFuse();
    base = tempDir('layer');
    for (const n of ['l1', 'l2', 'u', 'w', 'm']) fs.mkdirSync(d(n));
    sh(`mkdir -p l1/a/b l1/keep l1/mv/sub l1/opq l1/dev
        echo base > l1/a/b/f; echo k > l1/keep/k; echo s > l1/mv/sub/s; echo o > l1/opq/o
        ln -s /etc l1/link; echo hl > l1/h1; ln l1/h1 l1/h2; mkdir -p l2/a; echo top > l2/a/t`, base);
    sh(`mount -t overlay overlay -o lowerdir=l2:l1,upperdir=u,workdir=w,redirect_dir=on m`, base);
    try {
      sh(`cd m; rm a/b/f; echo new > keep/n; mv mv mv2; echo x >> mv2/sub/s; rm -rf opq; mkdir opq; echo again > opq/z
          setfattr -n user.foo -v bar keep/n; chown 5:6 keep/n; chmod 4755 keep/n; setfattr -n security.capability -v ${CAP} keep/k
          echo y > keep/l1; ln keep/l1 keep/l2; mknod keep/fifo p; ln -sf ../h1 keep/rel
          mkdir -p deep/$(printf 'n%.0s' $(seq 1 90))/$(printf 'm%.0s' $(seq 1 90)); echo long > deep/$(printf 'n%.0s' $(seq 1 90))/$(printf 'm%.0s' $(seq 1 90))/$(printf 'f%.0s' $(seq 1 120))`, base);
    } finally {
      sh('umount m', base);
    }
    sh('mount -t overlay overlay -o lowerdir=u:l2:l1,redirect_dir=on m', base);
    try {
      oracle = tree(d('m'));
    } finally {
      sh('umount m', base);
    }
  });

  afterAll(() => {
    unmountAll(base);
    fs.rmSync(base, { recursive: true, force: true });
  });

  test('pack needs the lowers for a redirected dir: one line, non-zero, no tar left', () => {
    const r = layerfs(['layer', 'pack', d('u'), '-f', d('no.tar')]);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/mv2: a redirected directory .* --lowerdir/)]);
    expect(fs.existsSync(d('no.tar'))).toBe(false);
  });

  test('pack writes the layer form GNU tar reads: .wh. whiteouts, opaque markers, links, xattrs', () => {
    const r = layerfs(['layer', 'pack', d('u'), '--lowerdir', `${d('l2')}:${d('l1')}`, '-f', d('up.tar')]);
    expect(r.stderr).toMatch(/entries/);
    expect(r.status).toBe(0);
    const list = sh('tar --xattrs --xattrs-include="*" -tvf up.tar', base);
    const names = sh('tar -tf up.tar', base).trim().split('\n');
    expect(names).toEqual(expect.arrayContaining(['a/b/.wh.f', '.wh.mv', 'mv2/.wh..wh..opq', 'opq/.wh..wh..opq', 'opq/z', 'mv2/sub/s']));
    expect(names.some((n) => n.startsWith('opq/o'))).toBe(false);
    expect(list).toMatch(/^h.* keep\/l2 link to keep\/l1$/m);           // hard link kept as a link
    // GNU tar unpacks it with the capability intact
    fs.mkdirSync(d('gnu'));
    sh('tar --xattrs --xattrs-include="*" -xpf up.tar -C gnu', base);
    expect(sh('getfattr -e hex -n security.capability gnu/keep/k', base)).toContain(CAP);
    expect(sh('getfattr -n user.foo gnu/keep/n', base)).toContain('"bar"');
  });

  test('unpack (overlay form) under kernel overlayfs shows what the original mount showed', () => {
    fs.mkdirSync(d('u3'));
    const r = layerfs(['layer', 'unpack', d('u3'), '-f', d('up.tar')]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(fs.lstatSync(d('u3/a/b/f')).isCharacterDevice()).toBe(true);
    sh('mount -t overlay overlay -o lowerdir=u3:l2:l1 m', base);
    try {
      expect(tree(d('m'))).toEqual(oracle);
    } finally {
      sh('umount m', base);
    }
  });

  test('unpack --oci keeps .wh. files, which layerfs mounts as a lower as they are', () => {
    fs.mkdirSync(d('oci'));
    const r = layerfs(['layer', 'unpack', '--oci', d('oci')], {});
    expect(r.status).not.toBe(0);   // no -f and stdin is not a tar
    const r2 = spawnSync('sh', ['-c', `node ${JSON.stringify(path.resolve(__dirname, '../dist/src/cli/layerfs.js'))} layer unpack --oci ${d('oci')} < ${d('up.tar')}`], { encoding: 'utf8' });
    expect(r2.stderr).toBe('');
    expect(r2.status).toBe(0);
    expect(fs.existsSync(d('oci/a/b/.wh.f'))).toBe(true);
    expect(fs.existsSync(d('oci/opq/.wh..wh..opq'))).toBe(true);
    mountOk(['-o', `lowerdir=${d('oci')}:${d('l2')}:${d('l1')}`, d('m')]);
    try {
      expect(tree(d('m'))).toEqual(oracle);
    } finally {
      layerfs(['umount', d('m')]);
    }
  });

  test('unpack refuses names that leave the target, through a symlink or with ..', () => {
    const victim = d('victim');
    fs.mkdirSync(victim);
    for (const [tag, script] of [
      ['link', `t=tarfile.open(sys.argv[1],'w'); i=tarfile.TarInfo('esc'); i.type=tarfile.SYMTYPE; i.linkname=sys.argv[2]; t.addfile(i)
i=tarfile.TarInfo('esc/pwned'); i.size=1; t.addfile(i, io.BytesIO(b'x')); t.close()`],
      ['dotdot', `t=tarfile.open(sys.argv[1],'w'); i=tarfile.TarInfo('a/../../pwned'); i.size=1; t.addfile(i, io.BytesIO(b'x')); t.close()`],
      ['hardlink', `t=tarfile.open(sys.argv[1],'w'); i=tarfile.TarInfo('esc'); i.type=tarfile.SYMTYPE; i.linkname=sys.argv[2]; t.addfile(i)
i=tarfile.TarInfo('h'); i.type=tarfile.LNKTYPE; i.linkname='esc/secret'; t.addfile(i); t.close()`],
    ]) {
      fs.writeFileSync(path.join(victim, 'secret'), 's');
      const tar = d(`evil-${tag}.tar`);
      sh(`python3 -c "import tarfile,io,sys
${script}" ${tar} ${victim}`, base);
      const out = d(`evil-${tag}`);
      fs.mkdirSync(out);
      const r = layerfs(['layer', 'unpack', out, '-f', tar]);
      expect(r.status, tag).toBe(1);
      expect(r.stderr.trim().split('\n'), tag).toHaveLength(1);
      expect(fs.readdirSync(victim), tag).toEqual(['secret']);
      expect(fs.existsSync(path.join(base, 'pwned')), tag).toBe(false);
    }
  });

  test('unpack into a dir that is not empty, a missing dir or from a file that is no tar: one line each', () => {
    for (const [args, re] of [
      [['layer', 'unpack', d('u'), '-f', d('up.tar')], /is not empty/],
      [['layer', 'unpack', d('nowhere'), '-f', d('up.tar')], /does not exist/],
      [['layer', 'unpack', d('empty-x'), '-f', d('l2/a/t')], /not a tar archive|truncated/],
      [['layer', 'pack', d('nowhere'), '-f', d('x.tar')], /upper dir .* does not exist/],
    ] as [string[], RegExp][]) {
      fs.mkdirSync(d('empty-x'), { recursive: true });
      const r = layerfs(args);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(re);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    }
  });

  test('as a user without privileges: whiteouts as .wh. files, user.overlay.opaque; layerfs shows the same tree', () => {
    const uid = ensureUser();
    const dir = d('asuser');
    fs.mkdirSync(dir);
    fs.chownSync(dir, uid, uid);
    fs.chmodSync(base, 0o755);
    fs.chmodSync(d('up.tar'), 0o644);
    const r = runAs(uid, [process.execPath, path.resolve(__dirname, '../dist/src/cli/layerfs.js'), 'layer', 'unpack', dir, '-f', d('up.tar')]);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/owners not kept/);
    // whichever form the kernel allowed, layerfs reads it
    const wh = fs.existsSync(path.join(dir, 'a/b/.wh.f')) || fs.lstatSync(path.join(dir, 'a/b/f')).isCharacterDevice();
    expect(wh).toBe(true);
    expect(sh(`getfattr --only-values -n user.overlay.opaque ${dir}/opq`, base)).toBe('y');
    mountOk(['-o', `lowerdir=${dir}:${d('l2')}:${d('l1')}`, d('m')]);
    try {
      const got = view(d('m'), { xattrs: false });
      expect(Object.keys(got)).toEqual(Object.keys(oracle));
      expect(got['opq/z'].hash).toBe(oracle['opq/z'].hash);
    } finally {
      layerfs(['umount', d('m')]);
    }
  });
});
