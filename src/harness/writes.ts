// The writes a harness holds unsynced: every write and size change of a file since its last
// sync point, in order — what a crash may drop, keep in part, or tear. A write's data stays in
// the live file as long as no later write or truncate replaces it there; only then are the
// replaced bytes read back and kept here (sequential writes and appends never cost a copy).
// Those kept bytes are held in memory up to SPILL_AT in all, past that in a spill file in the
// state dir (its space comes back once no unsynced write remains).
import * as fs from 'node:fs';
import { mulberry32 } from '../sys/random';

export const SPILL_AT = 64 * 1024 * 1024;

export interface Pending {
  seq: number;
  obj: number;
  off: number;
  len: number;          // 0 for a size change
  size?: number;        // a size change (truncate, fallocate): the new size
  saved: Saved[];       // parts of its data replaced in the live file since, kept here
}

interface Saved { off: number; len: number; data?: Buffer; spill?: number }

/** Which pending write the live file's bytes [a, b) still hold. */
interface Seg { a: number; b: number; p: Pending }

/** What survives a crash of the unsynced writes (default: none of them). */
export interface CrashOpts {
  keepLast?: number;           // the N most recent units persist
  keepProb?: number;           // each unit persists with this probability (seeded)
  torn?: 'sector' | 'page';    // a unit is a 512-byte or 4 KiB aligned part of a write, not the write
  seed?: number;
}

/** One part of a pending write that persists: its bytes at off (or a size change). */
export interface Unit { seq: number; obj: number; off: number; data?: Buffer; size?: number }

interface FileLog { pending: Pending[]; owners: Seg[] }

export class WriteLog {
  private readonly files = new Map<number, FileLog>();
  private seq = 0;
  private memBytes = 0;
  private spillFd = -1;
  private spillEnd = 0;

  constructor(private readonly spillPath: string, private readonly spillAt = SPILL_AT) {}

  private file(obj: number): FileLog {
    let f = this.files.get(obj);
    if (!f) this.files.set(obj, (f = { pending: [], owners: [] }));
    return f;
  }

  /** Before the live file's bytes from `from` to `to` change: the pending writes they hold keep them. */
  private release(f: FileLog, live: number, from: number, to: number): void {
    const keep: Seg[] = [];
    for (const s of f.owners) {
      if (s.b <= from || s.a >= to) {
        keep.push(s);
        continue;
      }
      const a = Math.max(s.a, from), b = Math.min(s.b, to);
      this.save(s.p, live, a, b - a);
      if (s.a < a) keep.push({ a: s.a, b: a, p: s.p });
      if (b < s.b) keep.push({ a: b, b: s.b, p: s.p });
    }
    f.owners = keep.sort((x, y) => x.a - y.a);
  }

  private save(p: Pending, live: number, off: number, len: number): void {
    const data = Buffer.alloc(len);
    fs.readSync(live, data, 0, len, off);
    const s: Saved = { off, len };
    if (this.memBytes + len <= this.spillAt) {
      s.data = data;
      this.memBytes += len;
    } else {
      if (this.spillFd < 0) this.spillFd = fs.openSync(this.spillPath, 'w+', 0o600);
      fs.writeSync(this.spillFd, data, 0, len, this.spillEnd);
      s.spill = this.spillEnd;
      this.spillEnd += len;
    }
    p.saved.push(s);
  }

  /** A write of len bytes at off is about to reach the live file. */
  beforeWrite(obj: number, live: number, off: number, len: number): void {
    const f = this.files.get(obj);
    if (!f) return;
    // the common case, an append past every pending write: nothing is replaced
    const last = f.owners[f.owners.length - 1];
    if (!last || last.b <= off) return;
    this.release(f, live, off, off + len);
  }

  /** It did: n bytes at off. */
  wrote(obj: number, off: number, n: number): void {
    const f = this.file(obj);
    const p: Pending = { seq: ++this.seq, obj, off, len: n, saved: [] };
    f.pending.push(p);
    const last = f.owners[f.owners.length - 1];
    f.owners.push({ a: off, b: off + n, p });
    if (last && last.a > off) f.owners.sort((x, y) => x.a - y.a);
  }

  /** The live file is about to get this size (bytes past it go). */
  beforeResize(obj: number, live: number, size: number): void {
    const f = this.files.get(obj);
    if (f) this.release(f, live, size, Infinity);
  }

  resized(obj: number, size: number): void {
    this.file(obj).pending.push({ seq: ++this.seq, obj, off: 0, len: 0, size, saved: [] });
  }

