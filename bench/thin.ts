// The thin suite: fio on ext4 on a loop device on a thin volume, against the same on a plain
// sparse file on the same host filesystem, in both views users have: buffered I/O on the ext4
// (most programs) and O_DIRECT (databases); first writes into a fresh snapshot (breaking
// sharing) at queue depth 1 and 16; create_snap latency on a 100 GiB volume and at snapshot
// depth 1,000; scale: check and dump of a fully mapped 100 GiB volume, 1,000 volumes.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CLI, dropCaches, fio, runSuite, sh, umount, type SuiteResult, type Target, type Workload } from './lib';
import { check, dumpXml } from '../src/thin/report';
import { Pool } from '../src/thin/pool';

export const TARGETS_TEXT: Record<string, string> = {
  'buffered seq write 1M': '≥ 0.9× plain',
  'buffered seq read 1M cold': '≥ 0.9× plain',
  'buffered seq read 1M warm': '≥ 0.9× plain',
  'buffered seq read 1M, backing file cached': '',
  'seq write 1M': '≥ 0.7× plain',
  'seq read 1M': '≥ 0.7× plain',
  'rand write 4k': '≥ 0.8× plain',
  'first writes into a snapshot (rand 4k, qd 1)': '≥ 0.6× plain',
  'first writes into a snapshot (rand 4k)': '≥ 0.4× plain',
};

const VOL = 4 * 2 ** 30;

/** How long fn takes, in ms. */
function ms(fn: () => unknown): number {
  const t = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t) / 1e6;
}

/** Rows of the suite's table: the workloads by name (their unit from the name). */
export function rows(names: string[]): Workload[] {
  return names.map((name) => ({ name, unit: /IOPS|4k/.test(name) ? 'IOPS' : 'MiB/s', run: () => 0 }));
}

function layerfs(args: string[]): void {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`layerfs ${args.join(' ')}: ${r.stderr}`);
}

function loopFs(image: string, mnt: string): string {
  const loop = sh(`losetup -f --show ${image}`).trim();
  sh(`mkfs.ext4 -q -E nodiscard ${loop} && mkdir -p ${mnt} && mount ${loop} ${mnt}`);
  return loop;
}

export const XFS_TARGETS_TEXT: Record<string, string> = {
  'first writes into a snapshot (rand 4k, qd 1)': '≥ 0.9× plain',
  'first writes into a snapshot (rand 4k)': '≥ 0.9× plain',
};

/** The suite; onXfs: the pool's files and the plain sparse file on a loop-mounted xfs with
 * reflinks, and only the workloads that break sharing (and the write that lays the file down). */
export function thinSuite(base: string, rounds: number, onXfs = false): SuiteResult {
  fs.rmSync(base, { recursive: true, force: true });
  fs.mkdirSync(base, { recursive: true });
  let host = base;
  if (onXfs) {
    host = path.join(base, 'xfs');
    fs.mkdirSync(host);
    sh(`truncate -s 24G ${base}/xfs.img && mkfs.xfs -q -m reflink=1 ${base}/xfs.img && mount -o loop ${base}/xfs.img ${host}`);
  }
  try {
    return suite(base, host, rounds, onXfs);
  } finally {
    if (onXfs) umount(host);
  }
}

