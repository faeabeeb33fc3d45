// What a test changed, as `docker diff` shows it: the harness's upper dir walked against BASE.
// A: added (BASE has no such path), C: changed (BASE has it: written, chmod'ed, or a dir with
// changes below), D: deleted (a whiteout, or a BASE entry below a dir made opaque). Sizes are the
// upper's. Both trees are walked by fd without following a symlink (openat2 BENEATH|NO_SYMLINKS).
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
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

/** What a path is in one view (an upper over BASE), for comparing two views; null: absent. */
function stateIn(changes: Map<string, Change>, upperFd: number, baseFd: number, rel: string): string | null {
  const c = changes.get(rel);
  if (c?.kind === 'D') return null;
  const fd = c ? upperFd : baseFd;
  const st = newStat();
  const i = rel.lastIndexOf('/');
  const dfd = i < 0 ? fd : native.openat2(fd, rel.slice(0, i), O_PATH | O_DIRECTORY | O_CLOEXEC, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS);
  if (dfd < 0) return null;
  const name = i < 0 ? rel : rel.slice(i + 1);
  try {
    if (native.fstatat(dfd, name, AT_SYMLINK_NOFOLLOW, st) !== 0) return null;
    const t = st[ST_MODE] & S_IFMT;
    let sig = `${typeName(st)} ${(st[ST_MODE] & 0o7777).toString(8)}`;
    if (t === S_IFLNK) sig += ` ${native.readlinkat(dfd, name)}`;
    else if (t === S_IFREG) {
      const f = native.openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC, 0);
      if (f < 0) throw new FsError(-f);
      const h = crypto.createHash('sha1');
      try {
        const b = Buffer.allocUnsafe(1 << 20);
        for (let off = 0; ;) {
          const n = fs.readSync(f, b, 0, b.length, off);
          if (n <= 0) break;
          h.update(b.subarray(0, n));
          off += n;
        }
      } finally {
        native.close(f);
      }
      sig += ` ${st[ST_SIZE]} ${h.digest('hex')}`;
    }
    return sig;
  } finally {
    if (dfd !== fd) native.close(dfd);
  }
}

/**
 * What changed from one upper's view to another's over the same BASE (a checkpoint's and the
 * current one): A/C/D per path as diffUpper, a dir C when something below it changed.
 */
export function diffBetween(fromUpper: string, toUpper: string, baseDir: string): Change[] {
  const from = new Map(diffUpper(fromUpper, baseDir).map((c) => [c.path, c]));
  const to = new Map(diffUpper(toUpper, baseDir).map((c) => [c.path, c]));
  const open = (p: string, fl: number): number => {
    const fd = native.openat(AT_FDCWD, p, fl | O_DIRECTORY | O_CLOEXEC, 0);
    if (fd < 0) throw new FsError(-fd);
    return fd;
  };
  const fromFd = open(fromUpper, O_PATH), toFd = open(toUpper, O_PATH), baseFd = open(baseDir, O_PATH);
  const out = new Map<string, Change>();
  try {
    for (const p of new Set([...from.keys(), ...to.keys()])) {
      const a = stateIn(from, fromFd, baseFd, p), b = stateIn(to, toFd, baseFd, p);
      if (a === b) continue;
      const c = to.get(p);
      const kind: Kind = a === null ? 'A' : b === null ? 'D' : 'C';
      const type = (b ?? a)!.split(' ')[0] as Change['type'];
      out.set(p, { kind, path: p, type, size: kind === 'D' || type === 'dir' ? 0 : c?.size ?? Number(b!.split(' ')[2] ?? 0) });
    }
    // the dirs above a change, present in both views, changed too (as docker diff lists them)
    for (const c of [...out.values()]) {
      for (let p = c.path; p.includes('/');) {
        p = p.slice(0, p.lastIndexOf('/'));
        if (!out.has(p)) out.set(p, { kind: 'C', path: p, type: 'dir', size: 0 });
      }
    }
  } finally {
    for (const fd of [fromFd, toFd, baseFd]) native.close(fd);
  }
  return [...out.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}
