// The metadata file: two superblock slots (the valid one with the highest generation wins),
// checkpoints (a whole serialised state) and, after the current checkpoint, a log of commit
// records. A commit appends one checksummed record and syncs it; a torn record is ignored at
// load, so a crash loses at most the uncommitted transaction. Space behind a newer checkpoint
// is hole-punched, so the file stays sparse.
import * as fs from 'node:fs';
import { crc32 } from 'node:zlib';
import { native } from '../sys/native';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE } from '../sys/constants';

const SB_SIZE = 4096;
const DATA_START = 2 * SB_SIZE;
const REC_MAGIC = 0x4c4f4721;
const REC_HEAD = 16;

export interface Superblock {
  magic: 'layerfs-thin';
  version: 1;
  generation: number;
  checkpointOffset: number;
  checkpointLength: number;
  checkpointCrc: number;
  logOffset: number;
  needsCheck?: string;   // dm-thin's needs_check flag, with why: kept until a repair
}

const align = (n: number): number => Math.ceil(n / SB_SIZE) * SB_SIZE;

export class MetaFile {
  private sb: Superblock | null = null;
  logEnd = 0;
  seq = 0;
  /** The needs_check flag of the current superblock (checkpoints keep it). */
  needsCheck: string | null = null;

  constructor(readonly fd: number) {}

  static create(path: string): MetaFile {
    return new MetaFile(fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600));
  }

  static open(path: string, readOnly = false): MetaFile {
    return new MetaFile(fs.openSync(path, readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR));
  }

  close(): void {
    fs.closeSync(this.fd);
  }

  private readSb(slot: number): Superblock | null {
    const b = Buffer.alloc(SB_SIZE);
    if (fs.readSync(this.fd, b, 0, SB_SIZE, slot * SB_SIZE) < 8) return null;
    const len = b.readUInt32LE(0);
    if (len === 0 || len > SB_SIZE - 8) return null;
    const json = b.subarray(4, 4 + len);
    if (crc32(json) !== b.readUInt32LE(4 + len)) return null;
    try {
      const sb = JSON.parse(json.toString()) as Superblock;
      return sb.magic === 'layerfs-thin' ? sb : null;
    } catch {
      return null;
    }
  }

  /** The current superblock, its checkpoint and the committed log records, or why not. */
  load(): { checkpoint: Buffer; records: unknown[][]; sbGeneration: number } {
    const cands = [this.readSb(0), this.readSb(1)].filter((s): s is Superblock => s !== null)
      .sort((a, b) => b.generation - a.generation);
    for (const sb of cands) {
      this.seq = 0;
      const cp = Buffer.alloc(sb.checkpointLength);
      fs.readSync(this.fd, cp, 0, cp.length, sb.checkpointOffset);
      if (crc32(cp) !== sb.checkpointCrc) continue;
      this.sb = sb;
      this.needsCheck = sb.needsCheck ?? null;
      const records: unknown[][] = [];
      let off = sb.logOffset;
      const head = Buffer.alloc(REC_HEAD);
      for (;;) {
        if (fs.readSync(this.fd, head, 0, REC_HEAD, off) < REC_HEAD || head.readUInt32LE(0) !== REC_MAGIC) break;
        const len = head.readUInt32LE(4);
        const body = Buffer.alloc(len);
        if (fs.readSync(this.fd, body, 0, len, off + REC_HEAD) < len || crc32(body) !== head.readUInt32LE(8)) break;
        if (head.readUInt32LE(12) !== this.seq + 1) break;  // a stale record from an older log
        this.seq++;
        records.push(JSON.parse(body.toString()) as unknown[]);
        off += align(REC_HEAD + len);
      }
      this.logEnd = off;
      return { checkpoint: cp, records, sbGeneration: sb.generation };
    }
    throw new Error('no valid superblock with an intact checkpoint (not a layerfs thin pool, or its metadata is corrupt)');
  }

  /** One commit record of ops, serialised: append() writes it; its length is what it takes. */
  static record(ops: unknown[]): Buffer {
    const body = Buffer.from(JSON.stringify(ops));
    const rec = Buffer.alloc(align(REC_HEAD + body.length));
    rec.writeUInt32LE(REC_MAGIC, 0);
    rec.writeUInt32LE(body.length, 4);
    rec.writeUInt32LE(crc32(body), 8);
    body.copy(rec, REC_HEAD);
    return rec;
  }

  /** The space a metadata file holding just this checkpoint takes (superblocks, it, an empty log). */
  static checkpointBytes(state: Buffer): number {
    return DATA_START + align(state.length) + SB_SIZE;
  }

  /** Appends one commit record (MetaFile.record) and syncs it. */
  append(rec: Buffer): void {
    rec.writeUInt32LE(++this.seq, 12);
    fs.writeSync(this.fd, rec, 0, rec.length, this.logEnd);
    // the next record must not be mistaken for a continuation: clear what follows
    fs.writeSync(this.fd, Buffer.alloc(REC_HEAD), 0, REC_HEAD, this.logEnd + rec.length);
    fs.fdatasyncSync(this.fd);
    this.logEnd += rec.length;
  }

  /** Writes a checkpoint after everything, then the other superblock slot; frees the old space. */
  checkpoint(state: Buffer): void {
    const end = Math.max(DATA_START, align(this.logEnd), this.sb ? align(this.sb.checkpointOffset + this.sb.checkpointLength) : 0);
    const off = align(end);
    fs.writeSync(this.fd, state, 0, state.length, off);
    const logOffset = align(off + state.length);
    fs.writeSync(this.fd, Buffer.alloc(REC_HEAD), 0, REC_HEAD, logOffset);
    fs.fdatasyncSync(this.fd);
    this.writeSb({ checkpointOffset: off, checkpointLength: state.length, checkpointCrc: crc32(state), logOffset });
    if (off > DATA_START) native.fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, DATA_START, off - DATA_START);
    this.logEnd = logOffset;
    this.seq = 0;
  }

  /** Sets or clears the needs_check flag in place: a new superblock, nothing else written (it
   * needs no metadata space, so a pool whose metadata is full can still say so). */
  setNeedsCheck(reason: string | null): void {
    this.needsCheck = reason;
    if (this.sb) this.writeSb(this.sb);
  }

  /** The other superblock slot, one generation on, synced. */
  private writeSb(at: Pick<Superblock, 'checkpointOffset' | 'checkpointLength' | 'checkpointCrc' | 'logOffset'>): void {
    const gen = (this.sb?.generation ?? 0) + 1;
    const sb: Superblock = {
      magic: 'layerfs-thin', version: 1, generation: gen, checkpointOffset: at.checkpointOffset,
      checkpointLength: at.checkpointLength, checkpointCrc: at.checkpointCrc, logOffset: at.logOffset,
      ...(this.needsCheck ? { needsCheck: this.needsCheck } : {}),
    };
    const json = Buffer.from(JSON.stringify(sb));
    const b = Buffer.alloc(SB_SIZE);
    b.writeUInt32LE(json.length, 0);
    json.copy(b, 4);
    b.writeUInt32LE(crc32(json), 4 + json.length);
    fs.writeSync(this.fd, b, 0, SB_SIZE, (gen % 2) * SB_SIZE);
    fs.fdatasyncSync(this.fd);
    this.sb = sb;
  }

  get logBytes(): number {
    return this.sb ? this.logEnd - this.sb.logOffset : 0;
  }

  /** Bytes the metadata occupies on disk. */
  allocatedBytes(): number {
    return fs.fstatSync(this.fd).blocks * 512;
  }
}
