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

  constructor(readonly pool: Pool, private readonly opts: ThinFsOptions) {
    this.timer = setInterval(() => this.tick(), 1000);
    this.timer.unref();
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

  private attachFh(dev: number, fh: number, m = this.maps.get(dev) ?? this.buildMap(dev)): void {
    m.fhs.add(fh);
    native.thinAttach(fh, this.pool.dataFd, this.pool.blockSize, m.blocks, m.excl, this.pool.devices.get(dev)!.size);
  }

  attach(n: Notifier): void {
    this.notifiers.push(n);
  }

  /** Commits what changed (at least every second) and grows the pool if auto-extend says so. */
  tick(): void {
    try {
      this.pool.maybeAutoExtend();
      this.pool.commit();
    } catch (e) {
      process.stderr.write(`layerfs thin: commit failed: ${(e as Error).message}\n`);
    }
  }

  shutdown(): void {
    clearInterval(this.timer);
    this.pool.checkpoint();
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
    return { attr: this.attrOf(nodeid), timeout: 0 };
  }

  setattr(nodeid: number, s: SetAttr): AttrReply {
    if (s.valid & SETATTR.SIZE) {
      try {
        this.pool.setSize(this.devOf(nodeid), s.size);
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
      return this.pool.read(this.handleDev(h), offset, size);
    } catch (e) {
      return fsErr(e);
    }
  }

  write(h: number, data: Buffer, offset: number): number | Promise<number> {
    const id = this.handleDev(h);
    try {
      const n = this.pool.write(id, offset, data);
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
          this.pool.maybeAutoExtend();
          resolve(this.pool.write(id, offset, data));
        } catch (e) {
          if (e instanceof ThinError && e.errno === E.ENOSPC && Date.now() < until) setTimeout(retry, 100);
          else reject(e instanceof ThinError ? new FsError(e.errno) : e);
        }
      };
      setTimeout(retry, 100);
    });
  }

  fsync(): void {
    this.pool.commit();
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
    const id = this.handleDev(h);
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