  /** The live file is no longer followed: the bytes its pending writes still hold there are kept here. */
  materialize(obj: number, live: number): void {
    const f = this.files.get(obj);
    if (!f) return;
    for (const s of f.owners) this.save(s.p, live, s.a, s.b - s.a);
    f.owners = [];
  }

  /** The object's pending writes replayed on fd in order, from the data kept here: its live file
   * is no longer followed, so every byte of theirs was read into the log. */
  replay(obj: number, fd: number): void {
    for (const p of this.pendingOf(obj)) {
      if (p.size !== undefined) fs.ftruncateSync(fd, p.size);
      else fs.writeSync(fd, this.dataOf(p, null, -1), 0, p.len, p.off);
    }
  }

  /** The object's pending writes, in order (still in the log). */
  pendingOf(obj: number): Pending[] {
    return this.files.get(obj)?.pending ?? [];
  }

  has(obj: number): boolean {
    return (this.files.get(obj)?.pending.length ?? 0) > 0;
  }

  objects(): number[] {
    return [...this.files.keys()];
  }

  /** The object's pending writes, gone from the log (they were made durable). */
  take(obj: number): Pending[] {
    const f = this.files.get(obj);
    this.files.delete(obj);
    for (const p of f?.pending ?? []) for (const s of p.saved) if (s.data) this.memBytes -= s.len;
    if (!this.files.size && this.spillFd >= 0) {
      fs.ftruncateSync(this.spillFd, 0);
      this.spillEnd = 0;
    }
    return f?.pending ?? [];
  }

  /** A pending write's data: its saved parts, the rest from the live file. */
  private dataOf(p: Pending, f: FileLog | null, live: number): Buffer {
    const out = Buffer.alloc(p.len);
    for (const s of f?.owners ?? []) {
      if (s.p !== p) continue;
      if (live >= 0) fs.readSync(live, out, s.a - p.off, s.b - s.a, s.a);
    }
    for (const s of p.saved) {
      if (s.data) s.data.copy(out, s.off - p.off);
      else fs.readSync(this.spillFd, out, s.off - p.off, s.len, s.spill!);
    }
    return out;
  }

  stats(): { writes: number; bytes: number; inMemory: number; spilled: number } {
    let writes = 0, bytes = 0;
    for (const f of this.files.values()) for (const p of f.pending) if (p.len) { writes++; bytes += p.len; }
    return { writes, bytes, inMemory: this.memBytes, spilled: this.spillEnd };
  }

  /** The parts of the pending writes that a crash keeps, in the order they were made. */
  survivors(o: CrashOpts, liveFd: (obj: number) => number): Unit[] {
    const wanted = o.keepLast !== undefined ? o.keepLast > 0 : o.keepProb !== undefined;
    if (!wanted) return [];
    const all = [...this.files.values()].flatMap((f) => f.pending.map((p) => ({ p, f }))).sort((a, b) => a.p.seq - b.p.seq);
    // the units first (offsets only), the data of the chosen ones after
    const units: { p: Pending; f: FileLog; off: number; len: number }[] = [];
    const step = o.torn === 'sector' ? 512 : o.torn === 'page' ? 4096 : 0;
    for (const { p, f } of all) {
      if (p.size !== undefined || !step) {
        units.push({ p, f, off: p.off, len: p.len });
        continue;
      }
      // torn: cut at the aligned boundaries of the file's offsets
      for (let at = p.off; at < p.off + p.len;) {
        const end = Math.min(p.off + p.len, (Math.floor(at / step) + 1) * step);
        units.push({ p, f, off: at, len: end - at });
        at = end;
      }
    }
    let chosen = units;
    if (o.keepLast !== undefined) chosen = units.slice(-o.keepLast);
    else {
      const rnd = mulberry32(o.seed ?? 1);
      chosen = units.filter(() => rnd() < o.keepProb!);
    }
    const data = new Map<Pending, Buffer>();
    return chosen.map((u): Unit => {
      if (u.p.size !== undefined) return { seq: u.p.seq, obj: u.p.obj, off: 0, size: u.p.size };
      let d = data.get(u.p);
      if (!d) data.set(u.p, (d = this.dataOf(u.p, u.f, liveFd(u.p.obj))));
      return { seq: u.p.seq, obj: u.p.obj, off: u.off, data: d.subarray(u.off - u.p.off, u.off - u.p.off + u.len) };
    });
  }

  close(): void {
    this.files.clear();
    this.memBytes = 0;
    if (this.spillFd >= 0) {
      fs.closeSync(this.spillFd);
      fs.rmSync(this.spillPath, { force: true });
      this.spillFd = -1;
    }
  }
}