function suite(base: string, host: string, rounds: number, onXfs: boolean): SuiteResult {
  const pool = path.join(host, 'pool'), vols = path.join(base, 'vols');
  let plainLoop = '', thinLoop = '';
  const plain: Target = {
    name: 'plain sparse file', dir: path.join(base, 'plain-fs'),
    setup() {
      fs.writeFileSync(path.join(host, 'plain.img'), '');
      fs.truncateSync(path.join(host, 'plain.img'), VOL);
      plainLoop = loopFs(path.join(host, 'plain.img'), this.dir);
    },
    teardown() {
      umount(this.dir);
      spawnSync('losetup', ['-d', plainLoop]);
    },
  };
  const thin: Target = {
    name: 'thin volume', dir: path.join(base, 'thin-fs'),
    setup() {
      layerfs(['thin', 'create', pool, '--data-size', '16G']);
      layerfs(['thin', 'message', pool, 'create_thin 0']);
      fs.mkdirSync(vols, { recursive: true });
      layerfs(['thin', 'mount', pool, vols]);
      fs.truncateSync(path.join(vols, '0'), VOL);
      thinLoop = loopFs(path.join(vols, '0'), this.dir);
    },
    teardown() {
      umount(this.dir);
      spawnSync('losetup', ['-d', thinLoop]);
      umount(vols);
    },
  };
  const job = (t: Target, extra: string[], direct = 1): number[] => {
    const r = fio([`--name=j`, `--filename=${t.dir}/fio.dat`, '--size=1G', `--direct=${direct}`, '--ioengine=libaio', ...extra]);
    return [r.bw, r.iops];
  };
  let snapId = 1;
  // a fresh snapshot of the origin (the ext4 frozen meanwhile): its next writes break sharing
  const snapshot = (t: Target): void => {
    if (t !== thin) return;
    sh(`sync && fsfreeze -f ${t.dir}`);
    try {
      layerfs(['thin', 'message', pool, `create_snap ${snapId++} 0`]);
    } finally {
      sh(`fsfreeze -u ${t.dir}`);
    }
  };
  const workloads: Workload[] = [
    { name: 'buffered seq write 1M', unit: 'MiB/s', prepare: (t) => fs.rmSync(`${t.dir}/fio.dat`, { force: true }), run: (t) => job(t, ['--rw=write', '--bs=1M', '--end_fsync=1'], 0)[0] },
    { name: 'buffered seq read 1M cold', unit: 'MiB/s', prepare: () => dropCaches(), run: (t) => job(t, ['--rw=read', '--bs=1M'], 0)[0] },
    // warm: the file in ext4's page cache (fio would drop it first without --invalidate=0)
    { name: 'buffered seq read 1M warm', unit: 'MiB/s', prepare: (t) => { sh(`cat ${t.dir}/fio.dat > /dev/null`); }, run: (t) => job(t, ['--rw=read', '--bs=1M', '--invalidate=0'], 0)[0] },
    // ext4's cache dropped, the loop device's backing file cached (the plain file in the host's
    // page cache, the volume's blocks in the data file's): what the loop device reads costs
    { name: 'buffered seq read 1M, backing file cached', unit: 'MiB/s', prepare: (t) => { sh(`cat ${t.dir}/fio.dat > /dev/null`); }, run: (t) => job(t, ['--rw=read', '--bs=1M'], 0)[0] },
    { name: 'seq write 1M', unit: 'MiB/s', prepare: (t) => fs.rmSync(`${t.dir}/fio.dat`, { force: true }), run: (t) => job(t, ['--rw=write', '--bs=1M', '--iodepth=4', '--end_fsync=1'])[0] },
    { name: 'seq read 1M', unit: 'MiB/s', run: (t) => job(t, ['--rw=read', '--bs=1M', '--iodepth=4'])[0] },
    { name: 'rand write 4k', unit: 'IOPS', run: (t) => job(t, ['--rw=randwrite', '--bs=4k', '--iodepth=16', '--runtime=5', '--time_based'])[1] },
    {
      name: 'first writes into a snapshot (rand 4k, qd 1)', unit: 'IOPS', prepare: snapshot,
      run: (t) => job(t, ['--rw=randwrite', '--bs=4k', '--iodepth=1', '--runtime=5', '--time_based'])[1],
    },
    {
      name: 'first writes into a snapshot (rand 4k)', unit: 'IOPS', prepare: snapshot,
      run: (t) => job(t, ['--rw=randwrite', '--bs=4k', '--iodepth=16', '--runtime=5', '--time_based'])[1],
    },
  ];
  return onXfs
    ? runSuite('thin-xfs', [plain, thin], workloads.filter((w) => w.name === 'seq write 1M' || w.name in XFS_TARGETS_TEXT), rounds)
    : runSuite('thin', [plain, thin], workloads, rounds);
}

