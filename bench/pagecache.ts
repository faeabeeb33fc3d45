// One page cache for every mount: N mounts of one lower stack each read the same 256 MiB lower
// file; the page cache grows by what the kernel holds for all of them (the backing file's pages,
// plus each FUSE mount's own copy where the data goes through the daemon).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { HELPER, dropCaches, mountLayerfs, sh, umount, waitMounted } from './lib';

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
  // rootless: a user's mounts (no passthrough: the kernel allows it to CAP_SYS_ADMIN only)
  const user = benchUser();
  const asUser = (cmd: string[]): void => {
    const r = spawnSync('setpriv', [`--reuid=${user}`, `--regid=${user}`, '--clear-groups', ...cmd], { encoding: 'utf8', env: { ...process.env, LAYERFS_RUNTIME_DIR: userRun } });
    if (r.status !== 0) throw new Error(`${cmd.join(' ')}: ${r.stderr}`);
  };
  const userRun = path.join(base, 'run-user');
  fs.rmSync(userRun, { recursive: true, force: true });
  fs.mkdirSync(userRun, { mode: 0o700 });
  fs.chownSync(userRun, user, user);
  fs.chmodSync(base, 0o755);
  impls.push(
    ['layerfs rootless', (u, w, m) => asUser([HELPER, 'mount', '-o', `lowerdir=${lower},upperdir=${u},workdir=${w}`, m])],
    ['layerfs rootless page_cache=private', (u, w, m) => asUser([HELPER, 'mount', '-o', `lowerdir=${lower},upperdir=${u},workdir=${w},page_cache=private`, m])],
    ['fuse-overlayfs rootless', (u, w, m) => { asUser(['fuse-overlayfs', '-o', `lowerdir=${lower},upperdir=${u},workdir=${w}`, m]); waitMounted(m); }],
  );
  spawnSync('setfacl', ['-m', `u:${user}:rw`, '/dev/fuse']);
  const rows: PageCacheRow[] = [];
  for (const [name, mount] of impls) {
    const mnts: string[] = [];
    try {
      for (let i = 0; i < MOUNTS; i++) {
        const d = path.join(base, `${name.replace(/\W+/g, '-')}-${i}`);
        fs.rmSync(d, { recursive: true, force: true });
        for (const x of ['u', 'w', 'm']) fs.mkdirSync(path.join(d, x), { recursive: true });
        if (name.includes('rootless')) for (const x of ['', 'u', 'w', 'm']) fs.chownSync(path.join(d, x), user, user);
        mount(path.join(d, 'u'), path.join(d, 'w'), path.join(d, 'm'));
        mnts.push(path.join(d, 'm'));
      }
      dropCaches();
      const before = cachedKiB();
      for (const m of mnts) {
        if (name.includes('rootless')) asUser(['sh', '-c', `cat ${m}/img > /dev/null`]);
        else sh(`cat ${m}/img > /dev/null`);
      }
      rows.push({ name, growthMiB: (cachedKiB() - before) / 1024 });
      process.stderr.write(`  [pagecache] ${name}: ${rows[rows.length - 1].growthMiB.toFixed(0)} MiB\n`);
    } finally {
      for (const m of mnts) umount(m);
    }
  }
  spawnSync('setfacl', ['-x', `u:${user}`, '/dev/fuse']);
  return rows;
}

/** The unprivileged user the rootless rows run as (made once, no home). */
function benchUser(): number {
  const name = 'layerfs-test';
  if (spawnSync('id', ['-u', name]).status !== 0) spawnSync('useradd', ['-M', '-N', '-s', '/usr/sbin/nologin', name]);
  return Number(spawnSync('id', ['-u', name], { encoding: 'utf8' }).stdout.trim());
}

export function pageCacheTable(rows: PageCacheRow[]): string {
  return [`| ${MOUNTS} mounts read one 256 MiB lower file | page-cache growth (MiB) | target |`, '|---|---|---|',
    ...rows.map((r) => `| ${r.name} | ${r.growthMiB.toFixed(0)} | ${r.name === 'layerfs' || r.name === 'layerfs rootless' ? '≤ 300' : ''} |`)].join('\n');
}
