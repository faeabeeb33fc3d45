// A mounted FUSE session: turns the requests the native binding hands to the JS thread into
// calls on a Filesystem, and the results into replies. One process may serve many sessions.
import { env } from '../mount/env';
import { native, type SessionConfig } from '../sys/native';
import type { DirList } from '../sys/native';
import { FsError } from '../sys/errors';
import { spawn } from 'node:child_process';
import { LRUCache } from 'lru-cache';
import { E, MNT_DETACH } from '../sys/constants';
import { ST_INO, newStat } from '../sys/stat';
import type { Caller, Entry, Filesystem, Opened } from './filesystem';
import { DirentWriter } from './dirents';
import { uringOption } from './uring-mode';
import { A_1, A_2, A_3, A_4, A_GID, A_INO, A_PID, A_SID, A_UID, A_UMASK, OP } from './ops';

export interface SessionOptions extends SessionConfig {
  /** -o options handed to libfuse / the kernel (fsname, subtype, allow_other, ro, ...). */
  mountOptions: string[];
  entryTimeout: number;
  attrTimeout: number;
  negativeTimeout: number;
  debug?: boolean;
  /** Answer OPENDIR with ENOSYS: the kernel then sends neither OPENDIR nor RELEASEDIR (one
   * round trip less per directory walked) and keeps listings cached; only for long timeouts,
   * since a listing can then not be forced to be read anew at open. */
  noOpendir?: boolean;
}

interface DirHandle {
  nodeid: number;
  list: DirList | null;
}

const NAME_MAX = 255;
const sessions = new Map<number, Session>();
const args = native.jobArgs;
let dispatcherSet = false;

// FOPEN flags understood by replyOpen (native/src/session.c fi_from)
const F_DIRECT_IO = 1, F_KEEP_CACHE = 2, F_CACHE_READDIR = 4, F_NOSYNC = 16, F_PASSTHROUGH = 64;

function fopenFlags(o: Opened): number {
  return (o.directIo ? F_DIRECT_IO : 0) | (o.keepCache ? F_KEEP_CACHE : 0) | (o.noSync ? F_NOSYNC : 0) |
    (o.passthrough ? F_PASSTHROUGH : 0);
}

function errnoOf(e: unknown): number {
  if (e instanceof FsError) return e.errno;
  const code = (e as { errno?: number; code?: string })?.errno;
  if (typeof code === 'number') return Math.abs(code);
  process.stderr.write(`layerfs: internal error: ${(e as Error)?.stack ?? String(e)}\n`);
  return E.EIO;
}

function dispatch(op: number, req: number, s1?: string, s2?: string, buf?: Buffer): void {
  const s = sessions.get(args[A_SID]);
  if (!s) {
    if (req >= 0) native.replyErr(req, E.ENODEV);
    return;
  }
  if (trace) {
    const t = process.hrtime.bigint();
    s.handle(op, req, s1, s2, buf);
    const e = trace.get(op) ?? { n: 0, ns: 0n };
    e.n++;
    e.ns += process.hrtime.bigint() - t;
    trace.set(op, e);
    return;
  }
  s.handle(op, req, s1, s2, buf);
}

// FUSE opcodes by name, for the request counts printed on SIGUSR2.
const FUSE_OPS: Record<number, string> = {
  1: 'LOOKUP', 2: 'FORGET', 3: 'GETATTR', 4: 'SETATTR', 5: 'READLINK', 6: 'SYMLINK', 8: 'MKNOD', 9: 'MKDIR',
  10: 'UNLINK', 11: 'RMDIR', 12: 'RENAME', 13: 'LINK', 14: 'OPEN', 15: 'READ', 16: 'WRITE', 17: 'STATFS',
  18: 'RELEASE', 20: 'FSYNC', 21: 'SETXATTR', 22: 'GETXATTR', 23: 'LISTXATTR', 24: 'REMOVEXATTR', 25: 'FLUSH',
  26: 'INIT', 27: 'OPENDIR', 28: 'READDIR', 29: 'RELEASEDIR', 30: 'FSYNCDIR', 34: 'ACCESS', 35: 'CREATE',
  42: 'BATCH_FORGET', 43: 'FALLOCATE', 44: 'READDIRPLUS', 45: 'RENAME2', 46: 'LSEEK', 47: 'COPY_FILE_RANGE', 52: 'STATX',
};

/** One line per session: every opcode received so far, e.g. "READ=0 WRITE=0 OPEN=3". */
export function requestCounts(sid: number): string {
  const c = native.opCounts(sid);
  return [15, 16, ...Object.keys(FUSE_OPS).map(Number).filter((o) => o !== 15 && o !== 16 && c[o] > 0)]
    .map((o) => `${FUSE_OPS[o]}=${c[o]}`).join(' ') + ` io_uring=${c[64]}`;
}

