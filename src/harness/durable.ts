// What a harness mount would keep at a power loss. Beside the live union (what every process
// sees) the daemon keeps a second union over BASE that no mount serves: the durable view. An
// operation changes the live view at once; it reaches the durable view at its sync point, as
// the model says:
//  - posix (POSIX-strict): a file's data, size and attributes are durable after fsync/fdatasync
//    of that file (or an O_SYNC/O_DSYNC write); a directory's entries after fsync of that
//    directory — with every earlier pending change of the directories that change touched
//    (a rename is one change of both its dirs). fsync of a file never makes its name durable.
//  - ext4 (data=ordered, auto_da_alloc): metadata is one ordered journal: any fsync, fdatasync
//    or directory fsync commits every namespace and attribute change made before it. File data
//    and size are durable only by that file's own sync — except that renaming a file over an
//    existing one, and closing a file truncated to 0, first make its data durable.
// A crash keeps the durable view (and, as asked, some of the unsynced writes: writes.ts) and
// drops the rest; the durable view's upper then becomes the mount's.
// Objects are known by their live st_ino; one untouched since the mount is where the durable
// view has it: under its parent's durable dir, by the same name.
import * as fs from 'node:fs';
import { native } from '../sys/native';
import { FsError, errnoName } from '../sys/errors';
import { AT_EMPTY_PATH, O_DIRECTORY, O_PATH, O_RDONLY, O_WRONLY, RENAME_EXCHANGE, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../sys/constants';
import { ST_ATIME, ST_ATIME_NS, ST_GID, ST_INO, ST_MODE, ST_MTIME, ST_MTIME_NS, ST_NLINK, ST_RDEV, ST_SIZE, ST_UID, newStat, type Stat } from '../sys/stat';
import { SETATTR, ROOT_ID } from '../fuse/ops';
import type { Caller } from '../fuse/filesystem';
import type { Union } from '../union/union';
import { removeTree } from '../union/union';
import { WriteLog, type CrashOpts, type Pending } from './writes';

export type Model = 'posix' | 'ext4';
/** Live files held open at once; past that the least recently written one's unsynced bytes are read into the log. */
const MAX_FOLLOWED = 256;
const DT_DIR = 4;
export const MODELS: Model[] = ['posix', 'ext4'];
/** Objects with no durable name yet (or no more), in the durable view's root; gone at a crash. */
const ORPHANS = '.layerfs-harness-orphans';

interface Birth { type: number; mode: number; uid: number; gid: number; rdev: number; target?: string }

export interface Obj {
  id: number;
  type: number;           // S_IFMT bits
  dnode: number;          // its node in the durable union (0: nothing of it is durable)
  dlinks: number;         // (files) durable names; 0 with a dnode: held in the orphan dir
  birth: Birth | null;    // how it is made in the durable view when it has no object there
  attrs: Stat | null;     // its live attributes when last changed
  pendingAdds: number;    // names given to it that are not durable yet
  liveFd: number;         // the live file (own open), to copy its data from at its sync point
  trunc0: boolean;        // (ext4) truncated to 0 since its last sync
  xattrs: Map<string, Buffer | null> | null;   // extended attributes set (or removed: null) since its last sync
}

interface EntryOp { dirs: Obj[]; text: string; apply(): void }

export class Durability {
  private readonly objs = new Map<number, Obj>();
  private readonly byIno = new Map<number, Obj>();
  private ops: EntryOp[] = [];
  /** Objects whose attributes (or xattrs) changed since their sync point. */
  private readonly attrDirty = new Set<Obj>();
  /** Files with unsynced writes whose live file the model holds open (at most MAX_FOLLOWED). */
  private readonly followed = new Set<Obj>();
  private nextId = 1;
  private orphNode = 0;
  private readonly root: Obj;
  readonly log: WriteLog;
  /** Durable-view operations that failed (a model bug if any: shown in the status). */
  readonly errors: string[] = [];

  constructor(private readonly live: Union, private readonly du: Union, readonly model: Model, spillPath: string, private readonly durableUpper: string) {
    this.log = new WriteLog(spillPath);
    this.root = this.adopt(live.inoOf(ROOT_ID), S_IFDIR, ROOT_ID, 1);
  }

  private adopt(ino: number, type: number, dnode: number, dlinks: number): Obj {
    const o: Obj = { id: this.nextId++, type, dnode, dlinks, birth: null, attrs: null, pendingAdds: 0, liveFd: -1, trunc0: false, xattrs: null };
    this.objs.set(o.id, o);
    this.byIno.set(ino, o);
    return o;
  }

  // ---- objects ----

  /** The object of a node the kernel knows. */
  obj(nodeid: number): Obj {
    const known = this.byIno.get(this.live.inoOf(nodeid));
    if (known) return known;
    const chain = this.live.chainOf(nodeid) ?? [];
    let k = chain.length - 1;
    while (k >= 0 && !this.byIno.has(chain[k].ino)) k--;
    let cur = k >= 0 ? this.byIno.get(chain[k].ino)! : this.root;
    for (let i = k + 1; i < chain.length; i++) {
      // untouched since the mount: the durable view has it under its parent's durable dir
      const e = cur.dnode ? this.du.lookup(cur.dnode, chain[i].name) : null;
      cur = e?.nodeid ? this.adopt(chain[i].ino, e.attr[ST_MODE] & S_IFMT, e.nodeid, e.attr[ST_NLINK]) : this.adopt(chain[i].ino, chain[i].type, 0, 0);
    }
    return cur;
  }

  /** The object a name of a known dir shows, or null. */
  objAt(parent: number, name: string): Obj | null {
    let e;
    try {
      e = this.live.lookup(parent, name);
    } catch {
      return null;
    }
    if (!e?.nodeid) return null;
    try {
      return this.obj(e.nodeid);
    } finally {
      this.live.forget(e.nodeid, 1);
    }
  }

  // ---- live changes (called once each succeeded) ----

  created(parent: Obj, name: string, attr: Stat, target?: string): Obj {
    const o = this.adopt(attr[ST_INO], attr[ST_MODE] & S_IFMT, 0, 0);
    o.birth = { type: o.type, mode: attr[ST_MODE] & 0o7777, uid: attr[ST_UID], gid: attr[ST_GID], rdev: attr[ST_RDEV], target };
    o.attrs = attr;
    this.added(parent, name, o);
    return o;
  }

  added(parent: Obj, name: string, o: Obj): void {
    o.pendingAdds++;
    this.pend([parent], `add ${name}`, () => this.add(parent, name, o));
  }

  removed(parent: Obj, name: string, o: Obj): void {
    // an rmdir also changes the dir itself: its earlier pending entries go first
    this.pend(o.type === S_IFDIR ? [parent, o] : [parent], `remove ${name}`, () => this.remove(parent, name, o));
  }

  renamed(p: Obj, name: string, q: Obj, newname: string, o: Obj, replaced: Obj | null, flags: number): void {
    if (this.model === 'ext4' && replaced?.type === S_IFREG && o.type === S_IFREG && !(flags & RENAME_EXCHANGE)) {
      this.syncData(o);   // auto_da_alloc: the new file's data reaches the disk before the rename commits
    }
    const dirs = [p, q];
    if (replaced?.type === S_IFDIR) dirs.push(replaced);
    this.pend(dirs, `rename ${name} ${newname}`, () => this.rename(p, name, q, newname, replaced, flags));
  }

  /** New attributes (mode, owner, times) of o: durable at its sync point. */
  changed(o: Obj, attr: Stat): void {
    o.attrs = attr;
    this.attrDirty.add(o);
  }

  /** A write of len bytes at off is about to reach o's live file (fd: the caller's handle). */
  beforeWrite(o: Obj, off: number, len: number, fd: number): void {
    this.keepFd(o, fd);
    if (o.liveFd >= 0) this.log.beforeWrite(o.id, o.liveFd, off, len);
  }


  /** An extended attribute of o set (value) or removed (null): durable with its attributes. */
  xattr(o: Obj, name: string, value: Buffer | null): void {
    (o.xattrs ??= new Map()).set(name, value && Buffer.from(value));
    this.attrDirty.add(o);
  }

  wrote(o: Obj, off: number, n: number): void {
    if (o.liveFd >= 0) this.log.wrote(o.id, off, n);
  }

  /** o's live file is about to get this size (fd: a handle's, or an open of it for the call). */
  beforeResize(o: Obj, size: number, fd: () => number): void {
    if (o.liveFd < 0) this.keepFd(o, fd());
    if (o.liveFd >= 0) this.log.beforeResize(o.id, o.liveFd, size);
  }

  resized(o: Obj, size: number, fd = -1): void {
    this.keepFd(o, fd);
    if (o.liveFd < 0) return;
    this.log.resized(o.id, size);
    if (size === 0) o.trunc0 = true;
  }

  /** A handle of o was closed. */
  closed(o: Obj): void {
    if (this.model === 'ext4' && o.trunc0) this.syncData(o);   // auto_da_alloc: truncate, rewrite, close
  }

  private keepFd(o: Obj, fd: number): void {
    if (o.liveFd >= 0) {
      // the most recently used last
      this.followed.delete(o);
      this.followed.add(o);
      return;
    }
    if (fd < 0) return;
    // an own open of the live file: the data copy at the sync point outlives the caller's handle
    const own = native.openat(-100, `/proc/self/fd/${fd}`, O_RDONLY, 0);
    if (own < 0) {
      this.errors.push(`object ${o.id}: cannot open its live file to follow its writes (errno ${-own})`);
      return;
    }
    o.liveFd = own;
    this.followed.add(o);
    if (this.followed.size > MAX_FOLLOWED) {
      // the least recently written file is no longer followed: its unsynced bytes are read into the log
      const old = this.followed.values().next().value as Obj;
      this.unfollow(old, true);
    }
  }

  private unfollow(o: Obj, keepData: boolean): void {
    this.followed.delete(o);
    if (o.liveFd < 0) return;
    if (keepData) this.log.materialize(o.id, o.liveFd);
    native.close(o.liveFd);
    o.liveFd = -1;
  }

  // ---- sync points ----

  fsyncFile(o: Obj): void {
    if (this.model === 'ext4') this.commit();
    this.syncData(o);
    this.syncAttrs(o);
  }

  fsyncDir(d: Obj): void {
    if (this.model === 'ext4') this.commit();
    else this.applyClosure(d);
    this.syncAttrs(d);
  }

  /** Everything durable (the harness's `sync`: FUSE never sees sync(2) or syncfs(2)). */
  syncAll(): void {
    this.commit();
    for (const id of this.log.objects()) {
      const o = this.objs.get(id);
      if (o) this.syncData(o);
    }
  }

  private commit(): void {
    const ops = this.ops;
    this.ops = [];
    for (const op of ops) this.apply(op);
    for (const o of [...this.attrDirty]) this.syncAttrs(o);
  }

  /** The pending changes of dir d, and every earlier one they depend on (a shared dir). */
  private applyClosure(d: Obj): void {
    const keys = new Set<Obj>([d]);
    const chosen = new Set<EntryOp>();
    for (let i = this.ops.length - 1; i >= 0; i--) {
      const op = this.ops[i];
      if (!op.dirs.some((x) => keys.has(x))) continue;
      chosen.add(op);
      for (const x of op.dirs) keys.add(x);
    }
    if (!chosen.size) return;
    const rest: EntryOp[] = [];
    for (const op of this.ops) {
      if (chosen.has(op)) this.apply(op);
      else rest.push(op);
    }
    this.ops = rest;
  }

  private pend(dirs: Obj[], text: string, apply: () => void): void {
    this.ops.push({ dirs, text, apply });
  }

  private apply(op: EntryOp): void {
    try {
      op.apply();
    } catch (e) {
      this.errors.push(`${op.text}: ${why(e)}`);
    }
  }

  // ---- the durable view ----

  private callerOf(b: Birth): Caller {
    return { uid: b.uid, gid: b.gid, pid: 0, umask: 0 };
  }

  private orphans(): number {
    if (!this.orphNode) {
      const e = this.du.lookup(ROOT_ID, ORPHANS) ?? this.du.mkdir(ROOT_ID, ORPHANS, 0o700, { uid: 0, gid: 0, pid: 0, umask: 0 });
      this.orphNode = e.nodeid;
    }
    return this.orphNode;
  }

  /** Makes o in the durable dir dn as name (no data yet). */
  private birthAt(dn: number, name: string, o: Obj): void {
    const b = o.birth;
    if (!b) throw new Error(`object ${o.id} has no durable copy and cannot be made`);
    const c = this.callerOf(b);
    let nodeid: number;
    if (b.type === S_IFDIR) nodeid = this.du.mkdir(dn, name, b.mode, c).nodeid;
    else if (b.type === S_IFREG) {
      const r = this.du.create(dn, name, b.mode, O_WRONLY, c);
      if (r.opened.fd !== undefined) native.close(r.opened.fd);
      nodeid = r.entry.nodeid;
    } else if (b.type === S_IFLNK) nodeid = this.du.symlink(b.target ?? '', dn, name, c).nodeid;
    else nodeid = this.du.mknod(dn, name, b.type | b.mode, b.rdev, c).nodeid;
    o.dnode = nodeid;
  }

  /** o's durable node, made nameless (in the orphan dir) if it has none. */
  private born(o: Obj): number {
    if (!o.dnode) {
      this.birthAt(this.orphans(), String(o.id), o);
      o.dlinks = 0;
    }
    return o.dnode;
  }

  private add(p: Obj, name: string, o: Obj): void {
    o.pendingAdds--;
    const dp = this.born(p);
    if (!o.dnode) {
      this.birthAt(dp, name, o);
      o.dlinks = 1;
    } else if (o.type === S_IFDIR || o.dlinks === 0) {
      this.du.rename(this.orphans(), String(o.id), dp, name, 0);
      o.dlinks = 1;
    } else {
      this.du.link(o.dnode, dp, name, this.callerOf(o.birth ?? { type: 0, mode: 0, uid: 0, gid: 0, rdev: 0 }));
      o.dlinks++;
    }
  }

  private remove(p: Obj, name: string, o: Obj): void {
    const dp = this.born(p);
    if (o.type === S_IFDIR) {
      this.du.rmdir(dp, name);
      o.dnode = 0;
    } else if (o.dlinks > 1) {
      this.lessLinks(o, () => this.du.unlink(dp, name));
    } else if (o.pendingAdds > 0 && o.dnode) {
      // another name of it is still to come: its data is kept meanwhile
      this.du.rename(dp, name, this.orphans(), String(o.id), 0);
      o.dlinks = 0;
    } else {
      this.du.unlink(dp, name);
      o.dnode = 0;
      o.dlinks = 0;
    }
  }

  /** A name of a file with several goes (by remove): the node held stays one of the file's. */
  private lessLinks(o: Obj, remove: () => void): void {
    const ino = this.du.getattr(o.dnode).attr[ST_INO];
    remove();
    o.dlinks--;
    // a fixture's hard link has a node per name until copied up: the one held may have gone
    if (!this.du.pathOf(o.dnode)) o.dnode = this.findByIno(ino);   // ('': a node with no name left)
  }

  /** Another name of an inode in the durable view (a walk of it: only when a fixture's hard link lost the name held). */
  private findByIno(ino: number): number {
    const dirs = [ROOT_ID];
    while (dirs.length) {
      const d = dirs.shift()!;
      const l = this.du.readdir(d);
      for (let i = 0; i < l.names.length; i++) {
        const n = l.names[i];
        if (n === '.' || n === '..' || (d === ROOT_ID && n === ORPHANS)) continue;
        if (l.inos[i] !== ino && l.types[i] !== DT_DIR) continue;
        const e = this.du.lookup(d, n);
        if (!e) continue;
        if (e.attr[ST_INO] === ino && (e.attr[ST_MODE] & S_IFMT) === S_IFREG) return e.nodeid;
        if ((e.attr[ST_MODE] & S_IFMT) === S_IFDIR) dirs.push(e.nodeid);
      }
    }
    throw new Error(`no other name of inode ${ino} in the durable view`);
  }

  private rename(p: Obj, name: string, q: Obj, newname: string, replaced: Obj | null, flags: number): void {
    const move = (): void => this.du.rename(this.born(p), name, this.born(q), newname, flags);
    if (!replaced || flags & RENAME_EXCHANGE) return move();
    if (replaced.type !== S_IFDIR && replaced.dlinks > 1) this.lessLinks(replaced, move);
    else {
      move();
      replaced.dnode = 0;
      replaced.dlinks = 0;
    }
  }

  /** o's pending writes reach its durable object: the ranges they wrote, copied from the live
   * file while it is followed; replayed from the log if it no longer is. */
  private syncData(o: Obj): void {
    if (!this.log.has(o.id)) return;
    o.trunc0 = false;
    const live = o.liveFd;
    try {
      if (o.type !== S_IFREG) return;
      const fd = this.du.open(this.born(o), O_WRONLY).fd!;
      try {
        if (live < 0) this.log.replay(o.id, fd);
        else copyPending(this.log.pendingOf(o.id), live, fd);
      } finally {
        native.close(fd);
      }
    } catch (e) {
      this.errors.push(`sync of object ${o.id}: ${why(e)}`);
    } finally {
      this.log.take(o.id);   // (after: a replay reads the spill file, which the last take empties)
      this.unfollow(o, false);
    }
  }

  private syncAttrs(o: Obj): void {
    if (!o.dnode || !this.attrDirty.delete(o)) return;
    const a = o.attrs;
    try {
      if (a && o.type !== S_IFLNK) {
        this.du.setattr(o.dnode, {
          valid: SETATTR.MODE | SETATTR.UID | SETATTR.GID | SETATTR.ATIME | SETATTR.MTIME, mode: a[ST_MODE] & 0o7777, uid: a[ST_UID], gid: a[ST_GID],
          size: 0, atime: a[ST_ATIME], atimeNs: a[ST_ATIME_NS], mtime: a[ST_MTIME], mtimeNs: a[ST_MTIME_NS], fh: 0,
        });
      }
      const root: Caller = { uid: 0, gid: 0, pid: 0, umask: 0 };
      for (const [name, v] of o.xattrs ?? []) {
        if (v) this.du.setxattr(o.dnode, name, v, 0, root);
        else {
          try {
            this.du.removexattr(o.dnode, name);
          } catch { /* never durable in the first place */ }
        }
      }
      o.xattrs = null;
    } catch (e) {
      this.errors.push(`attributes of object ${o.id}: ${why(e)}`);
    }
  }

  // ---- the end ----

  status(): { model: Model; pendingChanges: number; errors: string[] } & ReturnType<WriteLog['stats']> {
    return { model: this.model, pendingChanges: this.ops.length, ...this.log.stats(), errors: this.errors };
  }

  /** The power goes: the kept part of the unsynced writes reaches the durable view, nameless
   * objects go, and the durable view is closed (its upper is what the next mount shows). */
  crash(o: CrashOpts): { kept: number } {
    const units = this.log.survivors(o, (id) => this.objs.get(id)?.liveFd ?? -1);
    const fds = new Map<number, number>();
    let kept = 0;
    try {
      for (const u of units) {
        const x = this.objs.get(u.obj);
        if (!x?.dnode || x.type !== S_IFREG) continue;
        let fd = fds.get(x.id);
        if (fd === undefined) fds.set(x.id, (fd = this.du.open(x.dnode, O_WRONLY).fd!));
        if (u.size !== undefined) fs.ftruncateSync(fd, u.size);
        else fs.writeSync(fd, u.data!, 0, u.data!.length, u.off);
        kept++;
      }
    } finally {
      for (const fd of fds.values()) native.close(fd);
      this.close();
      const up = native.openat(-100, this.durableUpper, O_PATH | O_DIRECTORY, 0);
      if (up >= 0) {
        removeTree(up, ORPHANS);
        native.close(up);
      }
    }
    return { kept };
  }

  close(): void {
    this.log.close();
    for (const o of [...this.followed]) this.unfollow(o, false);
    this.du.close();
  }
}

/** The file's pending writes, made durable: the ranges they wrote copied from the live file, its size set. */
function copyPending(ws: Pending[], live: number, fd: number): void {
  const st = newStat();
  if (native.fstatat(live, '', AT_EMPTY_PATH, st) < 0) throw new Error('cannot stat the live file');
  const size = st[ST_SIZE];
  const ranges = ws.map((w): [number, number] => (w.size !== undefined ? [w.size, size] : [w.off, Math.min(size, w.off + w.len)]))
    .filter(([a, b]) => b > a).sort((a, b) => a[0] - b[0]);
  let end = -1;
  for (const [a, b] of ranges) {
    const from = Math.max(a, end);
    if (b > from) copyRange(live, fd, from, b - from);
    end = Math.max(end, b);
  }
  fs.ftruncateSync(fd, size);
}

/** An error's message, or its errno's name (an FsError may carry no message). */
function why(e: unknown): string {
  return (e as Error).message || (e instanceof FsError ? errnoName(e.errno) : String(e));
}

function copyRange(from: number, to: number, off: number, len: number): void {
  while (len > 0) {
    const n = native.copyFileRange(from, off, to, off, len);
    if (n <= 0) {
      // another filesystem or a kernel without it: plain reads and writes
      const b = Buffer.allocUnsafe(Math.min(len, 1 << 20));
      const r = fs.readSync(from, b, 0, b.length, off);
      if (r <= 0) return;
      fs.writeSync(to, b, 0, r, off);
      off += r;
      len -= r;
      continue;
    }
    off += n;
    len -= n;
  }
}