/** create_snap of a 100 GiB (fully mapped) volume, and of the end of a 1,000-deep chain, in ms. */
export function snapLatency(base: string): { full100G: number; depth1000: number } {
  const dir = path.join(base, 'snap-pool');
  fs.rmSync(dir, { recursive: true, force: true });
  const p = Pool.create(dir, 101 * 2 ** 30, {});
  try {
    p.message('create_thin 0');
    p.setSize(0, 100 * 2 ** 30);
    const blocks = (100 * 2 ** 30) / p.blockSize;
    for (let vb = 0; vb < blocks; vb++) p.restoreMapping(0, vb, vb);
    const time = (msg: string): number => ms(() => p.message(msg));
    const full100G = time('create_snap 1 0');
    for (let i = 2; i < 1001; i++) p.message(`create_snap ${i} ${i - 1}`);
    const depth1000 = time('create_snap 1001 1000');
    return { full100G, depth1000 };
  } finally {
    p.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export interface ThinScale { check100G: number; dump100G: number; dumpMiB: number; volumes: number; status1000: number }

/** Scale in the daemon's code, in process: 1,000 volumes and snapshots (check time); check and
 * dump of a fully mapped 100 GiB volume written in random order (s). (The daemon's RSS: thinMounts.) */
export function thinScale(base: string): ThinScale {
  const dir = path.join(base, 'scale-pool');
  fs.rmSync(dir, { recursive: true, force: true });
  const p = Pool.create(dir, 101 * 2 ** 30, {});
  const secs = (fn: () => unknown): number => ms(fn) / 1000;
  try {
    // 500 volumes of 1 GiB with 16 blocks each, and a snapshot of each
    let next = 0;
    for (let i = 1; i <= 500; i++) {
      p.message(`create_thin ${i}`);
      p.setSize(i, 2 ** 30);
      for (let k = 0; k < 16; k++) p.restoreMapping(i, k * 97, next++);
    }
    for (let i = 501; i <= 1000; i++) p.message(`create_snap ${i} ${i - 500}`);
    p.commit();
    const status1000 = secs(() => check(p));
    // a 100 GiB volume mapped block by block in a scattered order (what random writes leave)
    p.message('create_thin 0');
    p.setSize(0, 100 * 2 ** 30);
    const blocks = (100 * 2 ** 30) / p.blockSize;
    for (let vb = 0; vb < blocks; vb++) p.restoreMapping(0, vb, next + ((vb * 7919) % blocks));
    p.commit();
    let xml = '';
    const check100G = secs(() => check(p));
    const dump100G = secs(() => { xml = dumpXml(p); });
    return { check100G, dump100G, dumpMiB: xml.length / 2 ** 20, volumes: p.devices.size - 1, status1000 };
  } finally {
    p.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export interface ThinMounts { volumes: number; mountMs: number; statusMs: number; mountedExt4: number; ext4MountS: number; rssMiB: number }

/** A pool of 1,000 volumes mounted, 10 of them with ext4 on loop devices mounted at once: mount
 * and status times, the serving daemon's RSS (its pid from POOL/daemon.pid). */
export function thinMounts(base: string): ThinMounts {
  const dir = path.join(base, 'many-pool'), mnt = path.join(base, 'many-vols');
  fs.rmSync(dir, { recursive: true, force: true });
  umount(mnt);
  fs.mkdirSync(mnt, { recursive: true });
  const p = Pool.create(dir, 64 * 2 ** 30, {});
  for (let i = 0; i < 1000; i++) {
    p.message(`create_thin ${i}`);
    p.setSize(i, 2 ** 30);
  }
  p.checkpoint();
  p.close();
  const mountMs = ms(() => layerfs(['thin', 'mount', dir, mnt]));
  const loops: string[] = [], fsdirs: string[] = [];
  try {
    const statusMs = ms(() => layerfs(['thin', 'status', dir]));
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < 10; i++) {
      const loop = sh(`losetup -f --show ${mnt}/${i}`).trim();
      loops.push(loop);
      const d = path.join(base, `many-fs${i}`);
      sh(`mkfs.ext4 -q -E nodiscard,lazy_itable_init=1,lazy_journal_init=1 ${loop} && mkdir -p ${d} && mount ${loop} ${d}`);
      fsdirs.push(d);
      sh(`dd if=/dev/urandom of=${d}/f bs=1M count=16 conv=fsync status=none`);
    }
    const ext4MountS = Number(process.hrtime.bigint() - t0) / 1e9;
    const pid = Number(fs.readFileSync(path.join(dir, 'daemon.pid'), 'utf8').split(/\s/)[0]);
    const rss = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return { volumes: 1000, mountMs, statusMs, mountedExt4: fsdirs.length, ext4MountS, rssMiB: rss ? Number(rss[1]) / 1024 : NaN };
  } finally {
    for (const d of fsdirs) umount(d);
    for (const l of loops) spawnSync('losetup', ['-d', l]);
    umount(mnt);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