// SIGUSR2: each session's request counts on stderr (a foreground daemon's, for tests and -f users).
process.on('SIGUSR2', () => {
  for (const s of sessions.values()) process.stderr.write(`layerfs requests ${s.mountpoint}: ${requestCounts(s.sid)}\n`);
});

// LAYERFS_TRACE=1: time spent in JS per operation, printed to stderr on SIGUSR2 and at exit.
const trace = process.env.LAYERFS_TRACE ? new Map<number, { n: number; ns: bigint }>() : null;
if (trace) {
  const dump = (): void => {
    const names = Object.fromEntries(Object.entries(OP).map(([k, v]) => [v, k]));
    for (const [op, e] of [...trace].sort((a, b) => Number(b[1].ns - a[1].ns))) {
      process.stderr.write(`layerfs trace ${names[op] ?? op}: ${e.n} calls, ${(Number(e.ns) / e.n / 1000).toFixed(1)} µs each\n`);
    }
  };
  process.on('SIGUSR2', dump);
  process.on('exit', dump);
}

export class Session {
  readonly sid: number;
  private readonly dirs = new Map<number, DirHandle>();
  private readonly listings = new LRUCache<number, DirHandle>({ max: 256 });
  private nextDir = 1;
  private endedResolve!: () => void;
  private readyResolve!: () => void;
  private readyReject!: (e: Error) => void;
  /** Resolves once the kernel's INIT has been answered: the mount answers requests. */
  readonly ready: Promise<void>;
  /** Resolves when the kernel connection ends (unmounted, aborted). */
  readonly ended: Promise<void>;
  private readonly statfsBuf = new Float64Array(11);

  constructor(readonly fs: Filesystem, readonly mountpoint: string, readonly opts: SessionOptions) {
    if (!dispatcherSet) {
      native.setDispatcher(dispatch);
      dispatcherSet = true;
    }
    this.ready = new Promise((resolve, reject) => {
      this.readyResolve = resolve;
      this.readyReject = reject;
    });
    this.ended = new Promise((r) => (this.endedResolve = r));
    const argv: string[] = [];
    if (opts.mountOptions.length) argv.push('-o', opts.mountOptions.join(','));
    if (opts.debug) argv.push('-d');
    // LAYERFS_FUSE_MINOR=38: behave as on a kernel that offers no more (tests of older kernels)
    const maxMinor = Number(env('LAYERFS_FUSE_MINOR') ?? 0) || 0;
    this.sid = native.mount(mountpoint, argv, { ...opts, maxMinor, uring: opts.uring ?? uringOption(null) });
    sessions.set(this.sid, this);
    fs.attach?.({
      invalAttr: (nodeid) => void native.notifyInvalAttr(this.sid, nodeid),
      invalEntry: (parent, name) => native.notifyInvalEntry(this.sid, parent, name),
      invalData: (nodeid) => native.notifyInvalInode(this.sid, nodeid, 0, 0),
    });
  }

  /** Detaches the mount; `ended` resolves once the kernel lets go of the connection (the
   * JS thread keeps serving until then: a busy mount finishes its requests). */
  unmount(): void {
    if (process.geteuid?.() === 0) native.umount2(this.mountpoint, MNT_DETACH);
    else spawn('fusermount3', ['-u', '-z', this.mountpoint], { stdio: 'ignore' }).on('error', () => {});
  }

  /** Open file handles of this mount (layerfs ps). */
  get openHandles(): number {
    return native.opCounts(this.sid)[65];
  }

  invalEntry(parent: number, name: string): void {
    native.notifyInvalEntry(this.sid, parent, name);
  }

  invalInode(nodeid: number): void {
    native.notifyInvalInode(this.sid, nodeid, 0, 0);
  }

