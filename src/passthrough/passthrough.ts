// Passthrough: mirrors one directory, inode-based like libfuse's passthrough_ll. Every node
// holds an O_PATH fd opened with O_NOFOLLOW relative to its parent, so the daemon never walks a
// path inside the tree and never follows a symlink that lives there.
import { native, type DirList } from '../sys/native';
import { FsError, check } from '../sys/errors';
import {
  AT_EMPTY_PATH, AT_FDCWD, AT_REMOVEDIR, AT_SYMLINK_NOFOLLOW, E, O_ACCMODE, O_APPEND, O_CREAT,
  O_DIRECTORY, O_NOFOLLOW, O_PATH, O_RDONLY, O_RDWR, O_WRONLY, S_IFLNK, S_IFMT,
  UTIME_NOW, UTIME_OMIT,
} from '../sys/constants';
import { ST_DEV, ST_INO, ST_MODE, STATFS_LEN, newStat, type Stat } from '../sys/stat';
import type {
  AttrReply, Caller, DirOpened, Entry, Filesystem, Opened, SetAttr,
} from '../fuse/filesystem';
import { ROOT_ID, SETATTR } from '../fuse/ops';
import { asCaller, type Identity } from '../sys/identity';

interface Node {
  id: number;
  fd: number;          // O_PATH, O_NOFOLLOW
  dev: number;
  ino: number;
  type: number;        // S_IFMT bits
  nlookup: number;
  writers: number;     // opens for writing so far: such a file keeps the page cache
}

export interface PassthroughOptions {
  writeback: boolean;
  /** Serve files nobody has opened for writing with direct_io from the backing page cache. */
  directRead: boolean;
}

const proc = (fd: number): string => `/proc/self/fd/${fd}`;

export class Passthrough implements Filesystem {
  private readonly nodes = new Map<number, Node>();
  private readonly byIno = new Map<number, Map<number, Node>>();
  private nextId = ROOT_ID + 1;
  private readonly st = newStat();

  constructor(root: string, private readonly opts: PassthroughOptions, private readonly id: Identity) {
    const fd = check(native.openat(AT_FDCWD, root, O_PATH | O_DIRECTORY, 0));
    check(native.fstatat(fd, '', AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, this.st));
    this.add(ROOT_ID, fd, this.st).nlookup = 1;
  }

  private add(id: number, fd: number, st: Stat): Node {
    const n: Node = { id, fd, dev: st[ST_DEV], ino: st[ST_INO], type: st[ST_MODE] & S_IFMT, nlookup: 0, writers: 0 };
    this.nodes.set(id, n);
    let m = this.byIno.get(n.dev);
    if (!m) this.byIno.set(n.dev, (m = new Map()));
    m.set(n.ino, n);
    return n;
  }

  private node(id: number): Node {
    const n = this.nodes.get(id);
    if (!n) throw new FsError(E.ESTALE);
    return n;
  }

  private stat(n: Node): Stat {
    const st = newStat();
    check(native.fstatat(n.fd, '', AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, st));
    return st;
  }

  private entryOf(parent: Node, name: string): Entry {
    const fd = check(native.openat(parent.fd, name, O_PATH | O_NOFOLLOW, 0));
    const st = newStat();
    const r = native.fstatat(fd, '', AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, st);
    if (r < 0) {
      native.close(fd);
      throw new FsError(-r);
    }
    let n = this.byIno.get(st[ST_DEV])?.get(st[ST_INO]);
    if (n) native.close(fd);
    else n = this.add(this.nextId++, fd, st);
    n.nlookup++;
    return { nodeid: n.id, attr: st };
  }

  lookup(parent: number, name: string): Entry | null {
    try {
      return this.entryOf(this.node(parent), name);
    } catch (e) {
      if (e instanceof FsError && e.errno === E.ENOENT) return null;
      throw e;
    }
  }

  forget(nodeid: number, nlookup: number): void {
    const n = this.nodes.get(nodeid);
    if (!n || n.id === ROOT_ID) return;
    n.nlookup -= nlookup;
    if (n.nlookup > 0) return;
    this.nodes.delete(n.id);
    const m = this.byIno.get(n.dev);
    if (m?.get(n.ino) === n) m.delete(n.ino);
    native.close(n.fd);
  }

  getattr(nodeid: number): AttrReply {
    return { attr: this.stat(this.node(nodeid)) };
  }

