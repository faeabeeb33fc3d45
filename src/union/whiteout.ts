// Whiteouts and opaque directories. Read every format: the kernel's char device 0/0 and xattr
// whiteouts (trusted./user.overlay.whiteout in a dir marked overlay.opaque="x"), aufs/OCI
// `.wh.<name>` files, opaque via trusted./user.overlay.opaque="y", user.fuseoverlayfs.opaque
// or a `.wh..wh..opq` file. Write the kernel's: char 0/0 and trusted.overlay.opaque=y as root;
// `.wh.` files and user.overlay.opaque where mknod is not permitted (as fuse-overlayfs does).
import { native } from '../sys/native';
import { FsError } from '../sys/errors';
import { AT_SYMLINK_NOFOLLOW, E, O_CREAT, O_DIRECTORY, O_NOFOLLOW, O_PATH, O_WRONLY, S_IFCHR, S_IFMT, S_IFREG } from '../sys/constants';
import { ST_MODE, ST_RDEV, ST_SIZE, newStat, type Stat } from '../sys/stat';

export const WH_PREFIX = '.wh.';
export const WH_OPQ = '.wh..wh..opq';
export const WH_META = '.wh..wh.';     // aufs metadata entries (.wh..wh.plnk, .wh..wh.aufs)

export type XattrNs = 'trusted' | 'user';

export interface WhiteoutFormat {
  /** Whiteouts as char 0/0 (kernel format); false: `.wh.` files. */
  charDevice: boolean;
  /** Namespace of the overlay xattrs written: trusted as root, user rootless. */
  ns: XattrNs;
}

export const OPAQUE_XATTRS = ['trusted.overlay.opaque', 'user.overlay.opaque', 'user.fuseoverlayfs.opaque'];
export const XWHITEOUT_XATTRS = ['trusted.overlay.whiteout', 'user.overlay.whiteout'];

/**
 * The entries one layer dir shows in a merge, top-down: names already in `seen` (from layers
 * above) are skipped, whiteouts (`.wh.NAME`, char 0/0, xattr whiteouts where xwh) hide names
 * of the layers below by joining `seen`, and d_type is resolved where readdir could not say.
 */
export function visibleEntries(fd: number, xwh: boolean, seen: Set<string>,
  emit: (name: string, type: number, ino: number) => void, showWh = false): void {
  const list = native.readdir(fd);
  if (typeof list === 'number') throw new FsError(-list);
  const { names, inos, types } = list;
  const st = newStat();
  for (let i = 0; i < names.length; i++) {
    const name = names[i];
    if (name === '.' || name === '..' || seen.has(name)) continue;
    if (name.startsWith(WH_PREFIX)) {
      if (name !== WH_OPQ && !name.startsWith(WH_META)) {
        seen.add(name.slice(WH_PREFIX.length));
        if (showWh) {
          seen.add(name);   // (aufs shwh) the whiteout itself is listed, as a file
          emit(name, types[i] || 8, inos[i]);
        }
      }
      continue;
    }
    seen.add(name);
    let type = types[i];
    if (type === 2 /* DT_CHR */ || type === 0 /* DT_UNKNOWN */ || (xwh && type === 8)) {
      if (native.fstatat(fd, name, AT_SYMLINK_NOFOLLOW, st) !== 0) continue;
      if (isCharWhiteout(st)) continue;
      if (xwh && isXattrWhiteout(fd, name, st)) continue;
      type = (st[ST_MODE] & S_IFMT) >> 12;
    }
    emit(name, type, inos[i]);
  }
}

export function isCharWhiteout(st: Stat): boolean {
  return (st[ST_MODE] & S_IFMT) === S_IFCHR && st[ST_RDEV] === 0;
}

/** Names that never show through the union (aufs shwh: only its own `.wh..wh.` entries). */
export function isHiddenName(name: string, showWh = false): boolean {
  return showWh ? name.startsWith(WH_META) : name.startsWith(WH_PREFIX);
}

const procPath = (dirfd: number, name: string): string => (name ? `/proc/self/fd/${dirfd}/${name}` : `/proc/self/fd/${dirfd}`);

function xattrValue(dirfd: number, name: string, attr: string): string | null {
  const r = native.getxattr(procPath(dirfd, name), attr, name ? 0 : 1);
  return typeof r === 'number' ? null : r.toString('utf8');
}