  handle(op: number, req: number, s1?: string, s2?: string, buf?: Buffer): void {
    const ino = args[A_INO];
    const caller: Caller = { uid: args[A_UID], gid: args[A_GID], pid: args[A_PID], umask: args[A_UMASK] };
    const a1 = args[A_1], a2 = args[A_2], a3 = args[A_3], a4 = args[A_4];
    try {
      switch (op) {
        case OP.FORGET:
          this.fs.forget(ino, a1);
          return;
        case OP.INIT:
          if (args[8] < 0) {  // e.g. passthrough=on and the kernel has none: the mount fails
            this.readyReject(new Error(s1 ?? 'INIT failed'));
            return;
          }
          this.fs.init?.({ protoMinor: a2, want: a3, maxWrite: a4 });
          this.readyResolve();
          return;
        case OP.ENDED:
          sessions.delete(this.sid);
          native.destroy(this.sid);
          this.endedResolve();
          return;
        case OP.LOOKUP:
          // as the kernel's filesystems: an over-long name fails before anything is probed
          if (Buffer.byteLength(s1!) > (this.fs.nameMax ?? NAME_MAX)) throw new FsError(E.ENAMETOOLONG);
          return this.settle(req, this.fs.lookup(ino, s1!, caller), (e) => this.replyEntry(req, e));
        case OP.GETATTR:
          return this.settle(req, this.fs.getattr(ino, a1), (r) =>
            native.replyAttr(req, r.attr, r.timeout ?? this.opts.attrTimeout));
        case OP.SETATTR:
          return this.settle(req, this.fs.setattr(ino, {
            valid: a1, mode: a2, uid: a3, gid: a4, size: args[8], atime: args[9], atimeNs: args[10],
            mtime: args[11], mtimeNs: args[12], fh: args[13],
          }, caller), (r) => native.replyAttr(req, r.attr, r.timeout ?? this.opts.attrTimeout));
        case OP.READLINK:
          return this.settle(req, this.fs.readlink(ino), (t) => native.replyReadlink(req, t));
        case OP.MKNOD:
          return this.settle(req, this.fs.mknod(ino, s1!, a1, a2, caller), (e) => this.replyEntry(req, e));
        case OP.MKDIR:
          return this.settle(req, this.fs.mkdir(ino, s1!, a1, caller), (e) => this.replyEntry(req, e));
        case OP.UNLINK:
          return this.settle(req, this.fs.unlink(ino, s1!, caller), () => native.replyErr(req, 0));
        case OP.RMDIR:
          return this.settle(req, this.fs.rmdir(ino, s1!, caller), () => native.replyErr(req, 0));
        case OP.SYMLINK:
          return this.settle(req, this.fs.symlink(s2!, ino, s1!, caller), (e) => this.replyEntry(req, e));
        case OP.RENAME:
          return this.settle(req, this.fs.rename(ino, s1!, a1, s2!, a2, caller), () => native.replyErr(req, 0));
        case OP.LINK:
          return this.settle(req, this.fs.link(ino, a1, s1!, caller), (e) => this.replyEntry(req, e));
        case OP.OPEN:
          return this.settle(req, this.fs.open(ino, a1, caller), (o) => {
            const fh = native.replyOpen(req, o.fd ?? -(o.jsHandle as number), fopenFlags(o), ino, a1);
            if (fh === -E.ESTALE) this.fs.renode?.(ino);
            else if (fh) o.onOpened?.(fh);
          });
        case OP.CREATE:
          return this.settle(req, this.fs.create(ino, s1!, a1, a2, caller), ({ entry, opened }) => {
            const fh = native.replyCreate(req, entry.nodeid, entry.generation ?? 0,
              entry.entryTimeout ?? this.opts.entryTimeout, entry.attrTimeout ?? this.opts.attrTimeout,
              entry.attr, opened.fd ?? -(opened.jsHandle as number), fopenFlags(opened), a2);
            if (!fh) this.fs.forget(entry.nodeid, 1);  // the kernel never saw the entry
          });
        case OP.OPENDIR:
          if (this.opts.noOpendir) {
            native.replyErr(req, E.ENOSYS);
            return;
          }
          return this.settle(req, this.fs.opendir(ino, a1, caller), (d) => {
            const fh = this.nextDir++;
            this.dirs.set(fh, { nodeid: ino, list: null });
            const fl = (d.cacheReaddir ? F_CACHE_READDIR : 0) | (d.keepCache ? F_KEEP_CACHE : 0);
            if (native.replyOpendir(req, fh, fl) !== 0) this.dirs.delete(fh);
          });
        case OP.READDIR:
        case OP.READDIRPLUS:
          return this.readdir(req, ino, a1, a2, a3, op === OP.READDIRPLUS, caller);
        case OP.RELEASEDIR:
          this.dirs.delete(a1);
          native.replyErr(req, 0);
          return;
        case OP.FSYNCDIR:
          return this.settle(req, this.fs.fsyncdir?.(ino, a2 !== 0), () => native.replyErr(req, 0));
        case OP.STATFS:
          return this.settle(req, this.fs.statfs(ino), (st) => native.replyStatfs(req, st));
        case OP.SETXATTR:
          return this.settle(req, this.fs.setxattr(ino, s1!, buf ?? Buffer.alloc(0), a1, caller),
            () => native.replyErr(req, 0));
        case OP.GETXATTR:
          return this.settle(req, this.fs.getxattr(ino, s1!, caller), (v) => this.replySized(req, v, a1));
        case OP.LISTXATTR:
          return this.settle(req, this.fs.listxattr(ino, caller), (names) =>
            this.replySized(req, Buffer.from(names.map((n) => n + '\0').join('')), a1));
        case OP.REMOVEXATTR:
          return this.settle(req, this.fs.removexattr(ino, s1!, caller), () => native.replyErr(req, 0));
        case OP.ACCESS:
          return this.settle(req, this.fs.access?.(ino, a1, caller), () => native.replyErr(req, 0));
        case OP.READ:
          return this.settle(req, this.need(this.fs.read)(a1, a2, a3), (b) => native.replyBuf(req, b));
        case OP.WRITE:
          return this.settle(req, this.need(this.fs.write)(a1, buf!, a3), (n) => native.replyWrite(req, n));
        case OP.FLUSH:
          return this.settle(req, this.fs.flush?.(a1), () => native.replyErr(req, 0));
        case OP.RELEASE:
          return this.settle(req, this.fs.release?.(a1), () => native.replyErr(req, 0));
        case OP.FSYNC:
          return this.settle(req, this.fs.fsync?.(a1, a2 !== 0), () => native.replyErr(req, 0));
        case OP.FALLOCATE:
          return this.settle(req, this.need(this.fs.fallocate)(a1, a2, a3, a4), () => native.replyErr(req, 0));
        default:
          if (req >= 0) native.replyErr(req, E.ENOSYS);
      }
    } catch (e) {
      if (req >= 0) native.replyErr(req, errnoOf(e));
    }
  }

