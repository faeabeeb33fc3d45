// The dirs a mount names (layers, mountpoint), opened by whoever asked for the mount: this
// process for its own mount, or the mount helper in the caller's namespaces and with the
// caller's permissions for the resident service. Every check between them is made on the fds
// (device and inode, walking ".."), never on paths resolved again here.
import * as fs from 'node:fs';
import { native } from '../sys/native';
import { errnoName } from '../sys/errors';
import { AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_NOFOLLOW, E, O_DIRECTORY, O_PATH, O_RDONLY } from '../sys/constants';
import { ST_DEV, ST_INO, newStat } from '../sys/stat';
import { mountPoints, UsageError } from './validate';

export const O_CLOEXEC = 0o2000000;

/** A dir to open: 'r' read (a layer: the caller must be able to list it), 'p' path only. */
export interface Want { what: string; path: string; mode: 'r' | 'p' }
/** An opened dir: path as resolved by the opener (for messages and the mount table). */
export interface Dir { what: string; path: string; fd: number }

/** The one-line error for a dir that could not be opened. */
export function dirError(what: string, p: string, errno: number): UsageError {
  if (errno === E.ENOENT) return new UsageError(`${what} ${p} does not exist`);
  if (errno === E.ENOTDIR) return new UsageError(`${what} ${p} is not a directory`);
  if (errno === E.ENOTCONN) return new UsageError(`${what} ${p}: transport endpoint is not connected (a dead mount: run 'layerfs umount ${p}')`);
  if (errno === E.EACCES) return new UsageError(`${what} ${p}: permission denied`);
  return new UsageError(`${what} ${p}: ${errnoName(errno)}`);
}

export function flagsOf(mode: 'r' | 'p'): number {
  return (mode === 'p' ? O_PATH : O_RDONLY) | O_DIRECTORY | O_CLOEXEC;
}

/** Opens wants in this process; throws the first failure (closing what was opened). */
export function openLocal(wants: Want[]): Dir[] {
  const out: Dir[] = [];
  for (const w of wants) {
    const fd = native.openat(AT_FDCWD, w.path, flagsOf(w.mode), 0);   // a file: ENOTDIR
    if (fd < 0) {
      closeDirs(out);
      throw dirError(w.what, w.path, -fd);
    }
    out.push({ what: w.what, path: fs.readlinkSync(`/proc/self/fd/${fd}`), fd });
  }
  return out;
}

export function closeDirs(dirs: Dir[]): void {
  for (const d of dirs) native.close(d.fd);
}

function idOf(fd: number): [number, number] {
  const st = newStat();
  if (native.fstatat(fd, '', AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, st) < 0) return [-1, -1];
  return [st[ST_DEV], st[ST_INO]];
}

export function devOf(d: Dir): number {
  return idOf(d.fd)[0];
}

/** True when a is b or lies below it: walks a's ".." up to its root (mounts crossed as the
 * kernel's path walk crosses them), comparing device and inode with b. */
export function within(a: Dir, b: Dir): boolean {
  const [bdev, bino] = idOf(b.fd);
  let fd = native.openat(a.fd, '.', O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
  try {
    for (let depth = 0; fd >= 0 && depth < 4096; depth++) {
      const [dev, ino] = idOf(fd);
      if (dev === bdev && ino === bino) return true;
      const up = native.openat(fd, '..', O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
      if (up < 0) return false;
      const [udev, uino] = idOf(up);
      native.close(fd);
      fd = up;
      if (udev === dev && uino === ino) return false;   // the root: ".." is itself
    }
    return false;
  } finally {
    if (fd >= 0) native.close(fd);
  }
}

/** The mountpoint must not have something mounted on it already. */
export function checkMountpoint(d: Dir): void {
  if (mountPoints().has(d.path)) throw new UsageError(`mountpoint ${d.path} is busy: something is already mounted there`);
}
