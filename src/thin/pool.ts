// The thin pool: a data file of fixed-size blocks and a metadata file, with thin volumes and
// snapshots of snapshots. Allocation on first write, block-level copy-on-write of shared blocks,
// discards that give space back, dm-thin's message grammar and status, transactions.
// Every change to the mappings is an op appended to the pending transaction; a commit syncs the
// data file first, then appends the ops to the metadata log (metafile.ts). Replaying the ops on
// the last checkpoint rebuilds exactly the committed state.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native } from '../sys/native';
import { E, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE } from '../sys/constants';
import { MetaFile } from './metafile';
import { SpaceMap } from './spacemap';
import {
  FANOUT, UNMAPPED, isLeaf, lookup, nodesOf, privateLeaf, release, walk, type Inner, type Leaf, type TreeNode,
} from './tree';

export class ThinError extends Error {
  constructor(readonly errno: number, message: string) {
    super(message);
  }
}

export const MAX_DEV_ID = (1 << 24) - 1;
export const MIN_BLOCK = 64 * 1024;
export const MAX_BLOCK = 1024 * 1024 * 1024;

export interface PoolOptions {
  blockSize: number;
  skipBlockZeroing: boolean;
  errorIfNoSpace: boolean;
  lowWaterMark: number;        // in blocks
  metadataSize: number;        // bytes
  autoExtend: { threshold: number; step: number; cap: number } | null;  // percent, percent, bytes
}

export interface Device {
  id: number;
  root: TreeNode | null;
  size: number;                // virtual size in bytes
  mapped: number;
  transaction: number;
  creationTime: number;
  snapTime: number;
}

type Op = [string, ...number[]];

/** Ops whose data is being synced on the thread pool, then appended (commitAsync). */
interface Batch {
  ops: Op[];
  freed: number[];
  done: Promise<void>;
}

export interface PoolListener {
  mapped(dev: number, vblock: number, block: number, exclusive: boolean): void;
  shared(dev: number): void;     // all of dev's blocks may now be shared (it was snapshotted)
  resized(dev: number): void;
}

export const DATA_FILE = 'data';
export const META_FILE = 'metadata';

export class Pool {
  readonly devices = new Map<number, Device>();
  readonly space: SpaceMap;
  transactionId = 0;
  time = 0;
  heldRoot: number | null = null;
  /** Why the pool needs a check (dm-thin's needs_check flag), or null. */
  needsCheck: string | null = null;
  /** The metadata space is exhausted: read-only until it grows (what is pending stays uncommitted). */
  metaFull = false;
  /** Opened with needs_check set in the metadata: read-only until a repair (as dm-thin). */
  checkFirst = false;
  /** Acknowledged writes whose mappings could not be committed, not yet told to an fsync. */
  lossUnreported = false;
  private pending: Op[] = [];
  private inflight: Batch[] = [];
  private closed = false;
  private lowWaterLogged = false;
  readonly openDevices = new Map<number, number>();  // dev -> open count (delete -> EBUSY)
  onEvent: (msg: string) => void = () => {};
  /** Events of this run (low water mark, auto-extend), numbered as dm's event counter; the last 50 kept. */
  readonly events: { n: number; time: number; msg: string }[] = [];
  eventCount = 0;
  /** Told of every change the C fast path of open volumes must mirror. */
  listener: PoolListener | null = null;
  /** Gives back the blocks held for the C write path (asked when an allocation finds none free). */
  reclaim: () => void = () => {};

  private constructor(readonly dir: string, readonly opts: PoolOptions, nrBlocks: number,
    readonly dataFd: number, readonly meta: MetaFile) {
    this.space = new SpaceMap(nrBlocks);
  }

  get nrBlocks(): number {
    return this.space.nrBlocks;
  }

  /** No change to the mappings is taken (dm-thin's read-only mode). */
  get readOnly(): boolean {
    return this.metaFull || this.checkFirst;
  }

