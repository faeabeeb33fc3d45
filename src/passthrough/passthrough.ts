// Passthrough: mirrors one directory, inode-based. Nodes form a tree of (parent, name) links;
// every access is one no-follow component relative to the parent's directory fd (re-opened on
// demand, a bounded set cached), so the daemon never follows a symlink that lives in the tree
// and holds no fd per file. Hard links: one node per (st_dev, st_ino), with every known name.
import { native, type DirList } from '../sys/native';
import { FsError, check } from '../sys/errors';
import {
  AT_EMPTY_PATH, AT_FDCWD, AT_REMOVEDIR, AT_SYMLINK_NOFOLLOW, E, O_ACCMODE, O_APPEND, O_CREAT, O_DIRECT,
  O_DIRECTORY, O_NOFOLLOW, O_PATH, O_RDONLY, O_RDWR, O_WRONLY, RENAME_EXCHANGE, S_IFDIR, S_IFMT, S_IFREG,
  MOUNT_ATTR__ATIME, MOUNT_ATTR_NODIRATIME,
} from '../sys/constants';
import { ST_DEV, ST_INO, ST_MODE, ST_NLINK, STATFS_LEN, newStat, type Stat } from '../sys/stat';
import type { AttrReply, Caller, DirOpened, Entry, Filesystem, Opened, SetAttr } from '../fuse/filesystem';
import { ROOT_ID, SETATTR } from '../fuse/ops';
import { asCaller, type Identity } from '../sys/identity';
import { creationMode } from '../fuse/modes';
import { setSizeAndTimes } from '../fuse/setattr';
import { atimeAttrs, openNoatime, touchAtime, wantsAtime, type AtimePolicy } from '../fuse/atime';
import { FdCache, fdBudget } from '../sys/fdcache';
import { statByHandle } from '../sys/handles';

interface Link {
  parent: Node;
  name: string;
}

interface Node {
  id: number;
  dev: number;
  ino: number;
  type: number;                // S_IFMT bits
  nlookup: number;
  links: Link[];               // known names; empty for the root
  kids: Map<string, Node>;     // known children (they keep this node alive)
  writers: number;             // opens for writing so far: such a file keeps the page cache
  gone?: Stat;                 // (dirs) removed while the kernel still knows it: its last attributes
}

export interface PassthroughOptions {
  writeback: boolean;
  /** timeout=SECS: with a short one, listings are read anew at each open (changes behind our back). */
  timeout: number;
  /** Serve files nobody has opened for writing with direct_io from the backing page cache. */
  directRead: boolean;
  atime: AtimePolicy;
  /** Regular files are opened with FUSE passthrough when the session has it. */
  passthrough: boolean;
}

const NOFOLLOW = AT_SYMLINK_NOFOLLOW;

export class Passthrough implements Filesystem {
  private readonly nodes = new Map<number, Node>();
  private readonly byIno = new Map<number, Map<number, Node>>();
  private readonly root: Node;
  private rootFd: number;
  private readonly dirFds: FdCache<number>;
  private nextId = ROOT_ID + 1;

  constructor(root: string, private readonly opts: PassthroughOptions, private readonly id: Identity,
    fdLimit = 1024) {
    this.rootFd = check(native.openat(AT_FDCWD, root, O_PATH | O_DIRECTORY, 0));
    if (opts.passthrough) {
      // the kernel reads passthrough files itself, with the caller's flags: reached through a
      // private clone of the tree's mount that carries this mount's atime policy, they behave
      // as under a bind mount with it. No clone, no passthrough.
      const fd = native.cloneMount(this.rootFd, atimeAttrs(opts.atime), MOUNT_ATTR__ATIME | MOUNT_ATTR_NODIRATIME);
      if (fd >= 0) {
        native.close(this.rootFd);
        this.rootFd = fd;
      } else opts.passthrough = false;
    }
    const st = newStat();
    check(native.fstatat(this.rootFd, '', AT_EMPTY_PATH | NOFOLLOW, st));
    this.root = this.add(ROOT_ID, st);
    this.root.nlookup = 1;
    this.dirFds = new FdCache(fdBudget(fdLimit));
  }

