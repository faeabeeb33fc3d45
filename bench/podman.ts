// The podman suite: `podman run --rm` of a busybox image and a 3-step `podman build --no-cache`
// with each store's mount program — layerfs-overlay, fuse-overlayfs, none (kernel overlayfs) —
// as root and rootless (the layerfs-test user, its subordinate ids). Needs podman and runc
// (Debian packages podman, runc, uidmap, busybox-static); runc with cgroupfs, as crun fails here.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { HELPER, median } from './lib';

const RUNS = 15;
const BUILDS = 3;

export interface PodmanRow { who: 'root' | 'rootless'; store: string; runS: number; buildS: number }

function must(r: ReturnType<typeof spawnSync>, what: string): void {
  if (r.status !== 0) throw new Error(`${what}: ${String(r.stderr).trim().split('\n').pop()}`);
}

export function podmanSuite(base: string): PodmanRow[] {
  if (spawnSync('podman', ['--version']).status !== 0) throw new Error('podman is not installed (apt-get install podman runc uidmap busybox-static)');
  fs.rmSync(base, { recursive: true, force: true });
  const rootfs = path.join(base, 'rootfs');
  fs.mkdirSync(path.join(rootfs, 'bin'), { recursive: true });
  for (const d of ['etc', 'tmp', 'proc', 'sys', 'dev']) fs.mkdirSync(path.join(rootfs, d));
  fs.copyFileSync('/bin/busybox', path.join(rootfs, 'bin/busybox'));
  fs.chmodSync(path.join(rootfs, 'bin/busybox'), 0o755);
  for (const a of spawnSync('/bin/busybox', ['--list'], { encoding: 'utf8' }).stdout.trim().split('\n')) {
    if (a !== 'busybox') fs.symlinkSync('busybox', path.join(rootfs, 'bin', a));
  }
  must(spawnSync('tar', ['-C', rootfs, '-cf', path.join(base, 'busybox.tar'), '.']), 'tar');
  fs.mkdirSync(path.join(base, 'ctx'));
  fs.writeFileSync(path.join(base, 'ctx/Containerfile'), [
    'FROM localhost/bb:1',
    'RUN mkdir -p /data/d && echo one > /data/a && rm /bin/vi',
    'RUN echo two >> /data/a && mv /data /data2 && rm -rf /data2/d',
    'RUN chown 1:1 /data2/a && mkdir /data2/d',
  ].join('\n') + '\n');
  fs.writeFileSync(path.join(base, 'containers.conf'), [
    '[containers]', 'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]',
    '[engine]', 'runtime = "runc"', 'cgroup_manager = "cgroupfs"', 'events_logger = "file"',
  ].join('\n') + '\n');
  // podman runs its mount program by this name; the link reaches the helper as layerfs-overlay
  const prog = path.join(base, 'layerfs-overlay');
  fs.symlinkSync(HELPER, prog);
  const user = 'layerfs-test';
  if (spawnSync('id', ['-u', user]).status !== 0) spawnSync('useradd', ['-M', '-N', '-s', '/usr/sbin/nologin', user]);
  const uid = Number(spawnSync('id', ['-u', user], { encoding: 'utf8' }).stdout.trim());
  const gid = Number(spawnSync('id', ['-g', user], { encoding: 'utf8' }).stdout.trim());
  if (!fs.readFileSync('/etc/subuid', 'utf8').split('\n').some((l) => l.startsWith(`${user}:`))) {
    spawnSync('usermod', ['--add-subuids', '200000-265535', '--add-subgids', '200000-265535', user]);
  }
  spawnSync('setfacl', ['-m', `u:${uid}:rw`, '/dev/fuse']);
  fs.chmodSync(base, 0o755);
  const rows: PodmanRow[] = [];
  // every store is set up first, then the runs and builds go round the stores in turn, so a
  // slow spell of the machine falls on all of them alike
  interface Store { who: 'root' | 'rootless'; store: string; podman(args: string[]): ReturnType<typeof spawnSync>; runs: number[]; builds: number[] }
  const all: Store[] = [];
  try {
    for (const who of ['root', 'rootless'] as const) {
      const stores: [string, string | null][] = [['layerfs', prog], ['fuse-overlayfs', '/usr/bin/fuse-overlayfs']];
      if (who === 'root') stores.push(['kernel overlayfs', null]);
      for (const [si, [store, mp]] of stores.entries()) {
        const d = path.join(base, `${who}-${store.replace(/\W+/g, '-')}`);
        fs.mkdirSync(path.join(d, 'run'), { recursive: true, mode: 0o700 });
        // a short runroot: conmon's sockets below it must fit in sun_path (108 bytes), else podman
        // waits 20 s for an exit it never hears of
        const runroot = `/run/lfb-${who}-${si}`;
        fs.rmSync(runroot, { recursive: true, force: true });
        fs.mkdirSync(runroot, { mode: 0o700 });
        if (who === 'rootless') fs.chownSync(runroot, uid, gid);
        const conf = path.join(d, 'storage.conf');
        fs.writeFileSync(conf, ['[storage]', 'driver = "overlay"', `graphroot = "${d}/root"`, `runroot = "${runroot}"`,
          `rootless_storage_path = "${d}/root"`, '[storage.options.overlay]', ...(mp ? [`mount_program = "${mp}"`] : [])].join('\n') + '\n');
        if (who === 'rootless') spawnSync('chown', ['-R', `${uid}:${gid}`, d]);
        const env = { ...process.env, HOME: d, XDG_RUNTIME_DIR: runroot, CONTAINERS_CONF: path.join(base, 'containers.conf'), CONTAINERS_STORAGE_CONF: conf };
        const podman = (args: string[]): ReturnType<typeof spawnSync> => {
          const argv = who === 'root' ? ['podman', ...args] : ['setpriv', `--reuid=${uid}`, `--regid=${gid}`, '--init-groups', 'podman', ...args];
          return spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', env, cwd: d });
        };
        must(podman(['import', path.join(base, 'busybox.tar'), 'localhost/bb:1']), `podman import (${who}, ${store})`);
        all.push({ who, store, podman, runs: [], builds: [] });
      }
    }
    const timed = (s: Store, args: string[]): number => {
      const t = process.hrtime.bigint();
      must(s.podman(args), `podman ${args[0]} (${s.who}, ${s.store})`);
      return Number(process.hrtime.bigint() - t) / 1e9;
    };
    const run = ['run', '--rm', '--pull=never', '--network', 'none', 'localhost/bb:1', 'true'];
    for (const s of all) timed(s, run);   // warm-up (a cold service, podman's own caches)
    for (let i = 0; i < RUNS; i++) for (const s of all) s.runs.push(timed(s, run));
    for (let i = 0; i < BUILDS; i++) for (const s of all) s.builds.push(timed(s, ['build', '--no-cache', '-q', '--pull=never', '--network', 'none', '-t', `b${i}`, path.join(base, 'ctx')]));
    for (const s of all) {
      rows.push({ who: s.who, store: s.store, runS: median(s.runs), buildS: median(s.builds) });
      process.stderr.write(`  [podman] ${s.who} ${s.store}: run --rm ${median(s.runs).toFixed(3)} s, 3-step build ${median(s.builds).toFixed(3)} s\n`);
    }
  } finally {
    for (const s of all) s.podman(['system', 'reset', '--force']);
    spawnSync('setfacl', ['-x', `u:${uid}`, '/dev/fuse']);
  }
  return rows;
}

export function podmanTable(rows: PodmanRow[]): string {
  const ref = (who: string): PodmanRow | undefined => rows.find((r) => r.who === who && r.store === 'fuse-overlayfs');
  return ['| podman 4.3.1 | store | run --rm (s) | vs fuse-overlayfs | 3-step build (s) | vs fuse-overlayfs | target |', '|---|---|---|---|---|---|---|',
    ...rows.map((r) => {
      const f = ref(r.who)!;
      return `| ${r.who} | ${r.store} | ${r.runS.toFixed(3)} | ${(r.runS / f.runS).toFixed(2)}× | ${r.buildS.toFixed(2)} | ${(r.buildS / f.buildS).toFixed(2)}× | ${r.store === 'layerfs' ? '≤ 1.1×' : ''} |`;
    })].join('\n');
}
