// An overlay upper dir as an image-layer tar (the OCI/docker form): kernel whiteouts (char 0/0,
// xattr whiteouts) become `.wh.NAME` files, opaque dirs get a `.wh..wh..opq` entry, the union's
// private xattrs are dropped, hard links stay links. A redirected directory (a rename of a dir
// with lower parts) or a metacopy file holds only part of its content in the upper: with the
// mount's lower dirs given, it is written whole (an opaque dir with the merged content); without
// them it is refused. Everything is walked by fd, never following a symlink inside a layer.
import { native } from '../sys/native';
import { FsError, errnoName } from '../sys/errors';
import { AT_FDCWD, AT_SYMLINK_NOFOLLOW, E, O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW, O_RDONLY, S_IFBLK, S_IFCHR, S_IFDIR,
  S_IFIFO, S_IFLNK, S_IFMT, S_IFREG } from '../sys/constants';
import { ST_DEV, ST_GID, ST_INO, ST_MODE, ST_MTIME, ST_NLINK, ST_RDEV, ST_SIZE, ST_UID, newStat, type Stat } from '../sys/stat';
import { WH_META, WH_OPQ, WH_PREFIX, dirOpacity, isCharWhiteout, isXattrWhiteout, probe, procPath } from '../union/whiteout';
import { REDIRECT_XATTRS, isPrivateXattr } from '../union/xattrs';
import { TarWriter, tarEntry, type TarEntry, type TarType } from './tar';

const METACOPY_XATTRS = ['trusted.overlay.metacopy', 'user.overlay.metacopy'];

export class PackError extends Error {}

export interface PackResult { entries: number; whiteouts: number; opaque: number; bytes: number }

function openDir(dirfd: number, name: string): number {
  const fd = native.openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0);
  if (fd < 0) throw new FsError(-fd);
  return fd;
}

function listNames(fd: number): string[] {
  const l = native.readdir(fd);
  if (typeof l === 'number') throw new FsError(-l);
  return l.names.filter((n) => n !== '.' && n !== '..').sort();
}

function xattrValue(dirfd: number, name: string, attrs: string[]): string | null {
  for (const a of attrs) {
    const r = native.getxattr(procPath(dirfd, name), a, 0);
    if (typeof r !== 'number') return r.toString('utf8');
  }
  return null;
}

/** The xattrs an image layer carries: all but the union's own. */
function layerXattrs(dirfd: number, name: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const list = native.listxattr(procPath(dirfd, name), 0);
  if (typeof list === 'number' || !list.length) return out;
  for (const a of list.toString('utf8').split('\0')) {
    if (!a || isPrivateXattr(a)) continue;
    const v = native.getxattr(procPath(dirfd, name), a, 0);
    if (typeof v !== 'number') out.set(a, v);
  }
  return out;
}

const TYPES: [number, TarType][] = [[S_IFREG, 'file'], [S_IFDIR, 'dir'], [S_IFLNK, 'symlink'], [S_IFCHR, 'char'], [S_IFBLK, 'block'], [S_IFIFO, 'fifo']];

const join = (a: string, b: string): string => (a ? `${a}/${b}` : b);

class Packer {
  readonly result: PackResult = { entries: 0, whiteouts: 0, opaque: 0, bytes: 0 };
  private readonly links = new Map<string, string>();
  private readonly st = newStat();

  constructor(private readonly out: TarWriter, private readonly lowers: number[]) {}

  private needLowers(rel: string, what: string): void {
    if (!this.lowers.length) throw new PackError(`${rel}: ${what} keeps part of its content in the lower layers: pass --lowerdir with the mount's lowers`);
  }

  private add(e: TarEntry, dataFd = -1): void {
    this.out.add(e, dataFd);
    this.result.entries++;
    this.result.bytes += e.size;
  }

  private entryOf(dirfd: number, name: string, rel: string, st: Stat): TarEntry | null {
    const fmt = st[ST_MODE] & S_IFMT;
    const type = TYPES.find(([m]) => m === fmt)?.[1];
    if (!type) return null;   // sockets: a tar cannot hold them
    const e = tarEntry(rel, type, { mode: st[ST_MODE] & 0o7777, uid: st[ST_UID], gid: st[ST_GID], mtime: st[ST_MTIME], xattrs: layerXattrs(dirfd, name) });
    if (type === 'symlink') {
      const t = native.readlinkat(dirfd, name);
      if (typeof t === 'number') throw new FsError(-t);
      e.linkname = t;
    } else if (type === 'char' || type === 'block') {
      [e.devmajor, e.devminor] = native.majorMinor(st[ST_RDEV]);
    } else if (type === 'file') {
      e.size = st[ST_SIZE];
    }
    return e;
  }

