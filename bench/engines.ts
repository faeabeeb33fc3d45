// Real container engines on private stores, for the tests and the bench: podman (root, or
// rootless as the test user through its subordinate ids) and a private dockerd, each with one
// store — layerfs, fuse-overlayfs or the kernel's overlayfs. Nothing global is touched: every
// store, runroot, exec-root and socket lives below `base` or in a short /run/lfb-* dir, and the
// /dev/fuse ACL given to the test user is taken back by `releaseUser`.
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { HELPER, ROOT } from './lib';

export type Store = 'layerfs' | 'fuse-overlayfs' | 'kernel';
export type Who = 'root' | 'rootless';
export const TEST_USER = 'layerfs-test';

export function must(r: SpawnSyncReturns<string>, what: string): string {
  if (r.status !== 0) throw new Error(`${what} failed (${r.status}): ${(r.stderr || r.stdout || String(r.error)).trim().split('\n').slice(-3).join(' | ')}`);
  return r.stdout;
}

/** A busybox rootfs with a fixture tree the build steps change (also from this base layer). */
export function busyboxTar(base: string): string {
  const rootfs = path.join(base, 'rootfs');
  fs.rmSync(rootfs, { recursive: true, force: true });
  fs.mkdirSync(path.join(rootfs, 'bin'), { recursive: true });
  for (const d of ['etc/dd', 'tmp', 'proc', 'sys', 'dev', 'root', 'base/dir', 'base/mvme/sub', 'base/two']) fs.mkdirSync(path.join(rootfs, d), { recursive: true });
  fs.copyFileSync('/bin/busybox', path.join(rootfs, 'bin/busybox'));
  fs.chmodSync(path.join(rootfs, 'bin/busybox'), 0o755);
  for (const a of spawnSync('/bin/busybox', ['--list'], { encoding: 'utf8' }).stdout.trim().split('\n')) {
    if (a !== 'busybox') fs.symlinkSync('busybox', path.join(rootfs, 'bin', a));
  }
  const files: [string, string, number?][] = [
    ['etc/passwd', 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n'],
    ['etc/group', 'root:x:0:\nnogroup:x:65534:\n'],
    ['etc/dd/old', 'old\n'], ['etc/sibling', 'sib\n'], ['base/keep', 'keep\n'], ['base/dir/f1', 'one\n'],
    ['base/dir/f2', 'two\n'], ['base/mvme/sub/x', 'x\n'], ['base/two/old', 'old\n'], ['base/suid', '#!/bin/sh\n', 0o4755],
  ];
  for (const [p, c, m] of files) fs.writeFileSync(path.join(rootfs, p), c, { mode: m ?? 0o644 });
  fs.chmodSync(path.join(rootfs, 'base/suid'), 0o4755);
  fs.chmodSync(path.join(rootfs, 'tmp'), 0o1777);
  spawnSync('setfattr', ['-n', 'user.origin', '-v', 'base', path.join(rootfs, 'base/keep')]);
  const tar = path.join(base, 'busybox.tar');
  must(spawnSync('tar', ['--numeric-owner', '--owner=0', '--group=0', '--xattrs', '-C', rootfs, '-cf', tar, '.'], { encoding: 'utf8' }), 'tar');
  fs.chmodSync(tar, 0o644);
  return tar;
}

/**
 * A build whose steps create, modify and delete files (also of the base layer), remove and move
 * dirs, chown, re-create a deleted dir, hard-link and symlink; the last step is the case
 * fuse-overlayfs 1.10 gets wrong (a dir deleted and re-created in one step while a sibling from
 * a lower layer is deleted: the old file came back in the image).
 */
export function buildContext(base: string, from: string): string {
  const ctx = path.join(base, 'ctx');
  fs.rmSync(ctx, { recursive: true, force: true });
  fs.mkdirSync(ctx);
  fs.writeFileSync(path.join(ctx, 'added'), 'added by COPY\n');
  fs.writeFileSync(path.join(ctx, 'Containerfile'), [
    `FROM ${from}`,
    'RUN echo changed >> /base/keep && rm /base/dir/f1 /bin/vi && mkdir -p /data/d && echo one > /data/a',
    'RUN rm -rf /base/dir && mkdir /base/dir && echo again > /base/dir/f3 && mv /data /data2 && rm -rf /data2/d',
    'RUN mv /base/mvme /base/moved && chown -R 7:8 /base/moved && chmod 0700 /base/moved && ln /data2/a /data2/hl && ln -s a /data2/sym',
    'COPY added /base/added',
    'RUN rm -rf /etc/dd && mkdir /etc/dd && rm /etc/sibling && echo new > /etc/dd/new && chmod 0600 /base/suid',
  ].join('\n') + '\n');
  return ctx;
}

/** The test user with subordinate ids, and /dev/fuse open to it (an ACL, as a host admin would). */
export function prepareUser(): { uid: number; gid: number } {
  if (spawnSync('id', ['-u', TEST_USER]).status !== 0) spawnSync('useradd', ['-M', '-N', '-s', '/usr/sbin/nologin', TEST_USER]);
  const uid = Number(spawnSync('id', ['-u', TEST_USER], { encoding: 'utf8' }).stdout.trim());
  const gid = Number(spawnSync('id', ['-g', TEST_USER], { encoding: 'utf8' }).stdout.trim());
  for (const f of ['/etc/subuid', '/etc/subgid']) {
    if (!fs.readFileSync(f, 'utf8').split('\n').some((l) => l.startsWith(`${TEST_USER}:`))) {
      must(spawnSync('usermod', ['--add-subuids', '200000-265535', '--add-subgids', '200000-265535', TEST_USER], { encoding: 'utf8' }), 'usermod');
    }
  }
  must(spawnSync('setfacl', ['-m', `u:${uid}:rw`, '/dev/fuse'], { encoding: 'utf8' }), 'setfacl /dev/fuse');
  return { uid, gid };
}

export function releaseUser(uid: number): void {
  // the rootless pause process and any service it started end with the user's session
  spawnSync('pkill', ['-KILL', '-u', String(uid)]);
  spawnSync('setfacl', ['-x', `u:${uid}`, '/dev/fuse']);
}

export function containersConf(base: string): string {
  const p = path.join(base, 'containers.conf');
  fs.writeFileSync(p, [
    '[containers]', 'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]',
    '[engine]', 'runtime = "runc"', 'cgroup_manager = "cgroupfs"', 'events_logger = "file"',
  ].join('\n') + '\n');
  fs.chmodSync(p, 0o644);
  return p;
}

/** A podman store of its own: graphroot below base, a short runroot, its own layerfs service dir. */
export class Podman {
  readonly dir: string;
  /** LAYERFS_RUNTIME_DIR of its mounts: the service serving them listens there. */
  readonly svcDir: string;
  private readonly env: NodeJS.ProcessEnv;
  private readonly ids: { uid: number; gid: number } | null;

  constructor(base: string, readonly who: Who, readonly store: Store, index: number, containersConf: string) {
    this.ids = who === 'rootless' ? prepareUser() : null;
    this.dir = path.join(base, `${who}-${store}`);
    fs.rmSync(this.dir, { recursive: true, force: true });
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o755 });
    // conmon's sockets below the runroot must fit in sun_path (108 bytes), else podman waits 20 s
    const runroot = `/run/lfb-${process.pid}-${index}`;
    fs.rmSync(runroot, { recursive: true, force: true });
    fs.mkdirSync(runroot, { mode: 0o700 });
    const svc = path.join(this.dir, 'svc');
    fs.mkdirSync(svc, { mode: 0o700 });
    this.svcDir = svc;
    let prog: string | null = null;
    if (store === 'layerfs') {
      prog = path.join(this.dir, 'layerfs-overlay');   // podman runs the program by this name
      fs.symlinkSync(HELPER, prog);
    } else if (store === 'fuse-overlayfs') {
      prog = '/usr/bin/fuse-overlayfs';
    }
    const conf = path.join(this.dir, 'storage.conf');
    fs.writeFileSync(conf, ['[storage]', 'driver = "overlay"', `graphroot = "${this.dir}/root"`, `runroot = "${runroot}"`,
      `rootless_storage_path = "${this.dir}/root"`, '[storage.options.overlay]', ...(prog ? [`mount_program = "${prog}"`] : [])].join('\n') + '\n');
    if (this.ids) spawnSync('chown', ['-R', `${this.ids.uid}:${this.ids.gid}`, this.dir, runroot]);
    this.env = {
      PATH: '/usr/sbin:/usr/bin:/sbin:/bin', HOME: this.dir, XDG_RUNTIME_DIR: runroot, CONTAINERS_CONF: containersConf,
      CONTAINERS_STORAGE_CONF: conf, LAYERFS_RUNTIME_DIR: svc, TMPDIR: path.join(this.dir, 'tmp'),
    };
    fs.mkdirSync(path.join(this.dir, 'tmp'), { mode: 0o755 });
    if (this.ids) spawnSync('chown', [`${this.ids.uid}:${this.ids.gid}`, path.join(this.dir, 'tmp')]);
  }

  /** The command line, environment and cwd of `podman ARGS` (to spawn it without waiting). */
  command(args: string[]): { argv: string[]; env: NodeJS.ProcessEnv; cwd: string } {
    const argv = this.ids ? ['setpriv', `--reuid=${this.ids.uid}`, `--regid=${this.ids.gid}`, '--init-groups', 'podman', ...args] : ['podman', ...args];
    return { argv, env: this.env, cwd: this.dir };
  }

  run(args: string[], input?: string): SpawnSyncReturns<string> {
    const c = this.command(args);
    return spawnSync(c.argv[0], c.argv.slice(1), { encoding: 'utf8', env: c.env, cwd: c.cwd, input, timeout: 180_000, maxBuffer: 256 << 20 });
  }

  must(args: string[]): string {
    return must(this.run(args), `podman ${args.slice(0, 2).join(' ')} (${this.who}, ${this.store})`);
  }

  /** Removes everything the store holds (containers stopped, mounts gone). */
  reset(): void {
    this.run(['rm', '-af', '-t', '0']);
    this.run(['system', 'reset', '--force']);
    fs.rmSync(this.env.XDG_RUNTIME_DIR!, { recursive: true, force: true });
    spawnSync('pkill', ['-f', `service --socket ${this.svcDir}/`]);
  }
}