  private add(id: number, st: Stat): Node {
    const n: Node = {
      id, dev: st[ST_DEV], ino: st[ST_INO], type: st[ST_MODE] & S_IFMT, nlookup: 0, links: [],
      kids: new Map(), writers: 0,
    };
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

  /** O_PATH fd of a directory node, opened component by component without following links. */
  private dirFd(n: Node): number {
    if (n === this.root) return this.rootFd;
    return check(this.dirFds.get(n.id, () => {
      const l = n.links[0];
      if (!l) return -E.ESTALE;
      return native.openat(this.dirFd(l.parent), l.name, O_PATH | O_DIRECTORY | O_NOFOLLOW, 0);
    }));
  }

  private addLink(parent: Node, name: string, child: Node): void {
    const old = parent.kids.get(name);
    if (old === child) return;
    if (old) this.unlinkName(parent, name);
    parent.kids.set(name, child);
    child.links.push({ parent, name });
  }

  private unlinkName(parent: Node, name: string): void {
    const child = parent.kids.get(name);
    if (!child) return;
    parent.kids.delete(name);
    child.links = child.links.filter((l) => !(l.parent === parent && l.name === name));
    if (child.type === S_IFDIR) this.dirFds.delete(child.id);
    this.maybeFree(child);
    this.maybeFree(parent);
  }

  private maybeFree(n: Node): void {
    if (n === this.root || n.nlookup > 0 || n.kids.size > 0) return;
    this.nodes.delete(n.id);
    const m = this.byIno.get(n.dev);
    if (m?.get(n.ino) === n) m.delete(n.ino);
    this.dirFds.delete(n.id);
    const links = n.links;
    n.links = [];
    for (const l of links) {
      if (l.parent.kids.get(l.name) === n) l.parent.kids.delete(l.name);
      this.maybeFree(l.parent);
    }
  }

  /** Runs fn on (dirfd, name) of a node's first name that still works; drops stale names. */
  private at(n: Node, fn: (dirfd: number, name: string, flags: number) => number): number {
    if (n === this.root) return fn(this.rootFd, '', AT_EMPTY_PATH);
    for (;;) {
      const l = n.links[0];
      if (!l) throw new FsError(E.ESTALE);
      const r = fn(this.dirFd(l.parent), l.name, 0);
      if (r !== -E.ENOENT || !this.dropIfStale(n, l)) return r;
    }
  }

  private dropIfStale(n: Node, l: Link): boolean {
    const st = newStat();
    const r = native.fstatat(this.dirFd(l.parent), l.name, NOFOLLOW, st);
    if (r === 0 && st[ST_INO] === n.ino && st[ST_DEV] === n.dev) return false;
    this.unlinkName(l.parent, l.name);
    return true;
  }

  private stat(n: Node): Stat {
    const st = newStat();
    let r = -E.ESTALE;
    try {
      r = this.at(n, (fd, name, fl) => native.fstatat(fd, name, NOFOLLOW | fl, st));
    } catch (e) {
      if (!(e instanceof FsError)) throw e;
    }
    if (r === 0) return st;
    if (statByHandle(n.id, st)) return st;  // an unlinked file that is still open
    if (n.gone && !n.links.length) return n.gone;  // a removed directory still held open
    throw new FsError(r < 0 ? -r : E.ESTALE);
  }

  private entryOf(parent: Node, name: string): Entry | null {
    const st = newStat();
    const r = native.fstatat(this.dirFd(parent), name, NOFOLLOW, st);
    if (r === -E.ENOENT) {
      if (parent.kids.has(name)) this.unlinkName(parent, name);
      return null;
    }
    check(r);
    let n = this.byIno.get(st[ST_DEV])?.get(st[ST_INO]);
    if (!n) n = this.add(this.nextId++, st);
    this.addLink(parent, name, n);
    n.nlookup++;
    return { nodeid: n.id, attr: st };
  }

  private mustEntry(parent: Node, name: string): Entry {
    const e = this.entryOf(parent, name);
    if (!e) throw new FsError(E.ENOENT);
    return e;
  }

  lookup(parent: number, name: string): Entry | null {
    return this.entryOf(this.node(parent), name);
  }

  forget(nodeid: number, nlookup: number): void {
    const n = this.nodes.get(nodeid);
    if (!n || n === this.root) return;
    n.nlookup = Math.max(0, n.nlookup - nlookup);
    this.maybeFree(n);
  }

  getattr(nodeid: number): AttrReply {
    return { attr: this.stat(this.node(nodeid)) };
  }

  setattr(nodeid: number, s: SetAttr): AttrReply {
    const n = this.node(nodeid);
    const v = s.valid;
    if (v & SETATTR.MODE) check(this.at(n, (fd, name, fl) => native.fchmodat(fd, name, s.mode, fl | NOFOLLOW)));
    if (v & (SETATTR.UID | SETATTR.GID)) {
      const uid = v & SETATTR.UID ? s.uid : -1, gid = v & SETATTR.GID ? s.gid : -1;
      check(this.at(n, (fd, name, fl) => native.fchownat(fd, name, uid, gid, fl | NOFOLLOW)));
    }
    setSizeAndTimes(s, () => this.at(n, (dfd, name) => native.openat(dfd, name, O_WRONLY | O_NOFOLLOW, 0)),
      (a, an, m, mn) => this.at(n, (fd, name, fl) => native.utimensat(fd, name, a, an, m, mn, fl | NOFOLLOW)));
    return { attr: this.stat(n) };
  }

  readlink(nodeid: number): string {
    let out = '';
    check(this.at(this.node(nodeid), (fd, name) => {
      const r = native.readlinkat(fd, name);
      if (typeof r === 'number') return r;
      out = r;
      return 0;
    }));
    return out;
  }

  /** Runs a creating call as the caller (fsuid/fsgid), so ownership and setgid dirs behave. */
  private make(parent: number, name: string, caller: Caller, fn: (dirfd: number, mode: number) => number, mode = 0): Entry {
    const p = this.node(parent);
    const dfd = this.dirFd(p);
    const m = creationMode(dfd, mode, caller.umask);
    asCaller(this.id, caller, () => check(fn(dfd, m)));
    return this.mustEntry(p, name);
  }

  mknod(parent: number, name: string, mode: number, rdev: number, caller: Caller): Entry {
    return this.make(parent, name, caller, (fd, m) => native.mknodat(fd, name, m, rdev), mode);
  }

  mkdir(parent: number, name: string, mode: number, caller: Caller): Entry {
    return this.make(parent, name, caller, (fd, m) => native.mkdirat(fd, name, m), mode);
  }

  symlink(target: string, parent: number, name: string, caller: Caller): Entry {
    return this.make(parent, name, caller, (fd) => native.symlinkat(target, fd, name));
  }

  link(nodeid: number, newparent: number, newname: string): Entry {
    const n = this.node(nodeid), p = this.node(newparent);
    check(this.at(n, (fd, name) => native.linkat(fd, name, this.dirFd(p), newname, 0)));
    return this.mustEntry(p, newname);
  }

  unlink(parent: number, name: string): void {
    const p = this.node(parent);
    const gone = this.beforeRemoval(p, name);
    check(native.unlinkat(this.dirFd(p), name, 0));
    gone();
    this.unlinkName(p, name);
  }

  rmdir(parent: number, name: string): void {
    const p = this.node(parent);
    const gone = this.beforeRemoval(p, name);
    check(native.unlinkat(this.dirFd(p), name, AT_REMOVEDIR));
    gone();
    this.unlinkName(p, name);
  }

  /**
   * Before p/name is removed or replaced (one stat); call the result once it is gone. Its
   * (st_dev, st_ino) then no longer names its node — the filesystem may give the number to the
   * next object created, and a node the kernel still holds (an open file, a cwd) must not be
   * handed out for that one; objects with other links keep theirs. A directory the kernel knows
   * keeps its last attributes, with nlink 0, for fstat of it (as on the backing filesystem).
   */
  private beforeRemoval(p: Node, name: string): () => void {
    const st = newStat();
    if (native.fstatat(this.dirFd(p), name, NOFOLLOW, st) < 0) return () => {};
    const isDir = (st[ST_MODE] & S_IFMT) === S_IFDIR;
    const n = p.kids.get(name);
    return () => {
      if (isDir || st[ST_NLINK] <= 1) this.byIno.get(st[ST_DEV])?.delete(st[ST_INO]);
      if (isDir && n && n.nlookup > 0) {
        st[ST_NLINK] = 0;
        n.gone = st;
      }
    };
  }

  rename(parent: number, name: string, newparent: number, newname: string, flags: number): void {
    const p = this.node(parent), q = this.node(newparent);
    const gone = flags & RENAME_EXCHANGE ? () => {} : this.beforeRemoval(q, newname);
    check(native.renameat2(this.dirFd(p), name, this.dirFd(q), newname, flags));
    gone();
    const a = p.kids.get(name), b = q.kids.get(newname);
    if (a) this.unlinkName(p, name);
    if (b) this.unlinkName(q, newname);
    if (a && this.nodes.has(a.id)) this.addLink(q, newname, a);
    if (b && flags & RENAME_EXCHANGE && this.nodes.has(b.id)) this.addLink(p, name, b);
  }

  private openFlags(flags: number): number {
    // O_DIRECT is honoured by the kernel's FUSE layer (no FUSE page cache for that open); the
    // backing file is read through its own page cache, the one copy every opener shares.
    let f = flags & ~(O_CREAT | O_DIRECT);
    // With the writeback cache the kernel reads pages back (write-only opens need read access)
    // and handles O_APPEND itself.
    if (this.opts.writeback) {
      if ((f & O_ACCMODE) === O_WRONLY) f = (f & ~O_ACCMODE) | O_RDWR;
      f &= ~O_APPEND;
    }
    return f | O_NOFOLLOW;
  }

  private opened(n: Node, flags: number, fd: number): Opened {
    const writing = (flags & O_ACCMODE) !== O_RDONLY;
    if (writing) n.writers++;
    return {
      fd, directIo: this.opts.directRead && !writing && n.writers === 0, keepCache: !writing && n.writers === 0,
      passthrough: this.opts.passthrough && n.type === S_IFREG,
    };
  }

  open(nodeid: number, flags: number): Opened {
    const n = this.node(nodeid);
    const fd = check(this.at(n, (dfd, name) => openNoatime(dfd, name, this.openFlags(flags), 0)));
    // a passthrough file's reads are the kernel's, on a mount clone carrying this policy
    const passthrough = this.opts.passthrough && n.type === S_IFREG;
    if (!passthrough && (flags & O_ACCMODE) === O_RDONLY && this.wantsAtime(n)) this.at(n, (dfd, name) => (touchAtime(dfd, name), 0));
    return this.opened(n, flags, fd);
  }

  /** Does an access now move the atime, under this mount's policy (fuse/atime.ts)? */
  private wantsAtime(n: Node): boolean {
    if (this.opts.atime.mode === 'noatime') return false;
    try {
      return wantsAtime(this.opts.atime, this.stat(n), n.type === S_IFDIR);
    } catch {
      return false;
    }
  }

  create(parent: number, name: string, mode: number, flags: number, caller: Caller): { entry: Entry; opened: Opened } {
    const p = this.node(parent);
    const dfd = this.dirFd(p);
    const m = creationMode(dfd, mode, caller.umask);
    const fd = asCaller(this.id, caller, () => check(native.openat(dfd, name, this.openFlags(flags) | O_CREAT, m)));
    try {
      const entry = this.mustEntry(p, name);
      return { entry, opened: this.opened(this.node(entry.nodeid), flags, fd) };
    } catch (e) {
      native.close(fd);
      throw e;
    }
  }

  opendir(nodeid: number): DirOpened {
    this.dirFd(this.node(nodeid));
    // kept across opens only with a long timeout: the kernel drops it when the dir's mtime moves
    return { cacheReaddir: true, keepCache: this.opts.timeout >= 3600 };
  }

  readdir(nodeid: number): DirList {
    const n = this.node(nodeid);
    if (this.wantsAtime(n)) this.at(n, (dfd, name) => (touchAtime(dfd, name), 0));
    const r = native.readdir(this.dirFd(n));
    if (typeof r === 'number') throw new FsError(-r);
    return r;
  }

  fsyncdir(nodeid: number, datasync: boolean): void {
    const fd = check(native.openat(this.dirFd(this.node(nodeid)), '.', O_RDONLY | O_DIRECTORY, 0));
    const r = native.fsync(fd, datasync ? 1 : 0);
    native.close(fd);
    check(r);
  }

  statfs(): Float64Array {
    const out = new Float64Array(STATFS_LEN);
    check(native.fstatvfs(this.rootFd, out));  // fstatfs accepts O_PATH fds
    return out;
  }

  // Xattrs by path: /proc/self/fd/<dirfd>/<name> with the l* calls, so the last component is
  // not followed; the root through its own fd.
  private xattr(nodeid: number, fn: (path: string, follow: number) => number | Buffer): number | Buffer {
    const n = this.node(nodeid);
    let out: number | Buffer = 0;
    const r = this.at(n, (fd, name) => {
      out = fn(name ? `/proc/self/fd/${fd}/${name}` : `/proc/self/fd/${fd}`, name ? 0 : 1);
      return typeof out === 'number' ? out : 0;
    });
    return r < 0 ? r : out;
  }

  setxattr(nodeid: number, name: string, value: Buffer, flags: number): void {
    check(this.xattr(nodeid, (p, f) => native.setxattr(p, name, value, flags, f)) as number);
  }

  getxattr(nodeid: number, name: string): Buffer {
    const r = this.xattr(nodeid, (p, f) => native.getxattr(p, name, f));
    if (typeof r === 'number') throw new FsError(-r);
    return r;
  }

  listxattr(nodeid: number): string[] {
    const r = this.xattr(nodeid, (p, f) => native.listxattr(p, f));
    if (typeof r === 'number') throw new FsError(-r);
    return r.toString('utf8').split('\0').filter((s) => s.length > 0);
  }

  removexattr(nodeid: number, name: string): void {
    check(this.xattr(nodeid, (p, f) => native.removexattr(p, name, f)) as number);
  }

  /** Nodes the daemon knows and directory fds it holds; for tests and `doctor`. */
  get counts(): { nodes: number; dirFds: number } {
    return { nodes: this.nodes.size, dirFds: this.dirFds.size };
  }
}
