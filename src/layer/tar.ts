// A synchronous tar codec for image layers: ustar headers, pax records where a field does not fit
// (long names, big sizes and ids) and for xattrs (`SCHILY.xattr.NAME`, raw bytes, as GNU tar, Go's
// archive/tar and containers/storage write them); GNU long names and base-256 numbers on read.
// Not tar-stream or node-tar: both decode pax values as UTF-8 text, which corrupts binary
// xattrs such as security.capability.
import * as fs from 'node:fs';

export type TarType = 'file' | 'link' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';

export interface TarEntry {
  /** Relative path without a leading `./` or a trailing slash. */
  name: string;
  type: TarType;
  mode: number;        // permission bits incl. setuid/setgid/sticky
  uid: number;
  gid: number;
  size: number;        // data bytes (files only)
  mtime: number;       // seconds
  linkname: string;    // symlink target or hard link's first name
  devmajor: number;
  devminor: number;
  xattrs: Map<string, Buffer>;
}

const BLOCK = 512;
const TYPE_FLAGS: Record<TarType, string> = { file: '0', link: '1', symlink: '2', char: '3', block: '4', dir: '5', fifo: '6' };
const FLAG_TYPES: Record<string, TarType> = { '0': 'file', '\0': 'file', '7': 'file', '1': 'link', '2': 'symlink', '3': 'char', '4': 'block', '5': 'dir', '6': 'fifo' };

export function tarEntry(name: string, type: TarType, fields: Partial<TarEntry> = {}): TarEntry {
  return { name, type, mode: 0o644, uid: 0, gid: 0, size: 0, mtime: 0, linkname: '', devmajor: 0, devminor: 0, xattrs: new Map(), ...fields };
}

export class TarError extends Error {}

// ---- writing

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len++;   // the length counts its own digits
  return Buffer.concat([Buffer.from(String(len)), body]);
}

function putString(b: Buffer, off: number, len: number, s: string): void {
  Buffer.from(s).copy(b, off, 0, len);
}

/** Octal into a field of `len` bytes (len-1 digits and a NUL); false when it does not fit. */
function putOctal(b: Buffer, off: number, len: number, n: number): boolean {
  const s = Math.max(0, Math.floor(n)).toString(8);
  if (s.length > len - 1) return false;
  b.write(s.padStart(len - 1, '0'), off, 'ascii');
  return true;
}

/** Splits a long name into ustar prefix/name at a slash; null when it cannot be split. */
function splitName(name: string): [string, string] | null {
  const bytes = Buffer.byteLength(name);
  if (bytes <= 100) return ['', name];
  if (bytes > 256) return null;
  for (let i = name.indexOf('/'); i !== -1; i = name.indexOf('/', i + 1)) {
    const prefix = name.slice(0, i), rest = name.slice(i + 1);
    if (Buffer.byteLength(prefix) <= 155 && Buffer.byteLength(rest) <= 100 && rest) return [prefix, rest];
  }
  return null;
}

function header(name: string, e: TarEntry, flag: string, size: number): { block: Buffer; pax: Buffer[] } {
  const b = Buffer.alloc(BLOCK);
  const pax: Buffer[] = [];
  const split = splitName(name);
  if (split) {
    putString(b, 0, 100, split[1]);
    putString(b, 345, 155, split[0]);
  } else {
    putString(b, 0, 100, name.slice(0, 99));
    pax.push(paxRecord('path', Buffer.from(name)));
  }
  putOctal(b, 100, 8, e.mode & 0o7777);
  if (!putOctal(b, 108, 8, e.uid)) { putOctal(b, 108, 8, 0); pax.push(paxRecord('uid', Buffer.from(String(e.uid)))); }
  if (!putOctal(b, 116, 8, e.gid)) { putOctal(b, 116, 8, 0); pax.push(paxRecord('gid', Buffer.from(String(e.gid)))); }
  if (!putOctal(b, 124, 12, size)) { putOctal(b, 124, 12, 0); pax.push(paxRecord('size', Buffer.from(String(size)))); }
  if (!putOctal(b, 136, 12, e.mtime)) { putOctal(b, 136, 12, 0); pax.push(paxRecord('mtime', Buffer.from(String(e.mtime)))); }
  b.write(flag, 156, 'ascii');
  if (Buffer.byteLength(e.linkname) > 100) pax.push(paxRecord('linkpath', Buffer.from(e.linkname)));
  else putString(b, 157, 100, e.linkname);
  b.write('ustar\0' + '00', 257, 'binary');
  putOctal(b, 329, 8, e.devmajor);
  putOctal(b, 337, 8, e.devminor);
  for (const [k, v] of e.xattrs) pax.push(paxRecord(`SCHILY.xattr.${k}`, v));
  b.fill(' ', 148, 156);
  let sum = 0;
  for (const byte of b) sum += byte;
  b.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'ascii');
  return { block: b, pax };
}

