// The mounted pool: MNT/<id> is a file per thin volume, served by JS handles (direct_io: every
// write reaches the pool, so a snapshot taken between requests holds exactly the writes
// acknowledged before it). fsync commits; so does a timer, every second, when something changed.
import { FsError } from '../sys/errors';
import { E, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, S_IFDIR, S_IFREG } from '../sys/constants';
import {
  ST_ATIME, ST_BLKSIZE, ST_BLOCKS, ST_CTIME, ST_GID, ST_INO, ST_MODE, ST_MTIME, ST_NLINK, ST_SIZE, ST_UID,
  STATFS_LEN, newStat, type Stat,
} from '../sys/stat';
import type { DirList } from '../sys/native';
import type { AttrReply, DirOpened, Entry, Filesystem, Notifier, Opened, SetAttr } from '../fuse/filesystem';
import { ROOT_ID, SETATTR } from '../fuse/ops';
import { Pool, ThinError } from './pool';
import { native } from '../sys/native';

const FALLOC_FL_ZERO_RANGE = 0x10;
const NODE_BASE = 2;
const LOG_CAP = 4096;   // mappings the C write path makes before JS must apply them
// ctl[] of the C write path (native thinAttach)
const C_HELD = 0, C_LOGGED = 1;

export interface ThinFsOptions {
  noSpaceTimeoutMs: number;   // queue_if_no_space: how long a write waits for space
}

function fsErr(e: unknown): never {
  if (e instanceof ThinError) throw new FsError(e.errno, e.message);
  throw e;
}

/** What the C fast path reads for one open volume (see native thinAttach). */
interface VolMap {
  blocks: Int32Array;
  excl: Uint8Array;
  fhs: Set<number>;
}

export class ThinFs implements Filesystem {
  private readonly handles = new Map<number, number>();  // handle -> device id
  private readonly fhOf = new Map<number, number>();     // handle -> kernel fh
  private readonly maps = new Map<number, VolMap>();
  private nextHandle = 1;
  private readonly started = Math.floor(Date.now() / 1000);
  private readonly mtimes = new Map<number, number>();
  private notifiers: Notifier[] = [];
  private readonly timer: NodeJS.Timeout;
  // The C write path allocates from blocks held for it and logs what it mapped (ctl: C_*).
  private readonly ctl = new Int32Array(2);
  private readonly held: Int32Array;
  private readonly log = new Int32Array(3 * LOG_CAP);
  // the pool's lock in C (native thinLock): held for writing while JS changes any of the above
  private readonly lockId: number;
  private lockDepth = 0;

  constructor(readonly pool: Pool, private readonly opts: ThinFsOptions) {
    this.timer = setInterval(() => this.tick(), 1000);
    this.timer.unref();
    // enough for a burst of first writes; a small pool keeps most of its blocks to JS
    this.held = new Int32Array(Math.max(1, Math.min(1024, Math.floor(pool.nrBlocks / 16))));
    pool.reclaim = () => this.locked(() => this.unhold());
    this.lockId = native.thinLockNew();
    if (this.lockId < 0) throw new Error(`thin: no lock for the pool's data path (${this.lockId})`);
    pool.listener = {
      mapped: (dev, vb, block, excl) => {
        const m = this.maps.get(dev);
        if (!m || vb >= m.blocks.length) return;
        m.blocks[vb] = block;
        m.excl[vb] = excl ? 1 : 0;
      },
      shared: (dev) => this.maps.get(dev)?.excl.fill(0),
      resized: (dev) => {
        const m = this.maps.get(dev);
        if (!m) return;
        this.maps.delete(dev);
        const fresh = this.buildMap(dev, m.fhs);
        for (const fh of m.fhs) this.attachFh(dev, fh, fresh);
      },
    };
  }

  private buildMap(dev: number, fhs = new Set<number>()): VolMap {
    const d = this.pool.devices.get(dev)!;
    const n = Math.ceil(d.size / this.pool.blockSize);
    const m: VolMap = { blocks: new Int32Array(n).fill(-1), excl: new Uint8Array(n), fhs };
    for (const [vb, b] of this.pool.mappings(dev)) {
      if (vb >= n) continue;
      m.blocks[vb] = b;
      m.excl[vb] = this.pool.isExclusive(dev, vb) ? 1 : 0;
    }
    this.maps.set(dev, m);
    return m;
  }

