// Test helpers: temp trees, the CLI run as a child process, and mounts that are always
// unmounted again — even when a test fails.
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export const ROOT = path.resolve(__dirname, '../..');
export const CLI = path.join(ROOT, 'dist/src/cli/layerfs.js');
export const TMP_PREFIX = path.join(os.tmpdir(), 'layerfs-test-');

/** FUSE tests must fail, not skip, where FUSE is missing. */
export function requireFuse(): void {
  if (!fs.existsSync('/dev/fuse')) throw new Error('/dev/fuse is missing: these tests need FUSE');
  if (!fs.existsSync(CLI)) throw new Error(`${CLI} is missing: run 'make build' first`);
}

export function tempDir(tag = 'x'): string {
  return fs.mkdtempSync(`${TMP_PREFIX}${tag}-`);
}

export function layerfs(args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000, env: opts.env ?? process.env });
}

export function mountPointsUnder(prefix: string): string[] {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
    .map((l) => l.split(' ')[4])
    .filter((p): p is string => !!p && p.startsWith(prefix));
}

export function isMounted(p: string): boolean {
  return mountPointsUnder(p).includes(p);
}

/** Unmounts (lazily, deepest first) every mount below the test temp prefix, and detaches the
 * loop devices whose backing files live there. */
export function unmountAll(prefix = TMP_PREFIX): void {
  const loops = (): { name: string; file: string }[] => {
    const r = spawnSync('losetup', ['-J'], { encoding: 'utf8' });
    try {
      return (JSON.parse(r.stdout || '{"loopdevices":[]}').loopdevices as { name: string; 'back-file': string }[])
        .map((l) => ({ name: l.name, file: l['back-file'] ?? '' }));
    } catch {
      return [];
    }
  };
  // filesystems on our loop devices first (they may live anywhere), then our mounts
  const ours = loops().filter((l) => l.file.startsWith(prefix));
  const mounts = fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' '));
  for (const l of ours) for (const m of mounts) if (m[0] === l.name) spawnSync('umount', ['-l', m[1]]);
  for (const p of mountPointsUnder(prefix).sort().reverse()) {
    spawnSync('umount', ['-l', p]);
  }
  for (const l of ours) spawnSync('losetup', ['-d', l.name]);
}

export const HELPER = path.join(ROOT, 'native/build/Release/layerfs-helper');

/** The resident service's mounts (`layerfs ps --json`), as the calling user sees them. */
export function servicePs(env: NodeJS.ProcessEnv = process.env): { pid: number; rssKiB: number; mounts: { mountpoint: string; pid: number; openHandles: number; requests: number }[] } | null {
  const r = spawnSync(HELPER, ['ps', '--json'], { encoding: 'utf8', env });
  const out = r.stdout.trim();
  if (r.status !== 0 || !out.startsWith('{')) return null;
  return JSON.parse(out);
}

/** The pid of the process serving mountpoint: its own daemon (LAYERFS_SERVICE=off, thin,
 * passthrough mode) found by command line, or the resident service that lists it. */
export function daemonPid(mountpoint: string): number {
  const ps = servicePs();
  if (ps?.mounts.some((m) => m.mountpoint === mountpoint)) return ps.pid;
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (cmd.includes('--layerfs-daemon-child') && cmd.includes(mountpoint)) return Number(d);
    } catch {
      /* gone */
    }
  }
  throw new Error(`no daemon for ${mountpoint}`);
}

export function fdCount(pid: number): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

export function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

export function mountOk(args: string[]): void {
  const r = layerfs(['mount', ...args]);
  if (r.status !== 0) throw new Error(`mount failed (${r.status}): ${r.stderr}`);
}

export function waitFor(cond: () => boolean, ms = 5000): boolean {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cond()) return true;
    spawnSync('sleep', ['0.05']);
  }
  return cond();
}
