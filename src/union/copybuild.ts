// Copy-up's building: an object of a lower layer made again in the work dir
// (data, owner, mode, xattrs, origin, times), synced unless volatile, then renamed into place:
// a crash leaves the old view or the new one, never a half-written file in the upper.
import * as fs from 'node:fs';
import { native } from '../sys/native';
import { FsError, check } from '../sys/errors';
import {
  AT_EMPTY_PATH, AT_REMOVEDIR, AT_SYMLINK_NOFOLLOW, E, O_CREAT, O_EXCL, O_NOFOLLOW, O_RDONLY, O_WRONLY, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG,
  SEEK_DATA, SEEK_HOLE,
} from '../sys/constants';
import {
  ST_ATIME, ST_ATIME_NS, ST_GID, ST_MODE, ST_MTIME, ST_MTIME_NS, ST_RDEV, ST_SIZE, ST_UID, newStat, type Stat,
} from '../sys/stat';
import { procPath } from './whiteout';
import { isPrivateXattr } from './xattrs';
import { openNoatime } from '../fuse/atime';

const CHUNK = 8 << 20;

/** Copies the bytes of src into dst, keeping holes: FICLONE, else copy_file_range, else read/write. */
export function copyData(src: number, dst: number, size: number): void {
  if (size === 0) return;
  if (native.ficlone(dst, src) === 0) return;
  let off = 0;
  while (off < size) {
    let data = native.lseek(src, off, SEEK_DATA);
    if (data === -E.ENXIO) break;            // only a hole is left
    if (data < 0) data = off;                // no SEEK_DATA support: copy everything
    let hole = native.lseek(src, data, SEEK_HOLE);
    if (hole < 0) hole = size;
    for (let pos = data; pos < hole;) {
      const want = Math.min(CHUNK, hole - pos);
      let n = native.copyFileRange(src, pos, dst, pos, want);
      if (n === -E.EXDEV || n === -E.EOPNOTSUPP || n === -E.ENOSYS || n === -E.EINVAL) n = copyLoop(src, dst, pos, want);
      if (n < 0) throw new FsError(-n);
      if (n === 0) break;                    // source shrank under us
      pos += n;
    }
    off = hole;
  }
  check(native.ftruncate(dst, size));        // a trailing hole
}

function copyLoop(src: number, dst: number, pos: number, len: number): number {
  const buf = Buffer.allocUnsafe(Math.min(len, 1 << 20));
  let done = 0;
  while (done < len) {
    const n = fs.readSync(src, buf, 0, Math.min(buf.length, len - done), pos + done);
    if (n === 0) break;
    fs.writeSync(dst, buf, 0, n, pos + done);
    done += n;
  }
  return done;
}

/** Copies every xattr but the union's private ones; security.capability and ACLs included. */
export function copyXattrs(fromPath: string, toPath: string): void {
  const list = native.listxattr(fromPath, 0);
  if (typeof list === 'number') return;
  for (const name of list.toString('utf8').split('\0')) {
    if (!name || isPrivateXattr(name)) continue;
    const v = native.getxattr(fromPath, name, 0);
    if (typeof v === 'number') continue;
    const r = native.setxattr(toPath, name, v, 0, 0);
    if (r < 0 && r !== -E.EOPNOTSUPP && r !== -E.EPERM) throw new FsError(-r);
  }
}

export interface CopySource {
  dirfd: number;     // directory of the lower object
  name: string;
  st: Stat;          // its stat
}

export interface CopyTarget {
  workFd: number;
  tmp: string;       // name to build under the work dir
  sync: boolean;
  originXattr: string;
  originIno: number;
  skipData: boolean; // the caller truncates to 0 right after (open with O_TRUNC)
}

/** Builds the copy of src under the work dir; the caller renames it into place. */
export function buildCopy(src: CopySource, t: CopyTarget): void {
  const { st } = src;
  const type = st[ST_MODE] & S_IFMT;
  const perm = st[ST_MODE] & 0o7777;
  const at = t.tmp;
  try {
    if (type === S_IFREG) {
      const out = check(native.openat(t.workFd, at, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW, 0o600));
      try {
        if (!t.skipData && st[ST_SIZE] > 0) {
          const inp = check(openNoatime(src.dirfd, src.name, O_RDONLY | O_NOFOLLOW, 0));  // copy-up never moves atime
          try {
            copyData(inp, out, st[ST_SIZE]);
          } finally {
            native.close(inp);
          }
        }
        if (t.sync) check(native.fsync(out, 0));
      } finally {
        native.close(out);
      }
    } else if (type === S_IFDIR) {
      check(native.mkdirat(t.workFd, at, 0o700));
    } else if (type === S_IFLNK) {
      const target = native.readlinkat(src.dirfd, src.name);
      if (typeof target === 'number') throw new FsError(-target);
      check(native.symlinkat(target, t.workFd, at));
    } else {
      check(native.mknodat(t.workFd, at, type | 0o600, st[ST_RDEV]));
    }
    // owner before mode: chown clears set-id bits
    check(native.fchownat(t.workFd, at, st[ST_UID], st[ST_GID], AT_SYMLINK_NOFOLLOW));
    if (type !== S_IFLNK) check(native.fchmodat(t.workFd, at, perm, AT_SYMLINK_NOFOLLOW));
    copyXattrs(procPath(src.dirfd, src.name), procPath(t.workFd, at));
    if (t.originXattr) {
      native.setxattr(procPath(t.workFd, at), t.originXattr, Buffer.from(String(t.originIno)), 0, 0);
    }
    check(native.utimensat(t.workFd, at, st[ST_ATIME], st[ST_ATIME_NS], st[ST_MTIME], st[ST_MTIME_NS], AT_SYMLINK_NOFOLLOW));
  } catch (e) {
    native.unlinkat(t.workFd, at, type === S_IFDIR ? AT_REMOVEDIR : 0);
    throw e;
  }
}

/** Keeps a directory's times across a change made in it (copy-up is not a visible change). */
export function keepTimes<T>(dirfd: number, fn: () => T): T {
  const st = newStat();
  const ok = native.fstatat(dirfd, '', AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, st) === 0;
  const r = fn();
  // through the fd's own /proc link: it names the directory itself, nothing inside a layer
  if (ok) native.utimensat(-100, procPath(dirfd, ''), st[ST_ATIME], st[ST_ATIME_NS], st[ST_MTIME], st[ST_MTIME_NS], 0);
  return r;
}