/** A private dockerd (and the containerd it starts) with one storage driver. */
export class Docker {
  readonly dir: string;
  readonly svcDir: string;
  readonly sock: string;
  private readonly pidfile: string;
  private readonly env: NodeJS.ProcessEnv;

  private constructor(base: string, readonly store: Store, index: number) {
    this.dir = path.join(base, `docker-${store}`);
    fs.rmSync(this.dir, { recursive: true, force: true });
    fs.mkdirSync(this.dir, { recursive: true });
    this.sock = path.join(this.dir, 'docker.sock');
    this.pidfile = path.join(this.dir, 'docker.pid');
    const bin = path.join(this.dir, 'bin');
    fs.mkdirSync(bin);
    // dockerd's fuse-overlayfs driver runs the program of that name from its PATH
    if (store === 'layerfs') fs.symlinkSync(HELPER, path.join(bin, 'fuse-overlayfs'));
    const svc = path.join(this.dir, 'svc');
    fs.mkdirSync(svc, { mode: 0o700 });
    this.svcDir = svc;
    this.env = { PATH: `${bin}:/usr/sbin:/usr/bin:/sbin:/bin`, LAYERFS_RUNTIME_DIR: svc, DOCKER_HOST: `unix://${this.sock}`, DOCKER_BUILDKIT: '0', HOME: this.dir };
    fs.writeFileSync(path.join(this.dir, 'daemon.json'), JSON.stringify({ 'deprecated-key-path': path.join(this.dir, 'key.json') }));
    const execRoot = `/run/lfd-${process.pid}-${index}`;
    fs.rmSync(execRoot, { recursive: true, force: true });
    this.execRoot = execRoot;
  }