  private whiteout(rel: string, st: Stat): void {
    const i = rel.lastIndexOf('/');
    const name = rel.slice(0, i + 1) + WH_PREFIX + rel.slice(i + 1);
    this.add(tarEntry(name, 'file', { mode: 0o600, uid: st[ST_UID], gid: st[ST_GID], mtime: st[ST_MTIME] }));
    this.result.whiteouts++;
  }

  private opaqueMarker(rel: string, st: Stat): void {
    this.add(tarEntry(join(rel, WH_OPQ), 'file', { mode: 0o600, uid: st[ST_UID], gid: st[ST_GID], mtime: st[ST_MTIME] }));
    this.result.opaque++;
  }

  /** A file's data (from fdOfData when given: a metacopy's lower copy), as a link when seen before. */
  private file(dirfd: number, name: string, rel: string, e: TarEntry, st: Stat, dataDir = dirfd, dataName = name): void {
    if (st[ST_NLINK] > 1) {
      const key = `${st[ST_DEV]}:${st[ST_INO]}`;
      const first = this.links.get(key);
      if (first) {
        this.add({ ...e, type: 'link', size: 0, linkname: first });
        return;
      }
      this.links.set(key, rel);
    }
    const fd = native.openat(dataDir, dataName, O_RDONLY | O_NOFOLLOW | O_CLOEXEC, 0);
    if (fd < 0) throw new FsError(-fd);
    try {
      if (dataDir !== dirfd || dataName !== name) {
        const dst = newStat();
        native.fstatat(dataDir, dataName, AT_SYMLINK_NOFOLLOW, dst);
        e.size = dst[ST_SIZE];
      }
      this.add(e, fd);
    } finally {
      native.close(fd);
    }
  }

  /** The dirs below stack (top-down) that merge into `name`: stops at an opaque dir, a non-dir or a whiteout. */
  private descend(stack: number[], name: string): number[] {
    const out: number[] = [];
    const st = newStat();
    for (const fd of stack) {
      const p = probe(fd, name, st, false);
      if (p === 'none') continue;
      if (p === 'whiteout' || (st[ST_MODE] & S_IFMT) !== S_IFDIR) break;
      out.push(openDir(fd, name));
      if (dirOpacity(fd, name).opaque) break;
    }
    return out;
  }

  /** The lower dirs that show at union path `origin` ('' = root). */
  private lowersAt(origin: string): number[] {
    let stack = this.lowers.map((fd) => openDir(fd, '.'));
    for (const c of origin.split('/').filter(Boolean)) {
      const next = this.descend(stack, c);
      closeAll(stack);
      stack = next;
    }
    return stack;
  }

  /** An upper dir's own content: whiteouts and opaque markers in the layer form. */
  upperDir(fd: number, rel: string, origin: string): void {
    const xwh = dirOpacity(fd, '').xwhiteouts;
    for (const name of listNames(fd)) {
      if (name === WH_OPQ || name.startsWith(WH_META)) continue;
      const childRel = join(rel, name);
      if (native.fstatat(fd, name, AT_SYMLINK_NOFOLLOW, this.st) < 0) continue;
      const st = Float64Array.from(this.st);
      if (name.startsWith(WH_PREFIX)) {        // already in the layer form (fuse-overlayfs rootless)
        this.add(tarEntry(childRel, 'file', { mode: 0o600, uid: st[ST_UID], gid: st[ST_GID], mtime: st[ST_MTIME] }));
        this.result.whiteouts++;
        continue;
      }
      if (isCharWhiteout(st) || (xwh && isXattrWhiteout(fd, name, st))) {
        this.whiteout(childRel, st);
        continue;
      }
      const e = this.entryOf(fd, name, childRel, st);
      if (!e) continue;
      if (e.type === 'dir') {
        const redirect = xattrValue(fd, name, REDIRECT_XATTRS);
        const childOrigin = originOf(origin, name, redirect);
        const opaque = dirOpacity(fd, name).opaque;
        this.add(e);
        const child = openDir(fd, name);
        try {
          if (redirect !== null && !opaque) {
            this.needLowers(childRel, 'a redirected directory');
            this.opaqueMarker(childRel, st);
            const stack = [child, ...this.lowersAt(childOrigin)];
            try { this.merged(stack, childRel, childOrigin); } finally { closeAll(stack.slice(1)); }
          } else {
            if (opaque) this.opaqueMarker(childRel, st);
            this.upperDir(child, childRel, childOrigin);
          }
        } finally {
          native.close(child);
        }
      } else if (e.type === 'file' && xattrValue(fd, name, METACOPY_XATTRS) !== null) {
        this.needLowers(childRel, 'a metacopy file');
        const redirect = xattrValue(fd, name, REDIRECT_XATTRS);
        const src = originOf(origin, name, redirect);
        const dirs = this.lowersAt(parentOf(src));
        try {
          const base = src.slice(src.lastIndexOf('/') + 1);
          const holder = dirs.find((d) => native.fstatat(d, base, AT_SYMLINK_NOFOLLOW, newStat()) === 0);
          if (holder === undefined) throw new PackError(`${childRel}: its data (${src}) is in none of the lowers given`);
          this.file(fd, name, childRel, e, st, holder, base);
        } finally {
          closeAll(dirs);
        }
      } else if (e.type === 'file') {
        this.file(fd, name, childRel, e, st);
      } else {
        this.add(e);
      }
    }
  }

