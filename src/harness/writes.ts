// The writes a harness holds unsynced: every write and size change of a file since its last
// sync point, in order, with its data — what a crash may drop, keep in part, or tear. Data is
// held in memory up to SPILL_AT bytes in all; past that it goes to a spill file in the state dir
// (its space comes back once no unsynced write remains).
import * as fs from 'node:fs';
import { mulberry32 } from '../sys/random';

export const SPILL_AT = 64 * 1024 * 1024;

export interface Pending {
  seq: number;
  obj: number;
  off: number;
  len: number;          // 0 for a size change
  size?: number;        // a size change (truncate, fallocate): the new size
  data?: Buffer;        // in memory, or at spill in the spill file
  spill?: number;
}

/** What survives a crash of the unsynced writes (default: none of them). */
export interface CrashOpts {
  keepLast?: number;           // the N most recent units persist
  keepProb?: number;           // each unit persists with this probability (seeded)
  torn?: 'sector' | 'page';    // a unit is a 512-byte or 4 KiB aligned part of a write, not the write
  seed?: number;
}

/** One part of a pending write that persists: its bytes at off (or a size change). */
export interface Unit { seq: number; obj: number; off: number; data?: Buffer; size?: number }

export class WriteLog {
  private readonly byObj = new Map<number, Pending[]>();
  private seq = 0;
  private memBytes = 0;
  private spillFd = -1;
  private spillEnd = 0;

  constructor(private readonly spillPath: string, private readonly spillAt = SPILL_AT) {}

  private list(obj: number): Pending[] {
    let l = this.byObj.get(obj);
    if (!l) this.byObj.set(obj, (l = []));
    return l;
  }

  write(obj: number, off: number, data: Buffer): void {
    const p: Pending = { seq: ++this.seq, obj, off, len: data.length };
    if (this.memBytes + data.length <= this.spillAt) {
      p.data = Buffer.from(data);   // the request's buffer is reused once answered
      this.memBytes += data.length;
    } else {
      if (this.spillFd < 0) this.spillFd = fs.openSync(this.spillPath, 'w+', 0o600);
      fs.writeSync(this.spillFd, data, 0, data.length, this.spillEnd);
      p.spill = this.spillEnd;
      this.spillEnd += data.length;
    }
    this.list(obj).push(p);
  }

  resize(obj: number, size: number): void {
    this.list(obj).push({ seq: ++this.seq, obj, off: 0, len: 0, size });
  }

  has(obj: number): boolean {
    return (this.byObj.get(obj)?.length ?? 0) > 0;
  }

  objects(): number[] {
    return [...this.byObj.keys()];
  }

  /** The object's pending writes, gone from the log (they were made durable). */
  take(obj: number): Pending[] {
    const l = this.byObj.get(obj) ?? [];
    this.byObj.delete(obj);
    for (const p of l) if (p.data) this.memBytes -= p.len;
    if (!this.byObj.size && this.spillFd >= 0) {
      fs.ftruncateSync(this.spillFd, 0);
      this.spillEnd = 0;
    }
    return l;
  }

  dataOf(p: Pending): Buffer {
    if (p.data) return p.data;
    const b = Buffer.allocUnsafe(p.len);
    fs.readSync(this.spillFd, b, 0, p.len, p.spill!);
    return b;
  }

  stats(): { writes: number; bytes: number; inMemory: number; spilled: number } {
    let writes = 0, bytes = 0;
    for (const l of this.byObj.values()) for (const p of l) if (p.len) { writes++; bytes += p.len; }
    return { writes, bytes, inMemory: this.memBytes, spilled: this.spillEnd };
  }

  /** The parts of the pending writes that a crash keeps, in the order they were made. */
  survivors(o: CrashOpts): Unit[] {
    const all = [...this.byObj.values()].flat().sort((a, b) => a.seq - b.seq);
    const units: Unit[] = [];
    const step = o.torn === 'sector' ? 512 : o.torn === 'page' ? 4096 : 0;
    for (const p of all) {
      if (p.size !== undefined) {
        units.push({ seq: p.seq, obj: p.obj, off: 0, size: p.size });
        continue;
      }
      const data = this.dataOf(p);
      if (!step) {
        units.push({ seq: p.seq, obj: p.obj, off: p.off, data });
        continue;
      }
      // torn: cut at the aligned boundaries of the file's offsets
      for (let at = p.off; at < p.off + p.len;) {
        const end = Math.min(p.off + p.len, (Math.floor(at / step) + 1) * step);
        units.push({ seq: p.seq, obj: p.obj, off: at, data: data.subarray(at - p.off, end - p.off) });
        at = end;
      }
    }
    if (o.keepLast !== undefined) return o.keepLast > 0 ? units.slice(-o.keepLast) : [];
    if (o.keepProb !== undefined) {
      const rnd = mulberry32(o.seed ?? 1);
      return units.filter(() => rnd() < o.keepProb!);
    }
    return [];
  }

  close(): void {
    this.byObj.clear();
    this.memBytes = 0;
    if (this.spillFd >= 0) {
      fs.closeSync(this.spillFd);
      fs.rmSync(this.spillPath, { force: true });
      this.spillFd = -1;
    }
  }
}
