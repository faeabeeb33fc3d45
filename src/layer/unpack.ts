// An image-layer tar into an empty dir. `overlay` form (default): `.wh.NAME` becomes a kernel
// whiteout (char 0/0; a `.wh.` file where mknod is not permitted, which layerfs and
// fuse-overlayfs read) and `.wh..wh..opq` the opaque xattr (trusted.overlay as root,
// user.overlay otherwise) — an upper or lower dir for kernel overlayfs. `oci` form: the entries
// as they are, which layerfs mounts directly as a lower. Every name is resolved below the target
// without following symlinks (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS): a layer's `a -> /etc`
// followed by `a/passwd` is refused, not written through.
import { native } from '../sys/native';
import { FsError, errnoName } from '../sys/errors';
import { AT_FDCWD, AT_SYMLINK_NOFOLLOW, E, O_CLOEXEC, O_CREAT, O_DIRECTORY, O_EXCL, O_NOFOLLOW, O_PATH, O_RDONLY,
  O_WRONLY, RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFMT } from '../sys/constants';
import { ST_MODE, newStat } from '../sys/stat';
import { WH_OPQ, WH_PREFIX, procPath } from '../union/whiteout';
import { readTar, TarError, type TarEntry } from './tar';

export type UnpackForm = 'overlay' | 'oci';

export class UnpackError extends Error {}

export interface UnpackResult { entries: number; whiteouts: number; opaque: number; bytes: number; notes: string[] }

const split = (name: string): [string, string] => {
  const i = name.lastIndexOf('/');
  return i === -1 ? ['', name] : [name.slice(0, i), name.slice(i + 1)];
};

class Unpacker {
  readonly result: UnpackResult = { entries: 0, whiteouts: 0, opaque: 0, bytes: 0, notes: [] };
  private readonly dirs = new Map<string, number>();
  private readonly dirTimes: [string, number][] = [];
  private readonly root = process.geteuid?.() === 0;
  private charWhiteouts = true;
  private readonly failed = new Set<string>();

  constructor(private readonly top: number, private readonly form: UnpackForm) {}

  private fail(name: string, what: string, errno: number): never {
    throw new UnpackError(`${name}: ${what}: ${errnoName(errno)}`);
  }

  /** A dir below the target as an O_PATH fd, made (0755) where missing; never through a symlink. */
  private dir(rel: string): number {
    if (!rel) return this.top;
    const have = this.dirs.get(rel);
    if (have !== undefined) {
      this.dirs.delete(rel);   // most recently used last: eviction takes the oldest
      this.dirs.set(rel, have);
      return have;
    }
    let fd = native.openat2(this.top, rel, O_PATH | O_DIRECTORY | O_CLOEXEC, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS);
    if (fd === -E.ENOENT) {
      const [parent, base] = split(rel);
      const pfd = this.dir(parent);
      const r = native.mkdirat(pfd, base, 0o755);
      if (r < 0 && r !== -E.EEXIST) this.fail(rel, 'mkdir', -r);
      fd = native.openat2(this.top, rel, O_PATH | O_DIRECTORY | O_CLOEXEC, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS);
    }
    if (fd === -E.ELOOP || fd === -E.EXDEV) throw new UnpackError(`${rel}: a symlink in the layer stands in the path: refused`);
    if (fd < 0) this.fail(rel, 'open', -fd);
    if (this.dirs.size >= 256) {
      const [oldest, ofd] = this.dirs.entries().next().value as [string, number];
      native.close(ofd);
      this.dirs.delete(oldest);
    }
    this.dirs.set(rel, fd);
    return fd;
  }

  private dropDirs(): void {
    for (const fd of this.dirs.values()) native.close(fd);
    this.dirs.clear();
  }

  /** Clears the way for a new entry: a later entry of the same name replaces the earlier (tar's rule). */
  private clear(pfd: number, base: string, keepDir: boolean): boolean {
    const st = newStat();
    if (native.fstatat(pfd, base, AT_SYMLINK_NOFOLLOW, st) < 0) return false;
    const isDir = (st[ST_MODE] & S_IFMT) === S_IFDIR;
    if (isDir && keepDir) return true;
    const r = native.unlinkat(pfd, base, isDir ? 0x200 /* AT_REMOVEDIR */ : 0);
    if (r < 0) this.fail(base, 'replace', -r);
    return false;
  }

  private attrs(pfd: number, base: string, e: TarEntry, rel: string): void {
    const r = native.fchownat(pfd, base, e.uid, e.gid, AT_SYMLINK_NOFOLLOW);
    if (r < 0) {
      if (this.root || r !== -E.EPERM) this.fail(rel, 'chown', -r);
      this.note('owners', 'owners not kept (not root)');
    }
    if (e.type !== 'symlink') {
      const m = native.fchmodat(pfd, base, e.mode & 0o7777, 0);
      if (m < 0) this.fail(rel, 'chmod', -m);
    }
    for (const [k, v] of e.xattrs) {
      const x = native.setxattr(procPath(pfd, base), k, v, 0, 0);
      if (x < 0) {
        if (this.root) this.fail(rel, `set xattr ${k}`, -x);
        this.note(`xattr:${k.split('.')[0]}`, `${k.split('.')[0]}.* xattrs not kept (${errnoName(-x)})`);
      }
    }
    if (e.type === 'dir') this.dirTimes.push([rel, e.mtime]);
    else native.utimensat(pfd, base, e.mtime, 0, e.mtime, 0, AT_SYMLINK_NOFOLLOW);
  }

