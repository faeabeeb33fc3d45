// Checks made before anything is mounted or touched; each failure is one clear line.
import * as fs from 'node:fs';
import * as path from 'node:path';

export class UsageError extends Error {}

export function requireDir(what: string, p: string): string {
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOTCONN') throw new UsageError(`${what} ${p}: transport endpoint is not connected (a dead mount: run 'layerfs umount ${p}')`);
    throw new UsageError(`${what} ${p} does not exist`);
  }
  if (!st.isDirectory()) throw new UsageError(`${what} ${p} is not a directory`);
  return fs.realpathSync(p);
}

/** This process's mount namespace: mountpoint -> source of the mount on top there. */
export function mountTable(): Map<string, string> {
  const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const out = new Map<string, string>();
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    const sep = f.indexOf('-');
    if (f.length > 4) out.set(unescape(f[4]), sep > 0 ? unescape(f[sep + 2] ?? '') : '');
  }
  return out;
}

export function mountPoints(): Set<string> {
  return new Set(mountTable().keys());
}

export function checkMountpoint(p: string): string {
  const mnt = requireDir('mountpoint', p);
  if (mountPoints().has(mnt)) throw new UsageError(`mountpoint ${mnt} is busy: something is already mounted there`);
  return mnt;
}

export function checkFuseDevice(): void {
  try {
    fs.accessSync('/dev/fuse', fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    throw new UsageError('/dev/fuse is missing or not accessible (load the fuse module: modprobe fuse)');
  }
}

/** True when a is b or lies below it. */
export function within(a: string, b: string): boolean {
  const rel = path.relative(b, a);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}