const pad = (n: number): number => (BLOCK - (n % BLOCK)) % BLOCK;

export class TarWriter {
  private readonly buf = Buffer.alloc(1 << 20);
  private used = 0;
  constructor(private readonly fd: number) {}

  private push(b: Buffer): void {
    if (this.used + b.length > this.buf.length) this.flush();
    if (b.length > this.buf.length) { writeAll(this.fd, b); return; }
    b.copy(this.buf, this.used);
    this.used += b.length;
  }

  private flush(): void {
    writeAll(this.fd, this.buf.subarray(0, this.used));
    this.used = 0;
  }

  /** One entry; a file's data is read from dataFd (exactly e.size bytes). */
  add(e: TarEntry, dataFd = -1): void {
    const name = e.type === 'dir' ? `${e.name}/` : e.name;
    const size = e.type === 'file' ? e.size : 0;
    const { block, pax } = header(name, e, TYPE_FLAGS[e.type], size);
    if (pax.length) {
      const body = Buffer.concat(pax);
      const ph = header('PaxHeaders/' + name.slice(0, 80), tarEntry('', 'file', { mtime: e.mtime }), 'x', body.length).block;
      this.push(ph);
      this.push(body);
      this.push(Buffer.alloc(pad(body.length)));
    }
    this.push(block);
    if (size === 0) return;
    let left = size;
    while (left > 0) {
      if (this.used === this.buf.length) this.flush();
      const n = fs.readSync(dataFd, this.buf, this.used, Math.min(left, this.buf.length - this.used), null);
      if (n === 0) throw new TarError(`${e.name}: file shrank while it was read`);
      this.used += n;
      left -= n;
    }
    this.push(Buffer.alloc(pad(size)));
  }

  finish(): void {
    this.push(Buffer.alloc(2 * BLOCK));
    this.flush();
  }
}

function writeAll(fd: number, b: Buffer): void {
  for (let off = 0; off < b.length;) off += fs.writeSync(fd, b, off, b.length - off);
}

// ---- reading

class Source {
  private buf = Buffer.alloc(1 << 20);
  private start = 0;
  private end = 0;
  constructor(private readonly fd: number) {}

  /** Up to n bytes buffered (fewer only at end of input). */
  private fill(n: number): number {
    if (this.end - this.start >= n) return n;
    if (this.start > 0) {
      this.buf.copy(this.buf, 0, this.start, this.end);
      this.end -= this.start;
      this.start = 0;
    }
    if (n > this.buf.length) {
      const bigger = Buffer.alloc(n);
      this.buf.copy(bigger, 0, 0, this.end);
      this.buf = bigger;
    }
    while (this.end < n) {
      let got: number;
      try {
        got = fs.readSync(this.fd, this.buf, this.end, this.buf.length - this.end, null);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EAGAIN') continue;
        throw e;
      }
      if (got === 0) break;
      this.end += got;
    }
    return Math.min(n, this.end);
  }

  take(n: number): Buffer | null {
    if (this.fill(n) < n) return null;
    const b = Buffer.from(this.buf.subarray(this.start, this.start + n));
    this.start += n;
    return b;
  }

  /** Moves n bytes to outFd (or drops them when outFd < 0). */
  move(n: number, outFd: number): void {
    while (n > 0) {
      const got = this.fill(Math.min(n, this.buf.length));
      if (got === 0) throw new TarError('truncated archive');
      const k = Math.min(got, n);
      if (outFd >= 0) writeAll(outFd, this.buf.subarray(this.start, this.start + k));
      this.start += k;
      n -= k;
    }
  }
}