  private attachFh(dev: number, fh: number, m?: VolMap): void {
    this.locked(() => {
      const map = m ?? this.maps.get(dev) ?? this.buildMap(dev);
      map.fhs.add(fh);
      native.thinAttach(fh, this.pool.dataFd, this.pool.blockSize, map.blocks, map.excl, this.pool.devices.get(dev)!.size,
        dev, this.ctl, this.held, this.log, this.lockId);
    });
  }

  /** fn with the C data path's tables to itself (worker threads wait meanwhile; re-entrant). */
  private locked<T>(fn: () => T): T {
    if (this.lockDepth++ === 0) native.thinLock(this.lockId, 1);
    try {
      return fn();
    } finally {
      if (--this.lockDepth === 0) native.thinLock(this.lockId, 0);
    }
  }

  /** Applies the mappings the C write path made: before JS reads or changes the pool. */
  drain(): void {
    this.locked(() => {
      const n = this.ctl[C_LOGGED];
      if (!n) return;
      this.ctl[C_LOGGED] = 0;
      const l = this.log;
      for (let i = 0; i < 3 * n; i += 3) this.pool.adopt(l[i], l[i + 1], l[i + 2]);
    });
  }

  /** Tops up the blocks held for the C write path, in ascending order of use (sequential
   * writes land in sequential blocks); each reads as zeros unless the pool skips zeroing. None
   * while the pool is read-only: C then leaves every write needing a block to JS. */
  private refill(): void {
    const c = this.ctl, cap = this.held.length;
    if (this.pool.readOnly || c[C_HELD] > cap / 2) return;
    const fresh: number[] = [];
    for (let b, n = cap - c[C_HELD]; fresh.length < n && (b = this.pool.holdBlock()) >= 0;) fresh.push(b);
    if (!this.pool.opts.skipBlockZeroing) this.pool.punch(fresh);
    const blocks = [...this.held.subarray(0, c[C_HELD]), ...fresh].sort((a, b) => b - a);
    this.held.set(blocks);
    c[C_HELD] = blocks.length;
  }

  /** Gives the held blocks back (the pool is short of space, or read-only). */
  private unhold(): void {
    for (let i = 0; i < this.ctl[C_HELD]; i++) this.pool.unholdBlock(this.held[i]);
    this.ctl[C_HELD] = 0;
  }

  /** fn with the C write path's mappings applied first and its held blocks topped up after. */
  settled<T>(fn: () => T): T {
    return this.locked(() => {
      this.drain();
      try {
        return fn();
      } finally {
        this.refill();
      }
    });
  }

  attach(n: Notifier): void {
    this.notifiers.push(n);
  }

  /** Commits what changed (at least every second) and grows the pool if auto-extend says so;
   * the data sync runs beside the writes (commitAsync). */
  tick(): void {
    const failed = (e: unknown): void => {
      process.stderr.write(`layerfs thin: commit failed: ${(e as Error).message}\n`);
    };
    try {
      this.settled(() => {
        this.pool.maybeAutoExtend();
        if (!this.pool.metaFull) this.pool.commitAsync().catch(failed);
      });
    } catch (e) {
      failed(e);
    }
  }

  shutdown(): void {
    clearInterval(this.timer);
    this.locked(() => {
      this.drain();
      this.unhold();
      this.pool.checkpoint();
    });
  }

  /** After a message changed the volume set: the kernel must not keep a stale listing. */
  volumesChanged(): void {
    for (const n of this.notifiers) n.invalAttr(ROOT_ID);
  }

  private devOf(nodeid: number): number {
    const id = nodeid - NODE_BASE;
    if (nodeid === ROOT_ID || !this.pool.devices.has(id)) throw new FsError(E.ENOENT);
    return id;
  }