  private note(key: string, text: string): void {
    if (this.failed.has(key)) return;
    this.failed.add(key);
    this.result.notes.push(text);
  }

  entry(e: TarEntry, copyTo: (fd: number) => void): void {
    if (!e.name) return;   // the layer's root: the target dir itself
    const [parent, base] = split(e.name);
    const pfd = this.dir(parent);
    this.result.entries++;
    if (base === WH_OPQ && this.form === 'overlay') {
      this.opaque(pfd, parent);
      return;
    }
    if (base.startsWith(WH_PREFIX) && base !== WH_OPQ && !base.startsWith(`${WH_PREFIX}${WH_PREFIX}`) && this.form === 'overlay') {
      this.whiteout(pfd, base.slice(WH_PREFIX.length), e.name);
      return;
    }
    if (base.startsWith(WH_PREFIX)) this.result[base === WH_OPQ ? 'opaque' : 'whiteouts']++;
    const exists = this.clear(pfd, base, e.type === 'dir');
    let r = 0;
    switch (e.type) {
      case 'dir':
        if (!exists) r = native.mkdirat(pfd, base, 0o700);
        break;
      case 'file': {
        const fd = native.openat(pfd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600);
        if (fd < 0) this.fail(e.name, 'create', -fd);
        try { copyTo(fd); } finally { native.close(fd); }
        this.result.bytes += e.size;
        break;
      }
      case 'symlink':
        r = native.symlinkat(e.linkname, pfd, base);
        break;
      case 'link': {
        const [lp, lb] = split(e.linkname);
        r = native.linkat(this.dir(lp), lb, pfd, base, 0);
        if (r < 0) this.fail(e.name, `link to ${e.linkname}`, -r);
        return;   // a hard link shares its first name's attributes
      }
      default: {
        const fmt = e.type === 'char' ? S_IFCHR : e.type === 'block' ? S_IFBLK : S_IFIFO;
        r = native.mknodat(pfd, base, fmt | 0o600, native.makedev(e.devmajor, e.devminor));
        if (r === -E.EPERM && !this.root) { this.note('mknod', 'device nodes skipped (not root)'); return; }
      }
    }
    if (r < 0) this.fail(e.name, e.type, -r);
    this.attrs(pfd, base, e, e.name);
    if (e.type === 'dir') {
      // a dir fd taken before it was replaced would be stale
      const old = this.dirs.get(e.name);
      if (old !== undefined && !exists) { native.close(old); this.dirs.delete(e.name); }
    }
  }

  private whiteout(pfd: number, name: string, rel: string): void {
    this.clear(pfd, name, false);
    this.result.whiteouts++;
    if (this.charWhiteouts) {
      const r = native.mknodat(pfd, name, S_IFCHR | 0o600, 0);
      if (r === 0) return;
      if (r !== -E.EPERM) this.fail(rel, 'mknod whiteout', -r);
      this.charWhiteouts = false;
      this.note('whiteouts', "whiteouts kept as .wh. files: mknod of 0/0 is not permitted here (layerfs and fuse-overlayfs read them; kernel overlayfs does not)");
    }
    const fd = native.openat(pfd, WH_PREFIX + name, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600);
    if (fd < 0) this.fail(rel, 'create', -fd);
    native.close(fd);
  }

  private opaque(pfd: number, rel: string): void {
    this.result.opaque++;
    const target = procPath(pfd, '');
    if (this.root && native.setxattr(target, 'trusted.overlay.opaque', Buffer.from('y'), 0, 1) === 0) return;
    const r = native.setxattr(target, 'user.overlay.opaque', Buffer.from('y'), 0, 1);
    if (r < 0) this.fail(rel || '.', 'set opaque xattr', -r);
  }

  finish(): void {
    // dir times last, deepest first: entries made inside moved them
    for (const [rel, t] of this.dirTimes.reverse()) {
      const [parent, base] = split(rel);
      native.utimensat(this.dir(parent), base, t, 0, t, 0, AT_SYMLINK_NOFOLLOW);
    }
    this.dropDirs();
  }
}

/** Extracts the tar read from inFd into dir (which must exist and be empty). */
export function unpackLayer(inFd: number, dir: string, form: UnpackForm): UnpackResult {
  const top = native.openat(AT_FDCWD, dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (top < 0) {
    const errno = -top;
    throw new UnpackError(errno === E.ENOENT ? `target dir ${dir} does not exist` : errno === E.ENOTDIR ? `target ${dir} is not a directory` : `target dir ${dir}: ${errnoName(errno)}`);
  }
  const u = new Unpacker(top, form);
  try {
    const list = native.readdir(top);
    if (typeof list === 'number') throw new FsError(-list);
    if (list.names.some((n) => n !== '.' && n !== '..')) throw new UnpackError(`target dir ${dir} is not empty`);
    try {
      readTar(inFd, (e, copyTo) => u.entry(e, copyTo));
    } catch (e) {
      if (e instanceof TarError) throw new UnpackError(e.message);
      throw e;
    }
    u.finish();
    return u.result;
  } finally {
    native.close(top);
  }
}