  private need<F extends (...a: never[]) => unknown>(f: F | undefined): F {
    if (!f) throw new FsError(E.ENOSYS);
    return f.bind(this.fs) as F;
  }

  /** Replies now for a plain value, or when a promise settles. */
  private settle<T>(req: number, v: T | Promise<T>, reply: (v: T) => unknown): void {
    if (v instanceof Promise) {
      v.then((r) => reply(r), (e) => native.replyErr(req, errnoOf(e)));
    } else {
      reply(v);
    }
  }

  private replyEntry(req: number, e: Entry | null): void {
    if (!e) {
      if (this.opts.negativeTimeout > 0) {
        native.replyEntry(req, 0, 0, this.opts.negativeTimeout, 0, newStat());
      } else native.replyErr(req, E.ENOENT);
      return;
    }
    if (native.replyEntry(req, e.nodeid, e.generation ?? 0, e.entryTimeout ?? this.opts.entryTimeout,
      e.attrTimeout ?? this.opts.attrTimeout, e.attr) !== 0) {
      this.fs.forget(e.nodeid, 1);  // interrupted: the kernel did not take the reference
    }
  }

  // getxattr/listxattr protocol: size 0 asks for the length only.
  private replySized(req: number, v: Buffer, size: number): void {
    if (size === 0) native.replyXattr(req, v.length);
    else if (v.length > size) native.replyErr(req, E.ERANGE);
    else native.replyBuf(req, v);
  }

  private readdir(req: number, ino: number, fh: number, size: number, off: number, plus: boolean,
    caller: Caller): void {
    let d = this.dirs.get(fh);
    if (!d && fh === 0 && this.opts.noOpendir) {
      // no handles: the listing read at offset 0 serves the offsets that follow
      d = this.listings.get(ino) ?? { nodeid: ino, list: null };
      this.listings.set(ino, d);
    }
    if (!d) {
      native.replyErr(req, E.EBADF);
      return;
    }
    const fill = (list: DirList): void => {
      d.list = list;
      const w = new DirentWriter(size);
      const { names, inos, types } = list;
      for (let i = off; i < names.length; i++) {
        const name = names[i];
        if (!plus) {
          if (!w.add(name, inos[i], types[i], i + 1)) break;
          continue;
        }
        if (!w.fits(name, true)) break;
        if (name === '.' || name === '..') {
          const st = newStat();
          st[ST_INO] = inos[i];
          st[1] = types[i] << 12;
          w.addPlus(name, 0, 0, 0, 0, st, i + 1);
          continue;
        }
        let e: Entry | null = null;
        try {
          const r = this.fs.lookup(ino, name, caller);
          if (r instanceof Promise) throw new FsError(E.EIO);  // plus needs synchronous lookups
          e = r;
        } catch {
          e = null;
        }
        if (!e) continue;  // gone since the listing was read
        w.addPlus(name, e.nodeid, e.generation ?? 0, e.entryTimeout ?? this.opts.entryTimeout,
          e.attrTimeout ?? this.opts.attrTimeout, e.attr, i + 1);
      }
      native.replyBuf(req, w.buf, w.pos);
    };
    if (d.list && off !== 0) {
      fill(d.list);
      return;
    }
    this.settle(req, this.fs.readdir(ino, caller), fill);
  }
}