  /** The merged content of a stack of dirs (top-down), written whole (inside an opaque dir). */
  private merged(stack: number[], rel: string, origin: string): void {
    const from = new Map<string, number>();
    const seen = new Set<string>();
    for (const fd of stack) {
      const xwh = dirOpacity(fd, '').xwhiteouts;
      const names: string[] = [];
      const st = newStat();
      for (const name of listNames(fd)) {
        if (seen.has(name)) continue;
        if (name.startsWith(WH_PREFIX)) {
          if (name !== WH_OPQ && !name.startsWith(WH_META)) seen.add(name.slice(WH_PREFIX.length));
          continue;
        }
        seen.add(name);
        if (native.fstatat(fd, name, AT_SYMLINK_NOFOLLOW, st) < 0) continue;
        if (isCharWhiteout(st) || (xwh && isXattrWhiteout(fd, name, st))) continue;
        names.push(name);
      }
      for (const n of names) from.set(n, fd);
    }
    for (const name of [...from.keys()].sort()) {
      const fd = from.get(name)!;
      const childRel = join(rel, name);
      native.fstatat(fd, name, AT_SYMLINK_NOFOLLOW, this.st);
      const st = Float64Array.from(this.st);
      const e = this.entryOf(fd, name, childRel, st);
      if (!e) continue;
      if (e.type === 'dir') {
        this.add(e);
        const below = stack.slice(stack.indexOf(fd));
        const redirect = fd === stack[0] ? xattrValue(fd, name, REDIRECT_XATTRS) : null;
        const childOrigin = originOf(origin, name, redirect);
        const child = redirect !== null
          ? [openDir(fd, name), ...(dirOpacity(fd, name).opaque ? [] : this.lowersAt(childOrigin))]
          : this.descend(below, name);
        try { this.merged(child, childRel, childOrigin); } finally { closeAll(child); }
      } else if (e.type === 'file') {
        this.file(fd, name, childRel, e, st);
      } else {
        this.add(e);
      }
    }
  }
}

/** Where a union entry's lower part lives: its own path, or its redirect (absolute from the
 * root, or relative to its parent's origin — the kernel's format). */
function originOf(parentOrigin: string, name: string, redirect: string | null): string {
  if (redirect === null) return join(parentOrigin, name);
  return redirect.startsWith('/') ? redirect.slice(1) : join(parentOrigin, redirect);
}

function parentOf(p: string): string {
  const i = p.lastIndexOf('/');
  return i === -1 ? '' : p.slice(0, i);
}

function closeAll(fds: number[]): void {
  for (const fd of fds) native.close(fd);
}

function openRoot(what: string, p: string): number {
  const fd = native.openat(AT_FDCWD, p, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (fd < 0) {
    const errno = -fd;
    throw new PackError(errno === E.ENOENT ? `${what} ${p} does not exist` : errno === E.ENOTDIR ? `${what} ${p} is not a directory` : `${what} ${p}: ${errnoName(errno)}`);
  }
  return fd;
}

/** Writes upper (with lowers for redirected dirs and metacopy files) as a layer tar to outFd. */
export function packUpper(upper: string, lowers: string[], outFd: number): PackResult {
  const opened: number[] = [];
  try {
    const up = openRoot('upper dir', upper);
    opened.push(up);
    const lowerFds = lowers.map((l) => { const fd = openRoot('lower dir', l); opened.push(fd); return fd; });
    const w = new TarWriter(outFd);
    const p = new Packer(w, lowerFds);
    p.upperDir(up, '', '');
    w.finish();
    return p.result;
  } finally {
    closeAll(opened);
  }
}