function getString(b: Buffer, off: number, len: number): string {
  const end = b.indexOf(0, off);
  return b.toString('utf8', off, end === -1 || end > off + len ? off + len : end);
}

function getNumber(b: Buffer, off: number, len: number): number {
  if (b[off] & 0x80) {   // GNU base-256
    let n = b[off] & 0x7f;
    for (let i = 1; i < len; i++) n = n * 256 + b[off + i];
    return n;
  }
  const s = getString(b, off, len).trim();
  return s ? parseInt(s, 8) : 0;
}

function parsePax(body: Buffer, into: Map<string, Buffer>): void {
  let off = 0;
  while (off < body.length) {
    const sp = body.indexOf(0x20, off);
    if (sp === -1) break;
    const len = parseInt(body.toString('ascii', off, sp), 10);
    if (!(len > 0) || off + len > body.length) throw new TarError('malformed pax header');
    const rec = body.subarray(sp + 1, off + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq !== -1) into.set(rec.toString('utf8', 0, eq), Buffer.from(rec.subarray(eq + 1)));
    off += len;
  }
}

/** A normalised relative name; throws on absolute-escaping or `..` components. */
export function cleanName(raw: string): string {
  const parts = raw.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.some((p) => p === '..')) throw new TarError(`${raw}: a name with '..' in it`);
  return parts.join('/');
}

/**
 * Reads entries in order; `onEntry` gets each header and a function that copies the entry's data
 * to an fd (data not copied is skipped).
 */
export function readTar(fd: number, onEntry: (e: TarEntry, copyTo: (outFd: number) => void) => void): void {
  const src = new Source(fd);
  let pax = new Map<string, Buffer>();
  let longName: string | null = null, longLink: string | null = null;
  for (;;) {
    const h = src.take(BLOCK);
    if (!h) throw new TarError('truncated archive (no end-of-archive blocks)');
    if (h.every((x) => x === 0)) return;
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i];
    if (getNumber(h, 148, 8) !== sum) throw new TarError('bad header checksum: not a tar archive, or a corrupt one');
    const flag = String.fromCharCode(h[156] || 0x30);
    let size = getNumber(h, 124, 12);
    if (pax.has('size') && flag !== 'x' && flag !== 'g') size = Number(pax.get('size')!.toString());
    if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'K') {
      const body = src.take(size + pad(size));
      if (!body) throw new TarError('truncated archive');
      const data = body.subarray(0, size);
      if (flag === 'x') parsePax(data, pax);
      else if (flag === 'L') longName = getString(data, 0, size);
      else if (flag === 'K') longLink = getString(data, 0, size);
      continue;   // global headers: nothing in them concerns a layer
    }
    const type = FLAG_TYPES[flag];
    const prefix = h.subarray(257, 262).toString('ascii') === 'ustar' ? getString(h, 345, 155) : '';
    let name = longName ?? (prefix ? `${prefix}/${getString(h, 0, 100)}` : getString(h, 0, 100));
    let linkname = longLink ?? getString(h, 157, 100);
    const num = (k: string, v: number): number => (pax.has(k) ? Number(pax.get(k)!.toString()) : v);
    if (pax.has('path')) name = pax.get('path')!.toString();
    if (pax.has('linkpath')) linkname = pax.get('linkpath')!.toString();
    const xattrs = new Map<string, Buffer>();
    for (const [k, v] of pax) if (k.startsWith('SCHILY.xattr.')) xattrs.set(k.slice(13), v);
    const e: TarEntry = {
      name: cleanName(name), type: type ?? 'file', mode: getNumber(h, 100, 8) & 0o7777,
      uid: num('uid', getNumber(h, 108, 8)), gid: num('gid', getNumber(h, 116, 8)), size: type === 'file' || !type ? size : 0,
      mtime: Math.floor(num('mtime', getNumber(h, 136, 12))), linkname,
      devmajor: getNumber(h, 329, 8), devminor: getNumber(h, 337, 8), xattrs,
    };
    pax = new Map();
    longName = longLink = null;
    if (!type) throw new TarError(`${e.name}: unsupported entry type '${flag}'`);
    let copied = false;
    onEntry(e, (outFd) => { copied = true; src.move(size, outFd); });
    if (!copied) src.move(size, -1);
    src.move(pad(size), -1);
  }
}