  private attrOf(nodeid: number): Stat {
    const st = newStat();
    st[ST_UID] = 0;
    st[ST_GID] = 0;
    st[ST_BLKSIZE] = 4096;
    if (nodeid === ROOT_ID) {
      st[ST_INO] = ROOT_ID;
      st[ST_MODE] = S_IFDIR | 0o755;
      st[ST_NLINK] = 2;
      st[ST_MTIME] = st[ST_CTIME] = st[ST_ATIME] = this.started;
      return st;
    }
    const id = this.devOf(nodeid);
    const d = this.pool.devices.get(id)!;
    st[ST_INO] = nodeid;
    st[ST_MODE] = S_IFREG | 0o600;
    st[ST_NLINK] = 1;
    st[ST_SIZE] = d.size;
    st[ST_BLOCKS] = (d.mapped * this.pool.blockSize) / 512;
    st[ST_MTIME] = st[ST_CTIME] = st[ST_ATIME] = this.mtimes.get(id) ?? this.started;
    return st;
  }

  lookup(parent: number, name: string): Entry | null {
    if (parent !== ROOT_ID || !/^\d+$/.test(name) || !this.pool.devices.has(Number(name))) return null;
    const nodeid = Number(name) + NODE_BASE;
    return { nodeid, attr: this.attrOf(nodeid), entryTimeout: 0, attrTimeout: 0 };
  }

  forget(): void {}

  getattr(nodeid: number): AttrReply {
    this.drain();
    return { attr: this.attrOf(nodeid), timeout: 0 };
  }

  setattr(nodeid: number, s: SetAttr): AttrReply {
    if (s.valid & SETATTR.SIZE) {
      try {
        this.settled(() => this.pool.setSize(this.devOf(nodeid), s.size));
      } catch (e) {
        fsErr(e);
      }
    }
    return { attr: this.attrOf(nodeid), timeout: 0 };
  }

  open(nodeid: number): Opened {
    const id = this.devOf(nodeid);
    const h = this.nextHandle++;
    this.handles.set(h, id);
    this.pool.openDevices.set(id, (this.pool.openDevices.get(id) ?? 0) + 1);
    // direct_io: every write reaches the pool before it is acknowledged, so a snapshot between
    // requests holds exactly the acknowledged writes (measured: also faster than buffered here).
    // Reads, and writes to exclusive mapped blocks, are then served in C (native thinAttach).
    return {
      jsHandle: h, directIo: true,
      onOpened: (fh) => {
        this.fhOf.set(h, fh);
        this.attachFh(id, fh);
      },
    };
  }

  private handleDev(h: number): number {
    const id = this.handles.get(h);
    if (id === undefined) throw new FsError(E.EBADF);
    return id;
  }

  read(h: number, size: number, offset: number): Buffer {
    try {
      this.drain();   // (reads change nothing: the tables need not be held)
      return this.pool.read(this.handleDev(h), offset, size);
    } catch (e) {
      return fsErr(e);
    }
  }

  write(h: number, data: Buffer, offset: number): number | Promise<number> {
    const id = this.handleDev(h);
    try {
      const n = this.settled(() => this.pool.write(id, offset, data));
      this.mtimes.set(id, Math.floor(Date.now() / 1000));
      return n;
    } catch (e) {
      if (!(e instanceof ThinError) || e.errno !== E.ENOSPC || this.pool.opts.errorIfNoSpace ||
        offset + data.length > (this.pool.devices.get(id)?.size ?? 0)) return fsErr(e);
      return this.waitForSpace(id, offset, data);
    }
  }

  /** queue_if_no_space: retry while the pool may grow (resize, auto-extend), then fail. */
  private waitForSpace(id: number, offset: number, data: Buffer): Promise<number> {
    const until = Date.now() + this.opts.noSpaceTimeoutMs;
    return new Promise((resolve, reject) => {
      const retry = (): void => {
        try {
          resolve(this.settled(() => {
            this.pool.maybeAutoExtend();
            return this.pool.write(id, offset, data);
          }));
        } catch (e) {
          if (e instanceof ThinError && e.errno === E.ENOSPC && Date.now() < until) setTimeout(retry, 100);
          else reject(e instanceof ThinError ? new FsError(e.errno) : e);
        }
      };
      setTimeout(retry, 100);
    });
  }

