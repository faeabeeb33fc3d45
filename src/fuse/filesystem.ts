// The inode-based interface every mode implements, shaped like the FUSE low-level operations.
// Methods are synchronous on the hot path; they throw FsError(errno) to fail. A method may
// return a Promise when it must wait (the session replies when it settles).
import type { DirList } from '../sys/native';
import type { Stat } from '../sys/stat';

export interface Caller {
  uid: number;
  gid: number;
  pid: number;
  /** The caller's umask: creation modes arrive unmasked (see fuse/modes.ts). */
  umask: number;
}

export interface Entry {
  nodeid: number;     // 0 = negative entry (cached ENOENT)
  generation?: number;
  attr: Stat;
  entryTimeout?: number;
  attrTimeout?: number;
}

export interface AttrReply {
  attr: Stat;
  timeout?: number;
}

export interface SetAttr {
  valid: number;      // SETATTR bits
  mode: number;
  uid: number;
  gid: number;
  size: number;
  atime: number;
  atimeNs: number;
  mtime: number;
  mtimeNs: number;
  fh: number;         // 0 when not from an open file
}

/** An open file: a backing fd served in C, or a JS handle id (>0) served by read/write below. */
export interface Opened {
  fd?: number;
  jsHandle?: number;
  directIo?: boolean;
  keepCache?: boolean;
  noSync?: boolean;
  /** Hand the kernel the backing fd (FUSE passthrough) when the session has it. */
  passthrough?: boolean;
  /** Told the kernel's file handle once the open is answered. */
  onOpened?(fh: number): void;
}

export interface DirOpened {
  cacheReaddir?: boolean;
  keepCache?: boolean;
}

export type MaybeAsync<T> = T | Promise<T>;

/** What a filesystem may tell the kernel about changes it made on its own. */
export interface Notifier {
  /** The node's attributes changed (e.g. a directory became merged): drop the cached ones now. */
  invalAttr(nodeid: number): void;
  /** The name no longer means what the kernel cached (sent asynchronously). */
  invalEntry(parent: number, name: string): void;
  /** Attributes and cached data (pages, a directory's listing) are stale (sent asynchronously). */
  invalData(nodeid: number): void;
}

export interface Filesystem {
  /** The longest name in bytes (255 when absent): longer lookups fail with ENAMETOOLONG. */
  readonly nameMax?: number;
  init?(info: { protoMinor: number; want: number; maxWrite: number }): void;
  /** Called once the session exists; one filesystem may be served by several sessions. */
  attach?(n: Notifier): void;
  /** The mount ended: let go of fds and watches (a resident service outlives its mounts). */
  close?(): void;
  lookup(parent: number, name: string, caller: Caller): MaybeAsync<Entry | null>;
  forget(nodeid: number, nlookup: number): void;
  /** The kernel's inode of nodeid cannot serve a new open (it passes another backing file
   * through, e.g. readers opened before a copy-up): give its names a new node. The open was
   * answered ESTALE; the VFS retries it once, looking the name up again. */
  renode?(nodeid: number): void;
  getattr(nodeid: number, fh: number): MaybeAsync<AttrReply>;
  setattr(nodeid: number, set: SetAttr, caller: Caller): MaybeAsync<AttrReply>;
  readlink(nodeid: number): MaybeAsync<string>;
  mknod(parent: number, name: string, mode: number, rdev: number, caller: Caller): MaybeAsync<Entry>;
  mkdir(parent: number, name: string, mode: number, caller: Caller): MaybeAsync<Entry>;
  unlink(parent: number, name: string, caller: Caller): MaybeAsync<void>;
  rmdir(parent: number, name: string, caller: Caller): MaybeAsync<void>;
  symlink(target: string, parent: number, name: string, caller: Caller): MaybeAsync<Entry>;
  rename(parent: number, name: string, newparent: number, newname: string, flags: number, caller: Caller): MaybeAsync<void>;
  link(nodeid: number, newparent: number, newname: string, caller: Caller): MaybeAsync<Entry>;
  open(nodeid: number, flags: number, caller: Caller): MaybeAsync<Opened>;
  create(parent: number, name: string, mode: number, flags: number, caller: Caller): MaybeAsync<{ entry: Entry; opened: Opened }>;
  opendir(nodeid: number, flags: number, caller: Caller): MaybeAsync<DirOpened>;
  /** The whole listing, read when a handle reads offset 0; "." and ".." included. */
  readdir(nodeid: number, caller: Caller): MaybeAsync<DirList>;
  fsyncdir?(nodeid: number, datasync: boolean): MaybeAsync<void>;
  statfs(nodeid: number): MaybeAsync<Float64Array>;
  setxattr(nodeid: number, name: string, value: Buffer, flags: number, caller: Caller): MaybeAsync<void>;
  getxattr(nodeid: number, name: string, caller: Caller): MaybeAsync<Buffer>;
  listxattr(nodeid: number, caller: Caller): MaybeAsync<string[]>;
  removexattr(nodeid: number, name: string, caller: Caller): MaybeAsync<void>;
  access?(nodeid: number, mask: number, caller: Caller): MaybeAsync<void>;
  // JS-served handles (Opened.jsHandle)
  read?(handle: number, size: number, offset: number): MaybeAsync<Buffer>;
  write?(handle: number, data: Buffer, offset: number): MaybeAsync<number>;
  flush?(handle: number): MaybeAsync<void>;
  release?(handle: number): MaybeAsync<void>;
  fsync?(handle: number, datasync: boolean): MaybeAsync<void>;
  fallocate?(handle: number, mode: number, offset: number, length: number): MaybeAsync<void>;
}