  setattr(nodeid: number, s: SetAttr): AttrReply {
    const n = this.node(nodeid);
    const v = s.valid;
    if (v & SETATTR.MODE) check(native.fchmodat(n.fd, '', s.mode, AT_EMPTY_PATH));
    if (v & (SETATTR.UID | SETATTR.GID)) {
      check(native.fchownat(n.fd, '', v & SETATTR.UID ? s.uid : -1, v & SETATTR.GID ? s.gid : -1,
        AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
    }
    if (v & SETATTR.SIZE) {
      const hfd = s.fh ? native.handleFd(s.fh) : -1;
      if (hfd >= 0) check(native.ftruncate(hfd, s.size));
      else {
        const fd = check(native.openat(AT_FDCWD, proc(n.fd), O_WRONLY, 0));
        const r = native.ftruncate(fd, s.size);
        native.close(fd);
        check(r);
      }
    }
    if (v & (SETATTR.ATIME | SETATTR.MTIME)) {
      const ans = v & SETATTR.ATIME_NOW ? UTIME_NOW : v & SETATTR.ATIME ? s.atimeNs : UTIME_OMIT;
      const mns = v & SETATTR.MTIME_NOW ? UTIME_NOW : v & SETATTR.MTIME ? s.mtimeNs : UTIME_OMIT;
      if (n.type === S_IFLNK) {
        check(native.utimensat(n.fd, '', s.atime, ans, s.mtime, mns, AT_EMPTY_PATH));
      } else {
        check(native.utimensat(AT_FDCWD, proc(n.fd), s.atime, ans, s.mtime, mns, 0));
      }
    }
    return { attr: this.stat(n) };
  }

  readlink(nodeid: number): string {
    const r = native.readlinkat(this.node(nodeid).fd, '');
    if (typeof r === 'number') throw new FsError(-r);
    return r;
  }

  /** Runs a creating call as the caller (fsuid/fsgid), so ownership and setgid dirs behave. */
  private make(parent: number, name: string, caller: Caller, fn: (dirfd: number) => number): Entry {
    const p = this.node(parent);
    asCaller(this.id, caller, () => check(fn(p.fd)));
    return this.entryOf(p, name);
  }

  mknod(parent: number, name: string, mode: number, rdev: number, caller: Caller): Entry {
    return this.make(parent, name, caller, (fd) => native.mknodat(fd, name, mode, rdev));
  }

  mkdir(parent: number, name: string, mode: number, caller: Caller): Entry {
    return this.make(parent, name, caller, (fd) => native.mkdirat(fd, name, mode));
  }

  symlink(target: string, parent: number, name: string, caller: Caller): Entry {
    return this.make(parent, name, caller, (fd) => native.symlinkat(target, fd, name));
  }

  link(nodeid: number, newparent: number, newname: string): Entry {
    const n = this.node(nodeid), p = this.node(newparent);
    check(native.linkat(n.fd, '', p.fd, newname, AT_EMPTY_PATH));
    return this.entryOf(p, newname);
  }

  unlink(parent: number, name: string): void {
    check(native.unlinkat(this.node(parent).fd, name, 0));
  }

  rmdir(parent: number, name: string): void {
    check(native.unlinkat(this.node(parent).fd, name, AT_REMOVEDIR));
  }

  rename(parent: number, name: string, newparent: number, newname: string, flags: number): void {
    check(native.renameat2(this.node(parent).fd, name, this.node(newparent).fd, newname, flags));
  }

  private openFlags(flags: number): number {
    let f = flags & ~(O_CREAT | O_NOFOLLOW);
    // With the writeback cache the kernel reads pages back (write-only opens need read access)
    // and handles O_APPEND itself.
    if (this.opts.writeback) {
      if ((f & O_ACCMODE) === O_WRONLY) f = (f & ~O_ACCMODE) | O_RDWR;
      f &= ~O_APPEND;
    }
    return f;
  }

  private opened(n: Node, flags: number, fd: number): Opened {
    const writing = (flags & O_ACCMODE) !== O_RDONLY;
    if (writing) n.writers++;
    return { fd, directIo: this.opts.directRead && !writing && n.writers === 0, keepCache: !writing && n.writers === 0 };
  }

  open(nodeid: number, flags: number): Opened {
    const n = this.node(nodeid);
    const fd = check(native.openat(AT_FDCWD, proc(n.fd), this.openFlags(flags), 0));
    return this.opened(n, flags, fd);
  }

  create(parent: number, name: string, mode: number, flags: number, caller: Caller): { entry: Entry; opened: Opened } {
    const p = this.node(parent);
    const fd = asCaller(this.id, caller, () =>
      check(native.openat(p.fd, name, this.openFlags(flags) | O_CREAT | O_NOFOLLOW, mode)));
    try {
      const entry = this.entryOf(p, name);
      return { entry, opened: this.opened(this.node(entry.nodeid), flags, fd) };
    } catch (e) {
      native.close(fd);
      throw e;
    }
  }

  opendir(nodeid: number): DirOpened {
    this.node(nodeid);
    return { cacheReaddir: true, keepCache: false };
  }

  readdir(nodeid: number): DirList {
    const r = native.readdir(this.node(nodeid).fd);
    if (typeof r === 'number') throw new FsError(-r);
    return r;
  }

  fsyncdir(nodeid: number, datasync: boolean): void {
    const fd = check(native.openat(this.node(nodeid).fd, '.', O_RDONLY | O_DIRECTORY, 0));
    const r = native.fsync(fd, datasync ? 1 : 0);
    native.close(fd);
    check(r);
  }

  statfs(nodeid: number): Float64Array {
    const out = new Float64Array(STATFS_LEN);
    check(native.fstatvfs(this.node(nodeid).fd, out));  // fstatfs accepts O_PATH fds
    return out;
  }

  // Xattrs go through /proc/self/fd/N of the O_PATH fd; symlinks have none we can reach.
  private xpath(nodeid: number): string {
    const n = this.node(nodeid);
    if (n.type === S_IFLNK) throw new FsError(E.EPERM);
    return proc(n.fd);
  }

  setxattr(nodeid: number, name: string, value: Buffer, flags: number): void {
    check(native.setxattr(this.xpath(nodeid), name, value, flags, 1));
  }

  getxattr(nodeid: number, name: string): Buffer {
    if (this.node(nodeid).type === S_IFLNK) throw new FsError(E.ENODATA);
    const r = native.getxattr(this.xpath(nodeid), name, 1);
    if (typeof r === 'number') throw new FsError(-r);
    return r;
  }

  listxattr(nodeid: number): string[] {
    if (this.node(nodeid).type === S_IFLNK) return [];
    const r = native.listxattr(this.xpath(nodeid), 1);
    if (typeof r === 'number') throw new FsError(-r);
    return r.toString('utf8').split('\0').filter((s) => s.length > 0);
  }

  removexattr(nodeid: number, name: string): void {
    check(native.removexattr(this.xpath(nodeid), name, 1));
  }

  /** How many nodes (and so O_PATH fds) the daemon holds; for tests and `doctor`. */
  get nodeCount(): number {
    return this.nodes.size;
  }
}
