// What a test changed, as `docker diff` shows it: the harness's upper dir walked against BASE.
// A: added (BASE has no such path), C: changed (BASE has it: written, chmod'ed, or a dir with
// changes below), D: deleted (a whiteout, or a BASE entry below a dir made opaque). Sizes are the
// upper's. Both trees are walked by fd without following a symlink (openat2 BENEATH|NO_SYMLINKS).
import { native } from '../sys/native';
import { FsError } from '../sys/errors';
import { AT_FDCWD, AT_SYMLINK_NOFOLLOW, O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW, O_PATH, O_RDONLY, RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS,
  S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../sys/constants';
import { ST_MODE, ST_SIZE, newStat, type Stat } from '../sys/stat';
import { WH_META, WH_OPQ, WH_PREFIX, dirOpacity, isCharWhiteout, isXattrWhiteout } from '../union/whiteout';

export type Kind = 'A' | 'C' | 'D';
export interface Change { kind: Kind; path: string; type: 'file' | 'dir' | 'symlink' | 'other'; size: number }

const typeName = (st: Stat): Change['type'] => {
  const t = st[ST_MODE] & S_IFMT;
  return t === S_IFREG ? 'file' : t === S_IFDIR ? 'dir' : t === S_IFLNK ? 'symlink' : 'other';
};

function names(fd: number): string[] {
  const l = native.readdir(fd);
  if (typeof l === 'number') throw new FsError(-l);
  return l.names.filter((n) => n !== '.' && n !== '..').sort();
}

/** BASE's entry at rel (lstat), or null; never through a symlink of BASE. */
function baseStat(baseFd: number, rel: string, st: Stat): boolean {
  const i = rel.lastIndexOf('/');
  const dir = i < 0 ? '' : rel.slice(0, i), name = i < 0 ? rel : rel.slice(i + 1);
  const fd = dir ? native.openat2(baseFd, dir, O_PATH | O_DIRECTORY | O_CLOEXEC, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) : baseFd;
  if (fd < 0) return false;
  try {
    return native.fstatat(fd, name, AT_SYMLINK_NOFOLLOW, st) === 0;
  } finally {
    if (fd !== baseFd) native.close(fd);
  }
}

/** Every BASE path below rel (a dir that an opaque upper dir or a whiteout hides), as D. */
function baseBelow(baseFd: number, rel: string, skip: Set<string>, out: Change[]): void {
  const fd = native.openat2(baseFd, rel, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS);
  if (fd < 0) return;
  const st = newStat();
  try {
    for (const n of names(fd)) {
      if (skip.has(n) || native.fstatat(fd, n, AT_SYMLINK_NOFOLLOW, st) !== 0) continue;
      out.push({ kind: 'D', path: `${rel}/${n}`, type: typeName(st), size: 0 });
    }
  } finally {
    native.close(fd);
  }
}

/** The changes an upper dir holds against BASE, in path order. */
export function diffUpper(upperDir: string, baseDir: string): Change[] {
  const out: Change[] = [];
  const upFd = native.openat(AT_FDCWD, upperDir, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (upFd < 0) throw new FsError(-upFd);
  const baseFd = native.openat(AT_FDCWD, baseDir, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
  if (baseFd < 0) {
    native.close(upFd);
    throw new FsError(-baseFd);
  }
  const st = newStat(), bst = newStat();
  const walk = (fd: number, rel: string, xwh: boolean): void => {
    for (const n of names(fd)) {
      if (n.startsWith(WH_META) || n === WH_OPQ) continue;
      const path = rel ? `${rel}/${n}` : n;
      if (n.startsWith(WH_PREFIX)) {
        const gone = path.slice(0, path.length - n.length) + n.slice(WH_PREFIX.length);
        if (baseStat(baseFd, gone, bst)) out.push({ kind: 'D', path: gone, type: typeName(bst), size: 0 });
        continue;
      }
      if (native.fstatat(fd, n, AT_SYMLINK_NOFOLLOW, st) !== 0) continue;
      if (isCharWhiteout(st) || (xwh && isXattrWhiteout(fd, n, st))) {
        if (baseStat(baseFd, path, bst)) out.push({ kind: 'D', path, type: typeName(bst), size: 0 });
        continue;
      }
      const inBase = baseStat(baseFd, path, bst);
      const isDir = (st[ST_MODE] & S_IFMT) === S_IFDIR;
      const baseDirToo = inBase && (bst[ST_MODE] & S_IFMT) === S_IFDIR;
      out.push({ kind: inBase ? 'C' : 'A', path, type: typeName(st), size: isDir ? 0 : st[ST_SIZE] });
      if (!isDir) continue;
      const o = dirOpacity(fd, n);
      const sub = native.openat(fd, n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0);
      if (sub < 0) continue;
      try {
        // a dir made opaque over a BASE dir hides what BASE has below it but the upper does not
        if (o.opaque && baseDirToo) baseBelow(baseFd, path, new Set(names(sub)), out);
        walk(sub, path, o.xwhiteouts);
      } finally {
        native.close(sub);
      }
    }
  };
  try {
    walk(upFd, '', dirOpacity(upFd, '').xwhiteouts);
  } finally {
    native.close(upFd);
    native.close(baseFd);
  }
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}
