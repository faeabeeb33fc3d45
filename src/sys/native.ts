// Typed face of the native addon (native/src). Syscalls return their result or -errno.
import * as path from 'node:path';

export interface DirList {
  names: string[];
  inos: Float64Array;
  types: Uint8Array;
}

export interface SessionConfig {
  writeback?: boolean;
  /** FUSE passthrough: 0 off, 1 when offered, 2 required (fuse/passthrough-mode.ts). */
  passthrough?: 0 | 1 | 2;
  /** max_stack_depth for passthrough: 1, or 2 when backing files live on overlayfs or FUSE. */
  stackDepth?: number;
  /** Speak at most this protocol minor (tests of older kernels: LAYERFS_FUSE_MINOR). */
  maxMinor?: number;
  /** FUSE over io_uring: 0 off, 1 when offered, 2 required (fuse/uring-mode.ts). */
  uring?: 0 | 1 | 2;
  /** Ring entries per queue (one queue per CPU; each entry holds a max_write buffer). */
  uringDepth?: number;
  readdirplus?: 0 | 1 | 2;
  cacheSymlinks?: boolean;
  parallelDirops?: boolean;
  asyncDio?: boolean;
  posixAcl?: boolean;
  killpriv?: boolean;
  debug?: boolean;
  /** Worker threads reading cloned /dev/fuse fds besides the JS thread's own reader (0: none). */
  threads?: number;
  maxWrite?: number;
  maxReadahead?: number;
  /** Serve this /dev/fuse fd, already mounted by the mount helper (the session owns it). */
  fd?: number;
  /** That mount was made by fusermount3 (so fusermount3 unmounts it). */
  byFusermount?: boolean;
}

/** One packet from a mount helper: its fields (null: it hung up), the fds it passed, its creds. */
export type ServicePacket = (conn: number, fields: string[] | null, fds: number[], pid: number, uid: number, gid: number) => void;

export interface Native {
  // session
  jobArgs: Float64Array;
  setDispatcher(fn: (op: number, req: number, s1?: string, s2?: string, buf?: Buffer) => void): void;
  mount(mountpoint: string, args: string[], cfg: SessionConfig): number;
  destroy(sid: number): void;
  sessionFd(sid: number): number;
  /** Requests received per FUSE opcode (index = opcode; 64: how many came through io_uring). */
  opCounts(sid: number): Float64Array;
  replyErr(req: number, errno: number): number;
  replyNone(req: number): void;
  replyEntry(req: number, nodeid: number, gen: number, entryTimeout: number, attrTimeout: number, st: Float64Array): number;
  replyAttr(req: number, st: Float64Array, timeout: number): number;
  replyReadlink(req: number, target: string): number;
  replyOpen(req: number, fd: number, fopen: number, nodeid: number, openFlags: number): number;
  replyCreate(req: number, nodeid: number, gen: number, entryTimeout: number, attrTimeout: number,
    st: Float64Array, fd: number, fopen: number, openFlags: number): number;
  replyOpendir(req: number, fh: number, fopen: number): number;
  replyBuf(req: number, buf: Uint8Array, length?: number): number;
  replyWrite(req: number, count: number): number;
  replyXattr(req: number, size: number): number;
  replyStatfs(req: number, st: Float64Array): number;
  handleFd(fh: number): number;
  handlesOf(nodeid: number): number[];
  retarget(fh: number, fd: number): number;
  handleCount(): number;
  thinAttach(fh: number, dataFd: number, blockSize: number, blocks: Int32Array, excl: Uint8Array, size: number,
    dev: number, ctl: Int32Array, held: Int32Array, log: Int32Array, lockId: number): number;
  thinLockNew(): number;
  thinLock(lockId: number, on: number): number;
  notifyInvalEntry(sid: number, parent: number, name: string): void;
  notifyInvalAttr(sid: number, nodeid: number): number;
  notifyInvalInode(sid: number, ino: number, off: number, len: number): void;
  notifyDelete(sid: number, parent: number, child: number, name: string): void;
  /** Notifications queued or being written to the kernel. */
  notifyPending(): boolean;
  // syscalls
  openat(dirfd: number, path: string, flags: number, mode: number): number;
  openat2(dirfd: number, path: string, flags: number, mode: number, resolve: number): number;
  close(fd: number): number;
  fstatat(dirfd: number, path: string, flags: number, out: Float64Array): number;
  fstatvfs(fd: number, out: Float64Array): number;
  mknodat(dirfd: number, path: string, mode: number, rdev: number): number;
  mkdirat(dirfd: number, path: string, mode: number): number;
  unlinkat(dirfd: number, path: string, flags: number): number;
  renameat2(olddirfd: number, oldpath: string, newdirfd: number, newpath: string, flags: number): number;
  linkat(olddirfd: number, oldpath: string, newdirfd: number, newpath: string, flags: number): number;
  symlinkat(target: string, dirfd: number, path: string): number;
  readlinkat(dirfd: number, path: string): string | number;
  fchownat(dirfd: number, path: string, uid: number, gid: number, flags: number): number;
  fchmodat(dirfd: number, path: string, mode: number, flags: number): number;
  fchmod(fd: number, mode: number): number;
  utimensat(dirfd: number, path: string, as: number, ans: number, ms: number, mns: number, flags: number): number;
  ftruncate(fd: number, size: number): number;
  fallocate(fd: number, mode: number, off: number, len: number): number;
  copyFileRange(fdIn: number, offIn: number, fdOut: number, offOut: number, len: number): number;
  ficlone(dst: number, src: number): number;
  lseek(fd: number, off: number, whence: number): number;
  fsync(fd: number, datasync: number): number;
  flock(fd: number, op: number): number;
  /** A private detached clone of the mount at dirfd with MOUNT_ATTR_* set/cleared; fd or -errno. */
  cloneMount(dirfd: number, attrSet: number, attrClr: number): number;
  getxattr(path: string, name: string, follow: number): Buffer | number;
  listxattr(path: string, follow: number): Buffer | number;
  setxattr(path: string, name: string, value: Buffer, flags: number, follow: number): number;
  removexattr(path: string, name: string, follow: number): number;
  /** Reads with O_NOATIME where the daemon may (fuse/atime.ts decides when atime moves). */
  readdir(dirfd: number): DirList | number;
  umount2(path: string, flags: number): number;
  raiseNofile(): number;
  trimMemory(): number;
  makedev(major: number, minor: number): number;
  majorMinor(dev: number): [number, number];
  keepCapsOnFsuid(): number;
  setfsugid(uid: number, gid: number): number;
  // the resident service's socket (native/src/service.c)
  serviceListen(path: string, onPacket: ServicePacket): number;
  serviceStop(): void;
  serviceSend(conn: number, fields: string[]): number;
  serviceClose(conn: number): void;
}

function load(): Native {
  // dist/src/sys or src/sys -> the repository root, then native/build
  const candidates = [
    path.resolve(__dirname, '../../native/build/Release/layerfs.node'),
    path.resolve(__dirname, '../../../native/build/Release/layerfs.node'),
  ];
  let last: unknown;
  for (const c of candidates) {
    try {
      return require(c) as Native;
    } catch (e) {
      last = e;
    }
  }
  throw new Error(`layerfs: native addon not built (run 'make build'): ${String(last)}`);
}

export const native: Native = load();