  get dirty(): boolean {
    return this.pending.length > 0 || this.inflight.length > 0;
  }

  // ---- create / open ----

  static validateBlockSize(bs: number): void {
    if (!Number.isInteger(bs) || bs < MIN_BLOCK || bs > MAX_BLOCK || bs % MIN_BLOCK !== 0) {
      throw new ThinError(E.EINVAL, `block size ${bs} is not a multiple of 64 KiB between 64 KiB and 1 GiB`);
    }
  }

  static create(dir: string, dataSize: number, o: Partial<PoolOptions>): Pool {
    const opts: PoolOptions = {
      blockSize: o.blockSize ?? MIN_BLOCK,
      skipBlockZeroing: o.skipBlockZeroing ?? false,
      errorIfNoSpace: o.errorIfNoSpace ?? false,
      lowWaterMark: o.lowWaterMark ?? 0,
      metadataSize: o.metadataSize ?? 0,
      autoExtend: o.autoExtend ?? null,
    };
    Pool.validateBlockSize(opts.blockSize);
    const nr = Math.floor(dataSize / opts.blockSize);
    if (nr < 1) throw new ThinError(E.EINVAL, `data size ${dataSize} is smaller than one block (${opts.blockSize})`);
    if (!opts.metadataSize) opts.metadataSize = Math.max(16 << 20, nr * 64);
    if (fs.existsSync(path.join(dir, META_FILE)) || fs.existsSync(path.join(dir, DATA_FILE))) {
      throw new ThinError(E.EEXIST, `${dir} already holds a pool`);
    }
    fs.mkdirSync(dir, { recursive: true });
    const dataFd = fs.openSync(path.join(dir, DATA_FILE), fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
    fs.ftruncateSync(dataFd, nr * opts.blockSize);
    const meta = MetaFile.create(path.join(dir, META_FILE));
    fs.ftruncateSync(meta.fd, opts.metadataSize);
    const p = new Pool(dir, opts, nr, dataFd, meta);
    p.checkpoint();
    return p;
  }

  static open(dir: string, readOnly = false): Pool {
    const mpath = path.join(dir, META_FILE), dpath = path.join(dir, DATA_FILE);
    if (!fs.existsSync(mpath) || !fs.existsSync(dpath)) throw new ThinError(E.ENOENT, `${dir} is not a thin pool (no ${META_FILE} and ${DATA_FILE} files)`);
    const meta = MetaFile.open(mpath, readOnly);
    let loaded;
    try {
      loaded = meta.load();
    } catch (e) {
      meta.close();
      throw new ThinError(E.EINVAL, `${dir}: ${(e as Error).message}`);
    }
    const state = Pool.parseCheckpoint(loaded.checkpoint);
    const dataFd = fs.openSync(dpath, readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR);
    const p = new Pool(dir, state.opts, state.nrBlocks, dataFd, meta);
    p.restoreState(state);
    for (const ops of loaded.records) for (const op of ops) p.apply(op as Op, false);
    p.space.takeFreed();
    if (meta.needsCheck) {
      p.needsCheck = meta.needsCheck;
      p.checkFirst = true;
    }
    return p;
  }

  close(): void {
    this.closed = true;
    fs.closeSync(this.dataFd);
    this.meta.close();
  }

  // ---- ops: every change to the mappings goes through apply() ----

  private apply(op: Op, log = true): void {
    const [k, a, b, c] = op;
    switch (k) {
      case 'thin': this.devices.set(a, { id: a, root: null, size: 0, mapped: 0, transaction: this.transactionId, creationTime: this.time, snapTime: this.time }); break;
      case 'snap': {
        const o = this.devices.get(b)!;
        if (o.root) o.root.refs++;
        this.listener?.shared(b);
        this.time++;
        this.devices.set(a, { id: a, root: o.root, size: o.size, mapped: o.mapped, transaction: this.transactionId, creationTime: this.time, snapTime: this.time });
        o.snapTime = this.time;
        break;
      }
      case 'del': {
        const d = this.devices.get(a)!;
        release(d.root, this.space);
        this.devices.delete(a);
        break;
      }
      case 'map': this.setMapping(a, b, c); break;
      case 'unmap': this.setMapping(a, b, UNMAPPED); break;
      case 'size': this.devices.get(a)!.size = b; this.listener?.resized(a); break;
      case 'txn': this.transactionId = a; break;
      case 'hold': this.heldRoot = a < 0 ? null : a; break;
      case 'grow': this.space.grow(a); break;
      case 'time': this.time = a; break;
      case 'devmeta': Object.assign(this.devices.get(a)!, { transaction: b, creationTime: c, snapTime: op[4] }); break;
      default: throw new Error(`unknown metadata op ${k}`);
    }
    if (log) this.pending.push(op);
  }

  private setMapping(dev: number, vblock: number, block: number): void {
    const d = this.devices.get(dev)!;
    const r = privateLeaf(d.root, vblock, this.space, block !== UNMAPPED);
    d.root = r.root;
    if (!r.leaf) return;
    const old = r.leaf.blocks[r.slot];
    if (old === block) return;
    if (block !== UNMAPPED) this.space.inc(block);
    r.leaf.blocks[r.slot] = block;
    if (old !== UNMAPPED) this.space.dec(old);
    if (old === UNMAPPED) {
      r.leaf.count++;
      d.mapped++;
    } else if (block === UNMAPPED) {
      r.leaf.count--;
      d.mapped--;
    }
    this.listener?.mapped(dev, vblock, block, block !== UNMAPPED && this.isExclusive(dev, vblock));
  }

  /** Can vblock of dev be written in place: mapped, its block and every node on the path unshared? */
  isExclusive(dev: number, vblock: number): boolean {
    const d = this.devices.get(dev);
    if (!d) return false;
    const b = lookup(d.root, vblock);
    return b !== UNMAPPED && this.space.refs[b] === 1 && this.exclusive(d, vblock);
  }

  // ---- messages (dm-thin's grammar) ----

  private dev(id: number): Device {
    const d = this.devices.get(id);
    if (!d) throw new ThinError(E.ENODATA, `device ${id} does not exist`);
    return d;
  }

  static parseId(s: string | undefined, what = 'device id'): number {
    if (s === undefined || !/^\d+$/.test(s)) throw new ThinError(E.EINVAL, `bad ${what}: ${s ?? '(missing)'}`);
    const n = Number(s);
    if (n > MAX_DEV_ID) throw new ThinError(E.EINVAL, `${what} ${n} is larger than ${MAX_DEV_ID} (24 bits)`);
    return n;
  }

  /** Runs one dm-thin pool message; returns what it prints (usually nothing). */
  message(text: string): string {
    this.writable();
    const w = text.trim().split(/\s+/);
    const n = (i: number, what?: string): number => Pool.parseId(w[i], what);
    const argc = (k: number): void => {
      if (w.length !== k) throw new ThinError(E.EINVAL, `${w[0]}: expects ${k - 1} argument(s)`);
    };
    switch (w[0]) {
      case 'create_thin': {
        argc(2);
        const id = n(1);
        if (this.devices.has(id)) throw new ThinError(E.EEXIST, `create_thin: device ${id} already exists`);
        this.apply(['thin', id]);
        return '';
      }
      case 'create_snap': {
        argc(3);
        const id = n(1), origin = n(2, 'origin id');
        if (this.devices.has(id)) throw new ThinError(E.EEXIST, `create_snap: device ${id} already exists`);
        this.dev(origin);
        this.apply(['snap', id, origin]);
        return '';
      }
      case 'delete': {
        argc(2);
        const id = n(1);
        this.dev(id);
        if (this.openDevices.get(id)) throw new ThinError(E.EBUSY, `delete: device ${id} is open`);
        this.apply(['del', id]);
        return '';
      }
      case 'set_transaction_id': {
        argc(3);
        const cur = Number(w[1]), next = Number(w[2]);
        if (!/^\d+$/.test(w[1]) || !/^\d+$/.test(w[2])) throw new ThinError(E.EINVAL, 'set_transaction_id: ids must be numbers');
        if (cur !== this.transactionId) throw new ThinError(E.EINVAL, `set_transaction_id: current id is ${this.transactionId}, not ${cur}`);
        this.apply(['txn', next]);
        return '';
      }
      case 'reserve_metadata_snap':
        argc(1);
        if (this.heldRoot !== null) throw new ThinError(E.EBUSY, 'reserve_metadata_snap: a metadata snapshot is already held');
        this.apply(['hold', this.meta.seq + 1]);
        return '';
      case 'release_metadata_snap':
        argc(1);
        if (this.heldRoot === null) throw new ThinError(E.EINVAL, 'release_metadata_snap: no metadata snapshot is held');
        this.apply(['hold', -1]);
        return '';
      default:
        throw new ThinError(E.EINVAL, `unknown message: ${w[0] ?? ''}`);
    }
  }

  // ---- the data path ----

  get blockSize(): number {
    return this.opts.blockSize;
  }

  /** Reads a volume range; unprovisioned blocks read as zeros and allocate nothing. */
  read(devId: number, offset: number, length: number): Buffer {
    const d = this.dev(devId);
    const end = Math.min(offset + length, d.size);
    if (end <= offset) return Buffer.alloc(0);
    const out = Buffer.alloc(end - offset);
    const bs = this.opts.blockSize;
    for (let pos = offset; pos < end;) {
      const vb = Math.floor(pos / bs), inBlock = pos - vb * bs;
      const n = Math.min(bs - inBlock, end - pos);
      const b = lookup(d.root, vb);
      if (b !== UNMAPPED) fs.readSync(this.dataFd, out, pos - offset, n, b * bs + inBlock);
      pos += n;
    }
    return out;
  }

  /** A block to write vblock into: the mapped one if exclusive, else a new (copied) one. */
  private provision(d: Device, vb: number, wholeBlock: boolean): number {
    const cur = lookup(d.root, vb);
    if (cur !== UNMAPPED && this.space.refs[cur] === 1 && this.exclusive(d, vb)) {
      this.listener?.mapped(d.id, vb, cur, true);   // it may have been shared when the C map was built
      return cur;
    }
    this.writable();
    const nb = this.allocBlock();
    const bs = this.opts.blockSize;
    if (cur !== UNMAPPED && !wholeBlock) {
      // block-granular copy-on-write: the other volume's block is never touched
      let done = 0;
      while (done < bs) {
        const r = native.copyFileRange(this.dataFd, cur * bs + done, this.dataFd, nb * bs + done, bs - done);
        if (r <= 0) throw new ThinError(r < 0 ? -r : E.EIO, 'copy-on-write copy failed');
        done += r;
      }
    } else if (!this.opts.skipBlockZeroing && !wholeBlock) {
      this.punch([nb]);   // (a block allocated but never committed before a crash has data)
    }
    this.apply(['map', d.id, vb, nb]);  // takes the reference
    return nb;
  }

  /** True when no node on the path to vblock is shared with another volume. */
  private exclusive(d: Device, vb: number): boolean {
    let n: TreeNode | null = d.root;
    for (let level = 0; n; level++) {
      if (n.refs > 1) return false;
      if (isLeaf(n)) return true;
      n = (n as Inner).kids[Math.floor(vb / 2 ** (8 * (3 - level))) % FANOUT];
    }
    return true;
  }

  private allocBlock(): number {
    if (!this.space.availBlocks) this.reclaim();
    const b = this.space.findFree();
    if (b < 0) throw new ThinError(E.ENOSPC, 'the pool is out of data space');
    this.checkLowWater(this.space.freeBlocks - 1);
    return b;
  }

  private checkLowWater(free: number): void {
    if (free <= this.opts.lowWaterMark && !this.lowWaterLogged) {
      this.lowWaterLogged = true;
      this.event(`low water mark reached: ${free} free blocks (mark ${this.opts.lowWaterMark})`);
    }
  }

  /** Holds a free block for the C write path (still counted free), or -1 when none is left. */
  holdBlock(): number {
    if (this.readOnly) return -1;
    const b = this.space.findFree();
    if (b >= 0) this.space.hold(b);
    return b;
  }

  unholdBlock(b: number): void {
    this.space.unhold(b);
  }

  /** A mapping the C write path made with a held block (its data is already written). */
  adopt(dev: number, vblock: number, block: number): void {
    this.apply(['map', dev, vblock, block]);   // takes the reference, which ends the hold
    this.checkLowWater(this.space.freeBlocks);
  }

  /** Would a write of this range need new blocks? (for out-of-space handling) */
  needsBlocks(devId: number, offset: number, length: number): number {
    const d = this.dev(devId);
    const bs = this.opts.blockSize;
    let need = 0;
    for (let vb = Math.floor(offset / bs); vb * bs < offset + length; vb++) {
      const cur = lookup(d.root, vb);
      if (cur === UNMAPPED || this.space.refs[cur] > 1 || !this.exclusive(d, vb)) need++;
    }
    return need;
  }

  write(devId: number, offset: number, data: Buffer): number {
    const d = this.dev(devId);
    if (offset + data.length > d.size) throw new ThinError(E.ENOSPC, 'write past the end of the volume');
    const need = this.needsBlocks(devId, offset, data.length);
    if (need > this.space.availBlocks) this.reclaim();
    if (need > this.space.availBlocks) throw new ThinError(E.ENOSPC, 'the pool is out of data space');
    const bs = this.opts.blockSize;
    for (let pos = offset; pos < offset + data.length;) {
      const vb = Math.floor(pos / bs), inBlock = pos - vb * bs;
      const n = Math.min(bs - inBlock, offset + data.length - pos);
      const b = this.provision(d, vb, n === bs);
      fs.writeSync(this.dataFd, data, pos - offset, n, b * bs + inBlock);
      pos += n;
    }
    return data.length;
  }

  /** Unmaps the whole blocks inside the range; a block no volume uses any more is freed. */
  discard(devId: number, offset: number, length: number): void {
    this.writable();
    const d = this.dev(devId);
    const bs = this.opts.blockSize;
    const first = Math.ceil(offset / bs), last = Math.floor(Math.min(offset + length, d.size) / bs);
    for (let vb = first; vb < last; vb++) if (lookup(d.root, vb) !== UNMAPPED) this.apply(['unmap', devId, vb]);
  }

  setSize(devId: number, size: number): void {
    this.writable();
    const d = this.dev(devId);
    if (size < d.size) this.discard(devId, Math.ceil(size / this.opts.blockSize) * this.opts.blockSize, d.size);
    this.apply(['size', devId, size]);
  }

  /** Refuses a change to the metadata while its space is exhausted (dm-thin's read-only mode). */
  writable(): void {
    if (this.checkFirst) throw new ThinError(E.EIO, `the pool is read-only: needs_check is set (${this.needsCheck}); run thin check --repair`);
    if (this.metaFull) throw new ThinError(E.EIO, 'the pool is read-only: its metadata space is exhausted (thin resize --metadata-size)');
  }

  /** Grows the metadata space (online): a read-only pool commits what was pending and is writable again. */
  resizeMetadata(bytes: number): void {
    if (bytes < this.opts.metadataSize) throw new ThinError(E.EINVAL, `cannot shrink the metadata from ${this.opts.metadataSize} to ${bytes} bytes`);
    this.opts.metadataSize = bytes;
    if (fs.fstatSync(this.meta.fd).size < bytes) fs.ftruncateSync(this.meta.fd, bytes);
    this.metaFull = false;
    this.commit();
    if (this.metaFull) return;
    this.checkpoint();   // the new size is part of the stored options
  }

  /** Grows the data file (online); shrinking is refused. */
  resize(dataSize: number): void {
    this.writable();
    const nr = Math.floor(dataSize / this.opts.blockSize);
    if (nr < this.nrBlocks) throw new ThinError(E.EINVAL, `cannot shrink the pool from ${this.nrBlocks} to ${nr} blocks`);
    if (nr === this.nrBlocks) return;
    fs.ftruncateSync(this.dataFd, nr * this.opts.blockSize);
    this.apply(['grow', nr]);
    this.lowWaterLogged = false;
    this.commit();
  }

  private event(msg: string): void {
    this.events.push({ n: ++this.eventCount, time: Date.now(), msg });
    if (this.events.length > 50) this.events.shift();
    this.onEvent(msg);
  }

  /** Grows by itself when used space crosses the auto-extend threshold. */
  maybeAutoExtend(): void {
    const a = this.opts.autoExtend;
    if (!a) return;
    const usedPct = (this.space.usedBlocks / this.nrBlocks) * 100;
    if (usedPct < a.threshold) return;
    const cur = this.nrBlocks * this.opts.blockSize;
    const next = Math.min(a.cap, cur + Math.ceil((cur * a.step) / 100));
    if (next > cur) {
      this.resize(next);
      this.event(`auto-extended the data file to ${next} bytes`);
    }
  }

  // ---- transactions ----

  /** Data first, then the metadata that points at it; freed blocks become reusable after.
   * Takes the batches of commitAsync still syncing too (one record, in order). */
  commit(): void {
    if ((!this.pending.length && !this.inflight.length) || this.metaFull) return;
    fs.fdatasyncSync(this.dataFd);
    const ops = [...this.inflight.flatMap((b) => b.ops), ...this.pending];
    const rec = MetaFile.record(ops);
    if (this.meta.allocatedBytes() + rec.length > this.opts.metadataSize) {
      // no room for one more record: the whole state as a new checkpoint, if that fits
      const state = this.serialize();
      if (MetaFile.checkpointBytes(state) > this.opts.metadataSize) {
        this.metaFull = true;
        this.needsCheck = 'the metadata space was exhausted: the last transaction before it may be lost (repair clears the flag)';
        this.meta.setNeedsCheck(this.needsCheck);   // kept across a restart, as dm-thin's superblock flag
        this.lossUnreported = true;
        this.reclaim();   // no more allocation in C either
        this.event(`metadata space exhausted (${this.opts.metadataSize} bytes): the pool is read-only; grow it with thin resize --metadata-size, then thin check --repair`);
        return;
      }
      this.meta.checkpoint(state);
    } else this.meta.append(rec);
    const batches = this.inflight;
    this.pending = [];
    this.inflight = [];
    this.committed(batches, this.space.takeFreed());
  }

  /** After a commit: the blocks its batches freed go back to the host; a long log is compacted. */
  private committed(batches: Batch[], freed: number[] = []): void {
    this.punch([...batches.flatMap((b) => this.space.release(b.freed)), ...freed]);
    if (this.meta.logBytes > 8 << 20) this.checkpoint();
  }

  /** The same without blocking: the data is synced on the thread pool while writes go on; the
   * ops made until now are appended once it is done (and every earlier batch with them: a
   * later sync covers the data of earlier ones). Resolves when they are committed. */
  commitAsync(): Promise<void> {
    if (this.metaFull) {
      // read-only: in-place writes are made durable; the lost transaction is told once (as a
      // writeback error is)
      if (this.lossUnreported) {
        this.lossUnreported = false;
        return Promise.reject(Pool.notCommitted());
      }
      return new Promise((resolve, reject) => fs.fdatasync(this.dataFd, (err) => (err ? reject(err) : resolve())));
    }
    if (!this.pending.length) return this.inflight.at(-1)?.done ?? Promise.resolve();
    const batch: Batch = { ops: this.pending, freed: this.space.detachFreed(), done: Promise.resolve() };
    this.pending = [];
    this.inflight.push(batch);
    batch.done = new Promise((resolve, reject) => fs.fdatasync(this.dataFd, (err) => {
      try {
        if (this.closed) return resolve();   // the last checkpoint took the batch
        if (err) throw err;
        this.finish(batch);
        resolve();
      } catch (e) {
        reject(e);
      }
    }));
    return batch.done;
  }

  private finish(batch: Batch): void {
    const i = this.inflight.indexOf(batch);
    if (i < 0 || this.closed) return;   // a synchronous commit took it
    if (this.metaFull) throw Pool.notCommitted();   // (the fsync waiting on it is told)
    const done = this.inflight.slice(0, i + 1);
    const rec = MetaFile.record(done.flatMap((b) => b.ops));
    if (this.meta.allocatedBytes() + rec.length > this.opts.metadataSize) {
      this.commit();   // compacts into a checkpoint, or turns the pool read-only
      if (this.metaFull) throw Pool.notCommitted();
      return;
    }
    this.meta.append(rec);
    this.inflight.splice(0, i + 1);
    this.committed(done);
  }

  private static notCommitted(): ThinError {
    return new ThinError(E.EIO, 'not committed: the metadata space is exhausted (the pool is read-only)');
  }

  /** Holes over blocks of the data file (freed ones go back to the host; new ones read as
   * zeros), a run of adjacent blocks a call. */
  punch(blocks: number[]): void {
    const bs = this.opts.blockSize;
    const sorted = [...blocks].sort((a, b) => a - b);
    for (let i = 0; i < sorted.length;) {
      let j = i + 1;
      while (j < sorted.length && sorted[j] === sorted[j - 1] + 1) j++;
      native.fallocate(this.dataFd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, sorted[i] * bs, (j - i) * bs);
      i = j;
    }
  }

  /** A repair's end: the flag goes, with a checkpoint of the (recounted) state, if it fits. */
  clearNeedsCheck(): void {
    if (this.metaFull) throw new ThinError(E.EIO, 'repair failed: the metadata space is still exhausted (thin resize --metadata-size first)');
    const state = this.serialize();
    if (MetaFile.checkpointBytes(state) > this.opts.metadataSize) {
      throw new ThinError(E.ENOSPC, `repair failed: the state takes more than the metadata space (${this.opts.metadataSize} bytes): thin resize --metadata-size first`);
    }
    this.needsCheck = null;
    this.checkFirst = false;
    this.meta.needsCheck = null;
    this.checkpoint();
  }

  checkpoint(): void {
    if (this.dirty) this.commit();
    fs.fdatasyncSync(this.dataFd);
    this.meta.checkpoint(this.serialize());
  }

  // ---- serialisation ----

  private serialize(): Buffer {
    const devs = [...this.devices.values()].sort((a, b) => a.id - b.id);
    const nodes = nodesOf(devs.map((d) => d.root));
    const index = new Map<TreeNode, number>(nodes.map((n, i) => [n, i]));
    return Buffer.from(JSON.stringify({
      version: 1,
      opts: this.opts,
      nrBlocks: this.nrBlocks,
      transactionId: this.transactionId,
      time: this.time,
      heldRoot: this.heldRoot,
      devices: devs.map((d) => ({ ...d, root: d.root ? index.get(d.root) : -1 })),
      nodes: nodes.map((n) => isLeaf(n)
        ? { l: Buffer.from(n.blocks.buffer, n.blocks.byteOffset, n.blocks.byteLength).toString('base64') }
        : { k: n.kids.map((k, i) => (k ? [i, index.get(k)!] : null)).filter(Boolean) }),
      refs: Buffer.from(this.space.refs.buffer, 0, this.nrBlocks * 4).toString('base64'),
    }));
  }

  static parseCheckpoint(buf: Buffer): CheckpointState {
    return JSON.parse(buf.toString()) as CheckpointState;
  }

  private restoreState(s: CheckpointState): void {
    this.transactionId = s.transactionId;
    this.time = s.time;
    this.heldRoot = s.heldRoot;
    const nodes: TreeNode[] = [];
    for (const n of s.nodes) {
      if (n.l !== undefined) {
        const raw = Buffer.from(n.l, 'base64');
        const blocks = new Int32Array(FANOUT);
        blocks.set(new Int32Array(raw.buffer, raw.byteOffset, FANOUT));
        let count = 0;
        for (const b of blocks) if (b !== UNMAPPED) count++;
        nodes.push({ refs: 0, blocks, count } as Leaf);
      } else {
        const kids: (TreeNode | null)[] = new Array(FANOUT).fill(null);
        for (const [i, k] of n.k!) {
          kids[i] = nodes[k];
          nodes[k].refs++;
        }
        nodes.push({ refs: 0, kids } as Inner);
      }
    }
    for (const d of s.devices) {
      const root = d.root >= 0 ? nodes[d.root] : null;
      if (root) root.refs++;
      this.devices.set(d.id, { ...d, root });
    }
    // block counts: the stored space map, checked against a recount (the recount wins)
    const stored = Buffer.from(s.refs, 'base64');
    const storedRefs = new Uint32Array(stored.buffer, stored.byteOffset, stored.length / 4);
    const counted = this.countRefs();
    for (let i = 0; i < this.nrBlocks; i++) {
      if ((storedRefs[i] ?? 0) !== counted[i]) this.needsCheck = 'the stored space map differs from the one the mappings give (recounted at load)';
    }
    this.space.refs.set(counted);
    this.space.recount();
  }

  /** Block reference counts recomputed from the trees: one per leaf pointing at a block. */
  countRefs(): Uint32Array {
    const c = new Uint32Array(this.nrBlocks);
    for (const n of nodesOf([...this.devices.values()].map((d) => d.root))) {
      if (isLeaf(n)) for (const b of n.blocks) if (b !== UNMAPPED && b < c.length) c[b]++;
    }
    return c;
  }

  /** Mappings of a device as [vblock, block] pairs, in order (dump, tests). */
  mappings(devId: number): [number, number][] {
    const out: [number, number][] = [];
    walk(this.dev(devId).root, (v, b) => out.push([v, b]));
    return out;
  }

  /** Restore from a dump: the pool's time and a device's transaction and times as recorded. */
  restoreTimes(time: number, devs: { id: number; transaction: number; creationTime: number; snapTime: number }[]): void {
    this.apply(['time', time]);
    for (const d of devs) this.apply(['devmeta', d.id, d.transaction, d.creationTime, d.snapTime]);
  }

  /** Restore from a dump: maps a block as recorded (two volumes may map the same block). */
  restoreMapping(devId: number, vblock: number, block: number): void {
    this.dev(devId);
    if (block < 0 || block >= this.nrBlocks) throw new ThinError(E.EINVAL, `mapping to block ${block} outside the pool (${this.nrBlocks} blocks)`);
    this.apply(['map', devId, vblock, block]);
  }
}

export interface CheckpointState {
  version: number;
  opts: PoolOptions;
  nrBlocks: number;
  transactionId: number;
  time: number;
  heldRoot: number | null;
  devices: (Omit<Device, 'root'> & { root: number })[];
  nodes: { l?: string; k?: [number, number][] }[];
  refs: string;
}