  private readonly execRoot: string;

  /** dockerd: another program to start it by (docker/dockerd-layerfs). */
  static start(base: string, store: Store, index: number, dockerd = '/usr/sbin/dockerd'): Docker {
    const d = new Docker(base, store, index);
    const log = fs.openSync(path.join(d.dir, 'dockerd.log'), 'a');
    const child = spawn(dockerd, [
      '--config-file', path.join(d.dir, 'daemon.json'), '--data-root', path.join(d.dir, 'data'), '--exec-root', d.execRoot,
      '--pidfile', d.pidfile, '-H', `unix://${d.sock}`, '--storage-driver', store === 'kernel' ? 'overlay2' : 'fuse-overlayfs',
      '--bridge=none', '--iptables=false', '--ip-masq=false', '--ip6tables=false', '--default-runtime', 'runc',
      '--exec-opt', 'native.cgroupdriver=cgroupfs', '--default-ulimit', 'nofile=20000:20000',
    ], { env: d.env, stdio: ['ignore', log, log], detached: true });
    child.unref();
    fs.closeSync(log);
    const end = Date.now() + 60_000;
    while (Date.now() < end) {
      if (d.run(['version']).status === 0) return d;
      if (child.exitCode !== null) break;
      spawnSync('sleep', ['0.2']);
    }
    const tail = fs.readFileSync(path.join(d.dir, 'dockerd.log'), 'utf8').trim().split('\n').slice(-3).join(' | ');
    d.stop();
    throw new Error(`dockerd (${store}) did not start: ${tail}`);
  }

