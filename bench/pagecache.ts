// One page cache for every mount: N mounts of one lower stack each read the same 256 MiB lower
// file; the page cache grows by what the kernel holds for all of them (the backing file's pages,
// plus each FUSE mount's own copy where the data goes through the daemon).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { dropCaches, mountLayerfs, sh, umount, waitMounted } from './lib';

const MOUNTS = 8;

function cachedKiB(): number {
  return Number(/^Cached:\s+(\d+)/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))![1]);
}

export interface PageCacheRow { name: string; growthMiB: number }

/** Page-cache growth (MiB) for MOUNTS mounts of each implementation reading one lower file. */
export function pageCacheSuite(base: string): PageCacheRow[] {
  const lower = path.join(base, 'lower');
  if (!fs.existsSync(path.join(lower, 'img'))) {
    fs.mkdirSync(lower, { recursive: true });
    sh(`dd if=/dev/urandom of=${lower}/img bs=1M count=256 status=none`);
  }
  const impls: [string, (up: string, work: string, mnt: string) => void][] = [
    ['kernel overlayfs', (u, w, m) => void sh(`mount -t overlay overlay -o lowerdir=${lower},upperdir=${u},workdir=${w} ${m}`)],
    ['layerfs', (u, w, m) => mountLayerfs(['-o', `lowerdir=${lower},upperdir=${u},workdir=${w}`, m])],
    ['layerfs passthrough=off', (u, w, m) => mountLayerfs(['-o', `lowerdir=${lower},upperdir=${u},workdir=${w},passthrough=off`, m])],
    ['fuse-overlayfs', (u, w, m) => {
      const r = spawnSync('fuse-overlayfs', ['-o', `lowerdir=${lower},upperdir=${u},workdir=${w}`, m], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`fuse-overlayfs: ${r.stderr}`);
      waitMounted(m);
    }],
  ];
  const rows: PageCacheRow[] = [];
  for (const [name, mount] of impls) {
    const mnts: string[] = [];
    try {
      for (let i = 0; i < MOUNTS; i++) {
        const d = path.join(base, `${name.replace(/\W+/g, '-')}-${i}`);
        fs.rmSync(d, { recursive: true, force: true });
        for (const x of ['u', 'w', 'm']) fs.mkdirSync(path.join(d, x), { recursive: true });
        mount(path.join(d, 'u'), path.join(d, 'w'), path.join(d, 'm'));
        mnts.push(path.join(d, 'm'));
      }
      dropCaches();
      const before = cachedKiB();
      for (const m of mnts) sh(`cat ${m}/img > /dev/null`);
      rows.push({ name, growthMiB: (cachedKiB() - before) / 1024 });
      process.stderr.write(`  [pagecache] ${name}: ${rows[rows.length - 1].growthMiB.toFixed(0)} MiB\n`);
    } finally {
      for (const m of mnts) umount(m);
    }
  }
  return rows;
}

export function pageCacheTable(rows: PageCacheRow[]): string {
  return [`| ${MOUNTS} mounts read one 256 MiB lower file | page-cache growth (MiB) | target |`, '|---|---|---|',
    ...rows.map((r) => `| ${r.name} | ${r.growthMiB.toFixed(0)} | ${r.name === 'layerfs' ? '≤ 300' : ''} |`)].join('\n');
}