  /** Durable once the mappings are committed: EIO when they cannot be (metadata full). */
  fsync(): Promise<void> {
    return this.settled(() => this.pool.commitAsync()).catch((e) => {
      this.pool.lossUnreported = false;   // told now
      return fsErr(e);
    });
  }

  flush(): void {}

  release(h: number): void {
    const id = this.handles.get(h);
    this.handles.delete(h);
    if (id === undefined) return;
    const fh = this.fhOf.get(h);
    this.fhOf.delete(h);
    const m = this.maps.get(id);
    if (m && fh !== undefined) {
      m.fhs.delete(fh);
      if (!m.fhs.size) this.maps.delete(id);
    }
    const n = (this.pool.openDevices.get(id) ?? 1) - 1;
    if (n > 0) this.pool.openDevices.set(id, n);
    else this.pool.openDevices.delete(id);
  }

  /** PUNCH_HOLE (the loop driver's discard) unmaps whole blocks; ZERO_RANGE zeroes. */
  fallocate(h: number, mode: number, offset: number, length: number): void {
    this.settled(() => this.fallocateLocked(this.handleDev(h), mode, offset, length));
  }

  private fallocateLocked(id: number, mode: number, offset: number, length: number): void {
    try {
      if (mode === (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) || mode & FALLOC_FL_ZERO_RANGE) {
        const bs = this.pool.blockSize;
        const first = Math.ceil(offset / bs) * bs, last = Math.floor((offset + length) / bs) * bs;
        this.pool.discard(id, offset, length);
        // the edges of the range that do not cover a whole block read as zeros too
        const edges: [number, number][] = first >= last ? [[offset, length]] : [[offset, first - offset], [last, offset + length - last]];
        for (const [o, l] of edges) {
          if (l > 0 && this.pool.needsBlocks(id, o, l) === 0) this.pool.write(id, o, Buffer.alloc(l));
        }
        return;
      }
      if (mode === 0) {
        const d = this.pool.devices.get(id)!;
        if (offset + length > d.size) this.pool.setSize(id, offset + length);
        return;
      }
    } catch (e) {
      fsErr(e);
    }
    throw new FsError(E.EOPNOTSUPP);
  }

  opendir(nodeid: number): DirOpened {
    if (nodeid !== ROOT_ID) throw new FsError(E.ENOTDIR);
    return { cacheReaddir: false, keepCache: false };
  }

  readdir(): DirList {
    const ids = [...this.pool.devices.keys()].sort((a, b) => a - b);
    return {
      names: ['.', '..', ...ids.map(String)],
      inos: Float64Array.from([ROOT_ID, ROOT_ID, ...ids.map((i) => i + NODE_BASE)]),
      types: Uint8Array.from([4, 4, ...ids.map(() => 8)]),
    };
  }

  statfs(): Float64Array {
    this.drain();
    const s = new Float64Array(STATFS_LEN);
    const bs = this.pool.blockSize;
    s[0] = bs; s[1] = bs;
    s[2] = this.pool.nrBlocks;
    s[3] = s[4] = this.pool.space.freeBlocks;
    s[5] = s[6] = s[7] = 0;
    s[10] = 255;
    return s;
  }

  readlink(): string { throw new FsError(E.EINVAL); }
  mknod(): Entry { throw new FsError(E.EPERM); }
  mkdir(): Entry { throw new FsError(E.EPERM); }
  unlink(): void { throw new FsError(E.EPERM); }
  rmdir(): void { throw new FsError(E.EPERM); }
  symlink(): Entry { throw new FsError(E.EPERM); }
  rename(): void { throw new FsError(E.EPERM); }
  link(): Entry { throw new FsError(E.EPERM); }
  create(): { entry: Entry; opened: Opened } { throw new FsError(E.EPERM); }
  setxattr(): void { throw new FsError(E.EOPNOTSUPP); }
  getxattr(): Buffer { throw new FsError(E.ENODATA); }
  listxattr(): string[] { return []; }
  removexattr(): void { throw new FsError(E.EOPNOTSUPP); }
}
