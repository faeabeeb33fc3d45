// docker/setup.sh as its README tells a user to run it, with --prefix so the files land in a
// temp dir instead of /etc: then podman (root, and rootless as the test user, each reading the
// config files it wrote) and dockerd started through the dockerd-layerfs it wrote run their
// containers on layerfs.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Docker, TEST_USER, busyboxTar, must, prepareUser, releaseUser } from '../bench/engines';
import { HELPER, ROOT, requireFuse, tempDir } from './helpers/mount';

const SETUP = path.join(ROOT, 'docker/setup.sh');

describe('docker/setup.sh', () => {
  let base: string, prefix: string, tar: string;
  let ids: { uid: number; gid: number };
  const runroots: string[] = [];

  beforeAll(() => {
    requireFuse();
    base = tempDir('setup');
    fs.chmodSync(base, 0o755);
    prefix = path.join(base, 'prefix');
    tar = busyboxTar(base);
    ids = prepareUser();
    spawnSync('setfacl', ['-x', `u:${ids.uid}`, '/dev/fuse']);   // setup.sh is to give it
  });

  afterAll(() => {
    releaseUser(ids.uid);
    for (const r of runroots) fs.rmSync(r, { recursive: true, force: true });
    if (base) fs.rmSync(base, { recursive: true, force: true });
  });

  /** podman reading the config files below the prefix, with its store below base. */
  function podman(who: 'root' | 'rootless', args: string[]): string {
    const runroot = `/run/lfs-setup-${process.pid}-${who}`;
    if (!runroots.includes(runroot)) {
      runroots.push(runroot);
      fs.mkdirSync(runroot, { recursive: true, mode: 0o700 });
      if (who === 'rootless') fs.chownSync(runroot, ids.uid, ids.gid);
    }
    if (who === 'root') {
      // the file as written, but for its store paths (podman ignores the file's storage options
      // when --root is given, so the paths are changed in a copy instead)
      const conf = path.join(base, 'storage.conf');
      fs.writeFileSync(conf, fs.readFileSync(path.join(prefix, 'etc/containers/storage.conf'), 'utf8')
        .replace(/^runroot = .*$/m, `runroot = "${runroot}"`).replace(/^graphroot = .*$/m, `graphroot = "${base}/store"`));
      const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', CONTAINERS_STORAGE_CONF: conf,
        CONTAINERS_CONF: path.join(prefix, 'etc/containers/containers.conf'), LAYERFS_RUNTIME_DIR: path.join(base, 'svc') };
      fs.mkdirSync(env.LAYERFS_RUNTIME_DIR, { recursive: true, mode: 0o700 });
      return must(spawnSync('podman', args, { encoding: 'utf8', env, cwd: base }), `podman ${args[0]}`);
    }
    // rootless podman finds ~/.config/containers by HOME, as for a real user
    const home = path.join(prefix, 'home', TEST_USER);
    const env = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', HOME: home, XDG_RUNTIME_DIR: runroot };
    return must(spawnSync('setpriv', [`--reuid=${ids.uid}`, `--regid=${ids.gid}`, '--init-groups', 'podman', ...args], { encoding: 'utf8', env, cwd: home }), `podman ${args[0]} (rootless)`);
  }

  test('root and --docker: config files and program links, each naming this checkout\'s layerfs', () => {
    const r = spawnSync('bash', [SETUP, '--prefix', prefix, '--docker', '--no-install'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(fs.readlinkSync(path.join(prefix, 'usr/local/bin/layerfs-overlay'))).toBe(HELPER);
    expect(fs.readlinkSync(path.join(prefix, 'usr/local/lib/layerfs/bin/fuse-overlayfs'))).toBe(HELPER);
    expect(fs.readFileSync(path.join(prefix, 'etc/containers/storage.conf'), 'utf8')).toContain(`mount_program = "${prefix}/usr/local/bin/layerfs-overlay"`);
    expect(JSON.parse(fs.readFileSync(path.join(prefix, 'etc/docker/daemon.json'), 'utf8'))['storage-driver']).toBe('fuse-overlayfs');
    expect(fs.readFileSync(path.join(prefix, 'etc/systemd/system/docker.service.d/layerfs.conf'), 'utf8')).toContain(`PATH=${prefix}/usr/local/lib/layerfs/bin:`);
    // run again over a daemon.json with settings of its own: they stay, the old file is kept
    fs.writeFileSync(path.join(prefix, 'etc/docker/daemon.json'), '{"log-level": "warn"}\n');
    fs.rmSync(path.join(prefix, 'etc/docker/daemon.json.before-layerfs'), { force: true });
    expect(spawnSync('bash', [SETUP, '--prefix', prefix, '--docker', '--no-install']).status).toBe(0);
    expect(JSON.parse(fs.readFileSync(path.join(prefix, 'etc/docker/daemon.json'), 'utf8'))).toEqual({ 'log-level': 'warn', 'storage-driver': 'fuse-overlayfs' });
    expect(fs.readFileSync(path.join(prefix, 'etc/docker/daemon.json.before-layerfs'), 'utf8')).toBe('{"log-level": "warn"}\n');
  });

  test('podman as root with the files it wrote: the container\'s root is a layerfs mount', () => {
    podman('root', ['import', tar, 'localhost/bb:1']);
    const out = podman('root', ['run', '--rm', '--pull=never', '--network', 'none', 'localhost/bb:1', 'sh', '-c', 'grep " / / " /proc/1/mountinfo; cat /base/keep']);
    expect(out).toMatch(/ - fuse\.layerfs-overlay /);
    expect(out).toContain('keep\n');
    podman('root', ['system', 'reset', '--force']);
  });

  test('--user: that user\'s rootless podman runs on layerfs (subordinate ids, /dev/fuse access given)', () => {
    const r = spawnSync('bash', [SETUP, '--prefix', prefix, '--user', TEST_USER, '--no-install'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/gave layerfs-test read-write access to \/dev\/fuse/);
    const home = path.join(prefix, 'home', TEST_USER);
    expect(fs.statSync(path.join(home, '.config/containers/storage.conf')).uid).toBe(ids.uid);
    fs.chownSync(home, ids.uid, ids.gid);   // a real user's home is theirs
    fs.copyFileSync(tar, path.join(home, 'bb.tar'));
    podman('rootless', ['import', path.join(home, 'bb.tar'), 'localhost/bb:1']);
    const out = podman('rootless', ['run', '--rm', '--pull=never', '--network', 'none', 'localhost/bb:1', 'sh', '-c', 'grep " / / " /proc/1/mountinfo; cat /base/keep']);
    expect(out).toMatch(/ - fuse\.layerfs-overlay /);
    expect(out).toContain('keep\n');
    podman('rootless', ['system', 'reset', '--force']);
  });

  test('dockerd started by the dockerd-layerfs it wrote runs its containers on layerfs', () => {
    const d = Docker.start(base, 'fuse-overlayfs', 5, path.join(prefix, 'usr/local/sbin/dockerd-layerfs'));
    try {
      d.must(['import', tar, 'bb:1']);
      const out = d.must(['run', '--rm', '--network', 'none', 'bb:1', 'sh', '-c', 'grep " / / " /proc/1/mountinfo; cat /base/keep']);
      expect(out).toMatch(/ - fuse\.layerfs-overlay /);
      expect(out).toContain('keep\n');
    } finally {
      d.stop();
    }
  });

  test('bad arguments: one line, non-zero, nothing written', () => {
    const p2 = path.join(base, 'prefix2');
    for (const [args, re] of [
      [['--user', 'no-such-user-here'], /no such user: no-such-user-here/],
      [['--frobnicate'], /unknown argument: --frobnicate/],
      [['--user', TEST_USER, '--docker'], /--docker configures the system's dockerd/],
    ] as [string[], RegExp][]) {
      const r = spawnSync('bash', [SETUP, '--no-install', ...args, '--prefix', p2], { encoding: 'utf8' });
      expect(r.status).toBe(1);
      expect(r.stderr.trim().split('\n').pop()).toMatch(re);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(fs.existsSync(path.join(p2, 'etc')) || fs.existsSync(path.join(p2, 'usr'))).toBe(false);
    }
  });
});