/** Opaque state of directory `name` in dirfd: 'y' opaque, 'x' holds xattr whiteouts, '' neither. */
export function dirOpacity(dirfd: number, name: string): { opaque: boolean; xwhiteouts: boolean } {
  let opaque = false, xwhiteouts = false;
  const list = native.listxattr(procPath(dirfd, name), name ? 0 : 1);
  if (typeof list !== 'number' && list.length) {
    const names = list.toString('utf8').split('\0');
    for (const a of OPAQUE_XATTRS) {
      if (!names.includes(a)) continue;
      const v = xattrValue(dirfd, name, a);
      if (v === 'y') opaque = true;
      else if (v === 'x') xwhiteouts = true;
    }
  }
  if (!opaque) {
    // a .wh..wh..opq file inside the directory
    const st = new Float64Array(16);
    if (native.fstatat(dirfd, name ? `${name}/${WH_OPQ}` : WH_OPQ, AT_SYMLINK_NOFOLLOW, st) === 0) opaque = true;
  }
  return { opaque, xwhiteouts };
}

/** Is the regular file `name` a kernel xattr whiteout? (only in dirs marked opaque="x") */
export function isXattrWhiteout(dirfd: number, name: string, st: Stat): boolean {
  if ((st[ST_MODE] & S_IFMT) !== S_IFREG || st[ST_SIZE] !== 0) return false;
  for (const a of XWHITEOUT_XATTRS) {
    if (typeof native.getxattr(procPath(dirfd, name), a, 0) !== 'number') return true;
  }
  return false;
}

export type Probe = 'none' | 'whiteout' | 'found';

/** Looks `name` up in one layer directory: found (st filled), whited out, or absent. */
export function probe(dirfd: number, name: string, st: Stat, xwhiteouts: boolean): Probe {
  const r = native.fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW, st);
  if (r === 0) {
    if (isCharWhiteout(st)) return 'whiteout';
    if (xwhiteouts && isXattrWhiteout(dirfd, name, st)) return 'whiteout';
    return 'found';
  }
  if (r === -E.ENAMETOOLONG) return 'none';             // no such name can exist here
  if (r !== -E.ENOENT && r !== -E.ENOTDIR) throw new FsError(-r);  // EACCES, EIO: not an absence
  const w = native.fstatat(dirfd, WH_PREFIX + name, AT_SYMLINK_NOFOLLOW, st);
  return w === 0 ? 'whiteout' : 'none';
}

export { procPath };

/**
 * How a layer format writes what the union hides — a policy of each mode. charDevice: whiteouts
 * are char 0/0 (made by mknod or RENAME_WHITEOUT); otherwise fileWhiteout writes `.wh.NAME`.
 */
export interface WhiteoutCodec {
  readonly charDevice: boolean;
  /** A `.wh.NAME` whiteout in dirfd. */
  fileWhiteout(dirfd: number, name: string): void;
  /** Dir dirfd/name hides what the layers below hold. */
  markOpaque(dirfd: number, name: string): void;
}

function emptyFile(dirfd: number, name: string): void {
  const fd = native.openat(dirfd, name, O_CREAT | O_WRONLY | O_NOFOLLOW, 0o600);
  if (fd < 0) throw new FsError(-fd);
  native.close(fd);
}

/** overlayfs: char 0/0 (or `.wh.` files where mknod is not allowed), opaque by xattr. */
export function overlayCodec(format: WhiteoutFormat): WhiteoutCodec {
  const opaque = `${format.ns}.overlay.opaque`;
  return {
    charDevice: format.charDevice,
    fileWhiteout: (dirfd, name) => emptyFile(dirfd, WH_PREFIX + name),
    markOpaque: (dirfd, name) => {
      const r = native.setxattr(procPath(dirfd, name), opaque, Buffer.from('y'), 0, 0);
      if (r < 0) throw new FsError(-r);
    },
  };
}

export const AUFS_BASE = '.wh..wh.aufs';

/**
 * aufs: whiteouts and `.wh..wh..opq` markers are hard links to the branch's `.wh..wh.aufs`
 * base (aufs's link_or_create_wh: a new empty file where a link is impossible, e.g. EMLINK).
 */
export function aufsCodec(branchFd: number): WhiteoutCodec {
  const linkOrCreate = (dirfd: number, name: string): void => {
    if (native.linkat(branchFd, AUFS_BASE, dirfd, name, 0) === 0) return;
    emptyFile(dirfd, name);
  };
  return {
    charDevice: false,
    fileWhiteout: (dirfd, name) => linkOrCreate(dirfd, WH_PREFIX + name),
    markOpaque: (dirfd, name) => {
      const fd = native.openat(dirfd, name, O_PATH | O_DIRECTORY | O_NOFOLLOW, 0);
      if (fd < 0) throw new FsError(-fd);
      try {
        linkOrCreate(fd, WH_OPQ);
      } finally {
        native.close(fd);
      }
    },
  };
}
