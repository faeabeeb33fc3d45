// Creation modes under FUSE_DONT_MASK: the kernel sends the caller's mode unmasked, with the
// caller's umask beside it. As on the kernel's own filesystems (posix_acl_create), a parent
// with a default ACL lets the ACL decide and the umask is ignored; otherwise the umask applies.
// The daemon runs with umask 0, so the backing filesystem gets exactly this mode (and applies
// the default ACL the backing parent carries).
import { native } from '../sys/native';

export const DEFAULT_ACL_XATTR = 'system.posix_acl_default';

/** The default ACL of a directory (by fd, O_PATH is fine), or null. */
export function defaultAcl(dirfd: number): Buffer | null {
  const r = native.getxattr(`/proc/self/fd/${dirfd}`, DEFAULT_ACL_XATTR, 1);
  return typeof r === 'number' || r.length === 0 ? null : r;
}

/** The mode to create with in directory dirfd for a caller with this umask. */
export function creationMode(dirfd: number, mode: number, umask: number): number {
  if (!(mode & umask)) return mode;
  return defaultAcl(dirfd) ? mode : mode & ~umask;
}
