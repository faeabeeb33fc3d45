// Access times under the mount's policy. FUSE never updates atime itself (its inodes are
// S_NOATIME): users see the backing object's atime. As kernel overlayfs, the daemon reads with
// O_NOATIME, and an access on a caller's behalf sets atime to now where this mount's policy
// (strictatime, relatime, noatime, nodiratime) says so — at a read-only open of a file (the
// kernel does it at the first read) and at a directory listing.
import { native } from '../sys/native';
import {
  AT_FDCWD, AT_SYMLINK_NOFOLLOW, E, MOUNT_ATTR_NOATIME, MOUNT_ATTR_NODIRATIME, MOUNT_ATTR_STRICTATIME, O_NOATIME,
  UTIME_NOW, UTIME_OMIT,
} from '../sys/constants';
import { ST_ATIME, ST_ATIME_NS, ST_CTIME, ST_CTIME_NS, ST_MTIME, ST_MTIME_NS, type Stat } from '../sys/stat';

export interface AtimePolicy {
  mode: 'relatime' | 'strictatime' | 'noatime';
  nodiratime: boolean;
}

/** The policy of a mount from its options; the last of noatime/relatime/strictatime wins. */
export function atimePolicy(options: Iterable<string>): AtimePolicy {
  const p: AtimePolicy = { mode: 'relatime', nodiratime: false };
  for (const k of options) {
    if (k === 'noatime') p.mode = 'noatime';
    else if (k === 'atime') p.mode = p.mode === 'noatime' ? 'relatime' : p.mode;
    else if (k === 'relatime' || k === 'nostrictatime') p.mode = 'relatime';
    else if (k === 'strictatime' || k === 'norelatime') p.mode = 'strictatime';
    else if (k === 'nodiratime') p.nodiratime = true;
    else if (k === 'diratime') p.nodiratime = false;
  }
  return p;
}

const DAY_S = 24 * 3600;
const ts = (st: Stat, s: number, ns: number): number => st[s] * 1e9 + st[ns];

/** Would an access now update the atime of an object with these attributes (the kernel's
 * atime_needs_update for this mount)? */
export function wantsAtime(p: AtimePolicy, st: Stat, isDir: boolean): boolean {
  if (p.mode === 'noatime' || (isDir && p.nodiratime)) return false;
  if (p.mode === 'strictatime') return true;
  const a = ts(st, ST_ATIME, ST_ATIME_NS);
  return a <= ts(st, ST_MTIME, ST_MTIME_NS) || a <= ts(st, ST_CTIME, ST_CTIME_NS) || Date.now() / 1000 - st[ST_ATIME] >= DAY_S;
}

/** openat with O_NOATIME, falling back where the daemon may not use it (EPERM: neither the
 * owner nor CAP_FOWNER). Returns an fd or -errno. */
export function openNoatime(dirfd: number, name: string, flags: number, mode: number): number {
  const fd = native.openat(dirfd, name, flags | O_NOATIME, mode);
  return fd === -E.EPERM ? native.openat(dirfd, name, flags, mode) : fd;
}

/** Sets the atime of dirfd/name ('' for dirfd itself) to now, leaving mtime alone. */
export function touchAtime(dirfd: number, name: string): void {
  if (name) native.utimensat(dirfd, name, 0, UTIME_NOW, 0, UTIME_OMIT, AT_SYMLINK_NOFOLLOW);
  else native.utimensat(AT_FDCWD, `/proc/self/fd/${dirfd}`, 0, UTIME_NOW, 0, UTIME_OMIT, 0);
}

/** The MOUNT_ATTR_* atime bits of a policy (relatime is 0), for a private clone of a mount. */
export function atimeAttrs(p: AtimePolicy): number {
  const mode = p.mode === 'noatime' ? MOUNT_ATTR_NOATIME : p.mode === 'strictatime' ? MOUNT_ATTR_STRICTATIME : 0;
  return mode | (p.nodiratime ? MOUNT_ATTR_NODIRATIME : 0);
}
