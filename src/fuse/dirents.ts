// Packs readdir replies in the kernel's wire format (struct fuse_dirent / fuse_direntplus of
// linux/fuse.h) straight into one buffer, instead of one native call per entry.
import type { Stat } from '../sys/stat';
import {
  ST_ATIME, ST_ATIME_NS, ST_BLKSIZE, ST_BLOCKS, ST_CTIME, ST_CTIME_NS, ST_GID, ST_INO, ST_MODE,
  ST_MTIME, ST_MTIME_NS, ST_NLINK, ST_RDEV, ST_SIZE, ST_UID,
} from '../sys/stat';

const DIRENT_HEAD = 24;        // ino, off, namelen, type
const ENTRY_OUT = 40 + 88;     // fuse_entry_out with fuse_attr
const align8 = (n: number): number => (n + 7) & ~7;

export function direntSize(nameLen: number, plus: boolean): number {
  return align8((plus ? ENTRY_OUT : 0) + DIRENT_HEAD + nameLen);
}

function u64(buf: Buffer, off: number, v: number): void {
  buf.writeUInt32LE(v % 0x100000000 >>> 0, off);
  buf.writeUInt32LE(Math.floor(v / 0x100000000) >>> 0, off + 4);
}

function timeout(buf: Buffer, secOff: number, nsecOff: number, t: number): void {
  const s = Math.floor(t);
  u64(buf, secOff, s);
  buf.writeUInt32LE(Math.floor((t - s) * 1e9) >>> 0, nsecOff);
}

export class DirentWriter {
  readonly buf: Buffer;
  pos = 0;

  constructor(readonly size: number) {
    this.buf = Buffer.allocUnsafe(size);
  }

  /** Appends a plain dirent; false when it does not fit. */
  add(name: string, ino: number, type: number, nextOff: number): boolean {
    const nameLen = Buffer.byteLength(name);
    const len = direntSize(nameLen, false);
    if (this.pos + len > this.size) return false;
    this.dirent(this.pos, name, nameLen, ino, type, nextOff, len);
    this.pos += len;
    return true;
  }

  fits(name: string, plus: boolean): boolean {
    return this.pos + direntSize(Buffer.byteLength(name), plus) <= this.size;
  }

  /** Appends a direntplus; call fits() first (the entry's lookup must not be wasted). */
  addPlus(name: string, nodeid: number, generation: number, entryTimeout: number,
    attrTimeout: number, st: Stat, nextOff: number): void {
    const b = this.buf, p = this.pos;
    const nameLen = Buffer.byteLength(name);
    const len = direntSize(nameLen, true);
    u64(b, p, nodeid);
    u64(b, p + 8, generation);
    timeout(b, p + 16, p + 32, nodeid ? entryTimeout : 0);
    timeout(b, p + 24, p + 36, nodeid ? attrTimeout : 0);
    const a = p + 40;
    u64(b, a, st[ST_INO]);
    u64(b, a + 8, st[ST_SIZE]);
    u64(b, a + 16, st[ST_BLOCKS]);
    u64(b, a + 24, st[ST_ATIME]);
    u64(b, a + 32, st[ST_MTIME]);
    u64(b, a + 40, st[ST_CTIME]);
    b.writeUInt32LE(st[ST_ATIME_NS], a + 48);
    b.writeUInt32LE(st[ST_MTIME_NS], a + 52);
    b.writeUInt32LE(st[ST_CTIME_NS], a + 56);
    b.writeUInt32LE(st[ST_MODE], a + 60);
    b.writeUInt32LE(st[ST_NLINK] >>> 0, a + 64);
    b.writeUInt32LE(st[ST_UID], a + 68);
    b.writeUInt32LE(st[ST_GID], a + 72);
    b.writeUInt32LE(st[ST_RDEV] >>> 0, a + 76);
    b.writeUInt32LE(st[ST_BLKSIZE], a + 80);
    b.writeUInt32LE(0, a + 84);
    this.dirent(p + ENTRY_OUT, name, nameLen, st[ST_INO], (st[ST_MODE] >>> 12) & 0xf, nextOff,
      len - ENTRY_OUT);
    this.pos += len;
  }

  private dirent(p: number, name: string, nameLen: number, ino: number, type: number,
    nextOff: number, len: number): void {
    const b = this.buf;
    u64(b, p, ino);
    u64(b, p + 8, nextOff);
    b.writeUInt32LE(nameLen, p + 16);
    b.writeUInt32LE(type, p + 20);
    b.write(name, p + DIRENT_HEAD, nameLen, 'utf8');
    b.fill(0, p + DIRENT_HEAD + nameLen, p + len);
  }
}