  command(args: string[]): { argv: string[]; env: NodeJS.ProcessEnv; cwd: string } {
    return { argv: ['/usr/bin/docker', ...args], env: this.env, cwd: this.dir };
  }

  run(args: string[]): SpawnSyncReturns<string> {
    return spawnSync('/usr/bin/docker', args, { encoding: 'utf8', env: this.env, cwd: this.dir, timeout: 180_000, maxBuffer: 256 << 20 });
  }

  must(args: string[]): string {
    return must(this.run(args), `docker ${args.slice(0, 2).join(' ')} (${this.store})`);
  }

  /** Stops dockerd (which stops its containerd), then whatever is left of either. */
  stop(): void {
    this.run(['rm', '-f', ...this.run(['ps', '-aq']).stdout.trim().split('\n').filter(Boolean)]);
    let pid = 0;
    try { pid = Number(fs.readFileSync(this.pidfile, 'utf8')); } catch { /* never started */ }
    if (pid > 0) {
      try { process.kill(pid, 'SIGTERM'); } catch { /* gone */ }
      for (let i = 0; i < 150 && fs.existsSync(`/proc/${pid}`); i++) spawnSync('sleep', ['0.1']);
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
    spawnSync('pkill', ['-KILL', '-f', `containerd.*${this.execRoot}`]);
    spawnSync('pkill', ['-f', `service --socket ${this.svcDir}/`]);
    for (const m of fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1]).filter((p) => p && (p.startsWith(this.dir) || p.startsWith(this.execRoot))).reverse()) {
      spawnSync('umount', ['-l', m]);
    }
    fs.rmSync(this.execRoot, { recursive: true, force: true });
  }
}

/** The image an archive holds, one merged tree per layer (test/helpers/image_trees.py). */
export function imageTrees(archive: string): Record<string, unknown>[] {
  const script = path.join(ROOT, 'test/helpers/image_trees.py');
  return JSON.parse(must(spawnSync('/usr/bin/python3', [script, archive], { encoding: 'utf8', maxBuffer: 256 << 20 }), 'image_trees.py'));
}
