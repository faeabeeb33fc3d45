// The overlay suite: layerfs vs fuse-overlayfs vs kernel overlayfs (the reference) over the
// same three lower layers made from real trees: ~50k merged entries, a 1 GiB and a 256 MiB
// file, ~1,000 whiteouts, an opaque dir.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { mountLayerfs, runSuite, sh, umount, waitMounted, type SuiteResult, type Target, type Workload } from './lib';
import { workloads as baseWorkloads } from './passthrough';

export const TARGETS_TEXT: Record<string, string> = {
  'find cold': '≤ 4 (fuse-overlayfs 12.8)',
  'find warm': '≤ 1.5 (10.9)',
  'create 10k': '≤ 10 (38)',
  'unlink 10k': '≤ 8 (32)',
  'tar x 5k files': '≤ 8 (27)',
  'tar c tree': '≤ 3 (6.8)',
  'seq read 1 GiB': '≤ 1.3 (2.6)',
  'seq write 1 GiB': '≤ 2 (8.3)',
  'mmap read 1 GiB': '≤ 1.1',
  'rand read 4k O_DIRECT qd16': '≤ 2 (2.7)',
  'readdir big dir': '≤ 0.3 (0.21)',
};

export function buildOverlayFixture(base: string): string[] {
  const L = ['L1', 'L2', 'L3'].map((l) => path.join(base, l));
  const stamp = path.join(base, '.fixture-v1');
  if (fs.existsSync(stamp)) return L;
  fs.rmSync(base, { recursive: true, force: true });
  for (const l of L) fs.mkdirSync(l, { recursive: true });
  process.stderr.write(`building overlay fixture in ${base} ...\n`);
  const [l1, l2, l3] = L;
  // bottom: /usr/share (~50k entries); middle: part of /usr/lib and the 1 GiB file; top: changes
  sh(`cp -a /usr/share ${l3}/share`);
  sh(`mkdir -p ${l3}/bigdir && cd ${l3}/bigdir && seq 1 20000 | sed 's/^/entry-/' | xargs touch`);
  sh(`mkdir -p ${l2}/lib && cp -a /usr/lib/python3* ${l2}/lib/ 2>/dev/null || true`);
  sh(`dd if=/dev/urandom of=${l2}/big1g bs=1M count=1024 status=none`);
  sh(`dd if=/dev/urandom of=${l1}/big256m bs=1M count=256 status=none`);
  // ~1,000 whiteouts over bottom entries, an opaque dir
  const victims = sh(`cd ${l3} && find share/doc -type f | head -1000`).trim().split('\n');
  for (const v of victims) {
    fs.mkdirSync(path.join(l1, path.dirname(v)), { recursive: true });
    sh(`mknod "${path.join(l1, v)}" c 0 0`);
  }
  fs.mkdirSync(path.join(l1, 'share/man'), { recursive: true });
  sh(`setfattr -n trusted.overlay.opaque -v y ${l1}/share/man`);
  sh(`cp -a ${l3}/share/man/man1 ${l1}/share/man/ 2>/dev/null || true`);
  sh(`tar cf ${base}/small.tar -C ${l3}/share doc-base locale 2>/dev/null || tar cf ${base}/small.tar -C ${l3} share/zoneinfo`);
  fs.writeFileSync(stamp, '');
  return L;
}

type MountFn = (up: string, work: string, mnt: string) => void;

/** A target over base's fixture with its own upper, work dir and mountpoint. */
function overlayTarget(base: string, name: string, slug: string, mount: MountFn): Target {
  const [up, work, mnt] = ['up', 'work', 'mnt'].map((d) => path.join(base, `${slug}-${d}`));
  return {
    name, dir: mnt,
    setup() {
      umount(mnt);
      for (const d of [up, work]) {
        fs.rmSync(d, { recursive: true, force: true });
        fs.mkdirSync(d);
      }
      fs.mkdirSync(mnt, { recursive: true });
      mount(up, work, mnt);
    },
    teardown() { umount(mnt); },
  };
}

function layerfsTarget(base: string, lowerdir: string, name: string, slug: string, extra: string): Target {
  return overlayTarget(base, name, slug, (up, work, mnt) =>
    mountLayerfs(['-o', `lowerdir=${lowerdir},upperdir=${up},workdir=${work}${extra}`, mnt]));
}

function fuseOverlayfsTarget(base: string, lowerdir: string): Target {
  return overlayTarget(base, 'fuse-overlayfs', 'f', (up, work, mnt) => {
    const r = spawnSync('fuse-overlayfs', ['-o', `lowerdir=${lowerdir},upperdir=${up},workdir=${work}`, mnt], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`fuse-overlayfs: ${r.stderr}`);
    waitMounted(mnt);
  });
}

export function overlaySuite(base: string, rounds: number): SuiteResult {
  const lowerdir = buildOverlayFixture(base).join(':');
  const kernel = overlayTarget(base, 'kernel overlayfs', 'k', (up, work, mnt) =>
    sh(`mount -t overlay overlay -o lowerdir=${lowerdir},upperdir=${up},workdir=${work},redirect_dir=on ${mnt}`));
  const layerfs = layerfsTarget(base, lowerdir, 'layerfs', 'l', '');
  // the same without FUSE passthrough: what rootless mounts get
  const layerfsNoPt = layerfsTarget(base, lowerdir, 'layerfs passthrough=off', 'lp', ',passthrough=off');
  return runSuite('overlay', [kernel, layerfs, layerfsNoPt, fuseOverlayfsTarget(base, lowerdir)], overlayWorkloads(base), rounds);
}

const URING_PARAM = '/sys/module/fuse/parameters/enable_uring';
export const URING_WORKLOADS = ['round trip 4k O_DIRECT qd1', 'rand read 4k O_DIRECT qd16', 'find cold', 'stat all warm', 'tar x 5k files', 'create 10k'];

/** FUSE over io_uring vs the read loop, both without passthrough (so data requests reach the
 * daemon), and fuse-overlayfs. Turns the fuse module's enable_uring on for the run only. */
export function uringSuite(base: string, rounds: number): SuiteResult {
  const lowerdir = buildOverlayFixture(base).join(':');
  const old = fs.readFileSync(URING_PARAM, 'utf8').trim();
  fs.writeFileSync(URING_PARAM, 'Y');
  try {
    const targets = [
      layerfsTarget(base, lowerdir, 'layerfs read loop', 'lp', ',passthrough=off,uring=off'),
      layerfsTarget(base, lowerdir, 'layerfs io_uring', 'lu', ',passthrough=off,uring=on'),
      fuseOverlayfsTarget(base, lowerdir),
    ];
    return runSuite('uring', targets, overlayWorkloads(base).filter((w) => URING_WORKLOADS.includes(w.name)), rounds);
  } finally {
    fs.writeFileSync(URING_PARAM, old);
  }
}

export function overlayWorkloads(base: string): Workload[] {
  return baseWorkloads(base, { tarball: `${base}/small.tar`, bigFile: 'big1g', bigDir: 'bigdir', exclude: ['big1g', 'big256m'] });
}
