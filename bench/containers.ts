// The containers suite: podman (root and rootless) and Docker Engine (root) on stores of layerfs,
// fuse-overlayfs and the kernel's overlayfs, side by side in one run, the stores taken in turn:
// `run --rm` of a busybox and of a Debian minbase image, a 3-step build, and 20 containers
// started at once from one image each reading the same 100 MiB file — page cache growth and the
// RSS of the processes serving the mounts (layerfs's service, the fuse-overlayfs daemons).
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Docker, Podman, busyboxTar, containersConf, must, releaseUser, type Store, type Who } from './engines';
import { dropCaches, median } from './lib';

const RUNS = 10;
const BUILDS = 3;
const FAN = 20;

interface Engine {
  run(args: string[]): SpawnSyncReturns<string>;
  must(args: string[]): string;
  command(args: string[]): { argv: string[]; env: NodeJS.ProcessEnv; cwd: string };
  svcDir: string;
  dir: string;
}
interface Subject { engine: 'podman' | 'docker'; who: Who; store: Store; e: Engine; bb: number[]; deb: number[]; build: number[] }

export interface ContainerRow { engine: string; who: Who; store: Store; busyboxS: number; debianS: number; buildS: number }
export interface FanRow { engine: string; who: Who; store: Store; startS: number; pageCacheMiB: number; daemonRssMiB: number }

/** A Debian bookworm minbase rootfs tar, made once by debootstrap from the machine's mirror. */
function debianTar(base: string): string {
  const tar = path.join(base, 'debian-minbase.tar');
  if (fs.existsSync(tar)) return tar;
  const rootfs = path.join(base, 'debian-rootfs');
  fs.rmSync(rootfs, { recursive: true, force: true });
  const src = spawnSync('sh', ['-c', "awk '/^URIs:/ {print $2; exit} /^deb / {print $2; exit}' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -1"], { encoding: 'utf8' }).stdout.trim();
  process.stderr.write('  [containers] debootstrap --variant=minbase bookworm (once)\n');
  must(spawnSync('debootstrap', ['--variant=minbase', 'bookworm', rootfs, src || 'http://deb.debian.org/debian'], { encoding: 'utf8', timeout: 600_000 }), 'debootstrap');
  must(spawnSync('tar', ['--numeric-owner', '--xattrs', '-C', rootfs, '-cf', `${tar}.tmp`, '.'], { encoding: 'utf8' }), 'tar');
  fs.renameSync(`${tar}.tmp`, tar);
  fs.rmSync(rootfs, { recursive: true, force: true });
  fs.chmodSync(tar, 0o644);
  return tar;
}

function timed(e: Engine, args: string[], what: string): number {
  const t = process.hrtime.bigint();
  must(e.run(args), what);
  return Number(process.hrtime.bigint() - t) / 1e9;
}

function cachedMiB(): number {
  const m = /^Cached:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) / 1024 : 0;
}

function rssMiB(pids: number[]): number {
  let kib = 0;
  for (const pid of pids) {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    if (m) kib += Number(m[1]);
  }
  return kib / 1024;
}

function pidsOf(pattern: string, exact = false): number[] {
  return spawnSync('pgrep', [exact ? '-x' : '-f', pattern], { encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean).map(Number);
}

/** FAN containers started at once from `img`, each reading /big; measured once all have read it. */
async function fanOut(s: Subject, img: string): Promise<FanRow> {
  dropCaches();
  const before = cachedMiB();
  const t = process.hrtime.bigint();
  // all at once: each `run -d` its own process
  await Promise.all(Array.from({ length: FAN }, () => new Promise<void>((resolve, reject) => {
    const c = s.e.command(['run', '-d', '--pull=never', '--network', 'none', img, 'sh', '-c', 'cat /big > /dev/null; exec sleep 600']);
    const child = spawn(c.argv[0], c.argv.slice(1), { env: c.env, cwd: c.cwd, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${s.engine} run -d (${s.who}, ${s.store}): ${err.trim()}`))));
  })));
  const startS = Number(process.hrtime.bigint() - t) / 1e9;
  for (let i = 0; i < 600 && pidsOf('cat /big').length; i++) spawnSync('sleep', ['0.2']);
  spawnSync('sleep', ['1']);   // the releases' page invalidations are sent asynchronously
  const pageCacheMiB = cachedMiB() - before;
  const daemons = s.store === 'layerfs' ? pidsOf(`service --socket ${s.e.svcDir}/`) : s.store === 'fuse-overlayfs' ? pidsOf('fuse-overlayfs', true) : [];
  const daemonRssMiB = rssMiB(daemons);
  const ids = String(s.e.run(['ps', '-aq']).stdout).trim().split('\n').filter(Boolean);
  if (ids.length) s.e.run(['rm', '-f', ...(s.engine === 'podman' ? ['-t', '0'] : []), ...ids]);
  return { engine: s.engine, who: s.who, store: s.store, startS, pageCacheMiB, daemonRssMiB };
}

export async function containersSuite(base: string): Promise<{ rows: ContainerRow[]; fan: FanRow[] }> {
  if (spawnSync('podman', ['--version']).status !== 0) throw new Error('podman is not installed (make test installs the engines)');
  fs.mkdirSync(base, { recursive: true });
  fs.chmodSync(base, 0o755);
  const work = path.join(base, 'work');
  fs.rmSync(work, { recursive: true, force: true });
  fs.mkdirSync(work, { mode: 0o755 });
  const bb = busyboxTar(work);
  const deb = debianTar(base);
  const ctx = path.join(work, 'ctx');
  fs.mkdirSync(ctx);
  fs.writeFileSync(path.join(ctx, 'Dockerfile'), [
    'FROM localhost/bb:1',
    'RUN mkdir -p /data/d && echo one > /data/a && rm /bin/vi',
    'RUN echo two >> /data/a && mv /data /data2 && rm -rf /data2/d',
    'RUN chown 1:1 /data2/a && mkdir /data2/d',
  ].join('\n') + '\n');
  const bigCtx = path.join(work, 'big');
  fs.mkdirSync(bigCtx);
  fs.writeFileSync(path.join(bigCtx, 'big'), crypto.randomBytes(100 << 20));
  fs.writeFileSync(path.join(bigCtx, 'Dockerfile'), 'FROM localhost/bb:1\nCOPY big /big\n');
  spawnSync('chmod', ['-R', 'a+rX', work]);
  const conf = containersConf(work);
  const subjects: Subject[] = [];
  const dockers: Docker[] = [];
  let uid = -1;
  try {
    let i = 0;
    for (const who of ['root', 'rootless'] as Who[]) {
      for (const store of ['layerfs', 'fuse-overlayfs', 'kernel'] as Store[]) {
        const p = new Podman(work, who, store, 10 + i++, conf);
        if (who === 'rootless') uid = Number(spawnSync('id', ['-u', 'layerfs-test'], { encoding: 'utf8' }).stdout);
        subjects.push({ engine: 'podman', who, store, e: p, bb: [], deb: [], build: [] });
      }
    }
    for (const store of ['layerfs', 'fuse-overlayfs', 'kernel'] as Store[]) {
      const d = Docker.start(work, store, 20 + dockers.length);
      dockers.push(d);
      subjects.push({ engine: 'docker', who: 'root', store, e: d, bb: [], deb: [], build: [] });
    }
    for (const s of subjects) {
      s.e.must(['import', bb, 'localhost/bb:1']);
      s.e.must(['import', deb, 'localhost/debian:minbase']);
      s.e.must(['build', '-q', ...(s.engine === 'podman' ? ['--pull=never'] : []), '--network', 'none', '-t', 'localhost/big:1', bigCtx]);
    }
    const run = (img: string): string[] => ['run', '--rm', '--pull=never', '--network', 'none', img, 'true'];
    for (const s of subjects) timed(s.e, run('localhost/bb:1'), 'warm-up');
    for (let r = 0; r < RUNS; r++) {
      for (const s of subjects) {
        s.bb.push(timed(s.e, run('localhost/bb:1'), `${s.engine} run busybox (${s.who}, ${s.store})`));
        s.deb.push(timed(s.e, run('localhost/debian:minbase'), `${s.engine} run debian (${s.who}, ${s.store})`));
      }
    }
    for (let b = 0; b < BUILDS; b++) {
      for (const s of subjects) {
        s.build.push(timed(s.e, ['build', '--no-cache', '-q', ...(s.engine === 'podman' ? ['--pull=never'] : []), '--network', 'none', '-t', `b${b}`, ctx], `${s.engine} build (${s.who}, ${s.store})`));
      }
    }
    const rows = subjects.map((s) => ({ engine: s.engine, who: s.who, store: s.store, busyboxS: median(s.bb), debianS: median(s.deb), buildS: median(s.build) }));
    for (const r of rows) process.stderr.write(`  [containers] ${r.engine} ${r.who} ${r.store}: busybox ${r.busyboxS.toFixed(3)} s, debian ${r.debianS.toFixed(3)} s, build ${r.buildS.toFixed(2)} s\n`);
    const fan: FanRow[] = [];
    for (const s of subjects) {
      const f = await fanOut(s, 'localhost/big:1');
      fan.push(f);
      process.stderr.write(`  [containers] ${FAN} at once ${s.engine} ${s.who} ${s.store}: start ${f.startS.toFixed(1)} s, page cache +${f.pageCacheMiB.toFixed(0)} MiB, daemons ${f.daemonRssMiB.toFixed(0)} MiB\n`);
    }
    return { rows, fan };
  } finally {
    for (const s of subjects) if (s.engine === 'podman') (s.e as Podman).reset();
    for (const d of dockers) d.stop();
    if (uid >= 0) releaseUser(uid);
  }
}

const ratio = (a: number, b: number | undefined): string => (b ? `${(a / b).toFixed(2)}×` : '');

export function containersTable(r: { rows: ContainerRow[]; fan: FanRow[] }): string {
  const ref = (x: { engine: string; who: Who }, store: Store): ContainerRow | undefined => r.rows.find((y) => y.engine === x.engine && y.who === x.who && y.store === store);
  const fref = (x: FanRow, store: Store): FanRow | undefined => r.fan.find((y) => y.engine === x.engine && y.who === x.who && y.store === store);
  return [
    '| engine | who | store | run --rm busybox (s) | vs fuse-overlayfs | run --rm Debian (s) | vs fuse-overlayfs | 3-step build (s) | vs fuse-overlayfs | vs kernel |',
    '|---|---|---|---|---|---|---|---|---|---|',
    ...r.rows.map((x) => {
      const f = ref(x, 'fuse-overlayfs'), k = ref(x, 'kernel');
      return `| ${x.engine} | ${x.who} | ${x.store} | ${x.busyboxS.toFixed(3)} | ${ratio(x.busyboxS, f?.busyboxS)} | ${x.debianS.toFixed(3)} | ${ratio(x.debianS, f?.debianS)} | ${x.buildS.toFixed(2)} | ${ratio(x.buildS, f?.buildS)} | ${ratio(x.buildS, k?.buildS)} |`;
    }),
    '',
    `${FAN} containers started at once from one image, each reading the same 100 MiB file (page cache growth after dropping caches; RSS of the processes serving the mounts):`,
    '',
    '| engine | who | store | start all (s) | page cache (MiB) | vs fuse-overlayfs | mount daemons RSS (MiB) | vs fuse-overlayfs |',
    '|---|---|---|---|---|---|---|---|',
    ...r.fan.map((x) => {
      const f = fref(x, 'fuse-overlayfs');
      return `| ${x.engine} | ${x.who} | ${x.store} | ${x.startS.toFixed(1)} | ${x.pageCacheMiB.toFixed(0)} | ${ratio(x.pageCacheMiB, f?.pageCacheMiB)} | ${x.daemonRssMiB.toFixed(0)} | ${ratio(x.daemonRssMiB, f?.daemonRssMiB)} |`;
    }),
  ].join('\n');
}
