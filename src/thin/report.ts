// What a pool says about itself: dm-thin's status line and a human summary, the check (what
// thin_check verifies) with repair, and thin_dump's XML, both ways.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { E } from '../sys/constants';
import { Pool, ThinError, DATA_FILE, META_FILE } from './pool';
import { UNMAPPED, isLeaf, nodesOf, walk } from './tree';
import type { OnProgress } from './progress';

export interface Status {
  transactionId: number;
  metadata: { used: number; total: number };
  data: { used: number; total: number; free: number };
  heldRoot: number | null;
  mode: 'rw' | 'out_of_data_space' | 'ro';
  discard: 'discard_passdown';
  noSpace: 'error_if_no_space' | 'queue_if_no_space';
  needsCheck: boolean;
  blockSize: number;
  devices: { id: number; size: number; mapped: number }[];
  dataFileAllocated: number;
  eventCount: number;
  events: { n: number; time: number; msg: string }[];
}

export function status(p: Pool): Status {
  const metaBlock = 4096;
  const dataAlloc = fs.fstatSync(p.dataFd).blocks * 512;
  return {
    transactionId: p.transactionId,
    metadata: { used: Math.ceil(p.meta.allocatedBytes() / metaBlock), total: Math.floor(p.opts.metadataSize / metaBlock) },
    data: { used: p.space.usedBlocks, total: p.nrBlocks, free: p.space.freeBlocks },
    heldRoot: p.heldRoot,
    mode: p.readOnly ? 'ro' : p.space.freeBlocks === 0 ? 'out_of_data_space' : 'rw',
    discard: 'discard_passdown',
    noSpace: p.opts.errorIfNoSpace ? 'error_if_no_space' : 'queue_if_no_space',
    needsCheck: p.needsCheck !== null,
    blockSize: p.blockSize,
    devices: [...p.devices.values()].sort((a, b) => a.id - b.id).map((d) => ({ id: d.id, size: d.size, mapped: d.mapped })),
    dataFileAllocated: dataAlloc,
    eventCount: p.eventCount,
    events: [...p.events],
  };
}

/** dm-thin's pool status line (the fields `dmsetup status` prints for a thin-pool target). */
export function statusLine(s: Status): string {
  return [s.transactionId, `${s.metadata.used}/${s.metadata.total}`, `${s.data.used}/${s.data.total}`,
    s.heldRoot === null ? '-' : String(s.heldRoot), s.mode, s.discard, s.noSpace, s.needsCheck ? 'needs_check' : '-'].join(' ');
}

const human = (n: number): string => {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
};

export function statusText(s: Status): string {
  const bs = s.blockSize;
  return [
    statusLine(s),
    `Data Space Used: ${human(s.data.used * bs)}`,
    `Data Space Total: ${human(s.data.total * bs)}`,
    `Data Space Available: ${human(s.data.free * bs)}`,
    `Metadata Space Used: ${human(s.metadata.used * 4096)}`,
    `Metadata Space Total: ${human(s.metadata.total * 4096)}`,
    `Metadata Space Available: ${human(Math.max(0, s.metadata.total - s.metadata.used) * 4096)}`,
    `Block Size: ${human(bs)}`,
    `Data file allocated on the host: ${human(s.dataFileAllocated)}`,
    `Thin volumes: ${s.devices.length}`,
    ...s.devices.map((d) => `  ${d.id}: size ${human(d.size)}, mapped ${human(d.mapped * bs)}`),
    `Events: ${s.eventCount}`,
    ...s.events.slice(-5).map((e) => `  #${e.n} ${new Date(e.time).toISOString()} ${e.msg}`),
  ].join('\n');
}

export interface CheckReport {
  ok: boolean;
  problems: string[];
  leaks: number[];
}

/** What thin_check verifies, on the committed state of an open pool. */
export function check(p: Pool, onProgress: OnProgress = () => {}): CheckReport {
  const problems: string[] = [];
  const leaks: number[] = [];
  const total = p.devices.size + p.nrBlocks;
  let done = 0;
  const counted = p.countRefs();
  for (const d of p.devices.values()) {
    onProgress(++done, total);
    let mapped = 0;
    walk(d.root, (v, b) => {
      mapped++;
      if (b < 0 || b >= p.nrBlocks) problems.push(`device ${d.id}: block ${v} maps to ${b}, outside the data file (${p.nrBlocks} blocks)`);
    });
    if (mapped !== d.mapped) problems.push(`device ${d.id}: mapped block count ${d.mapped}, counted ${mapped}`);
  }
  for (let b = 0; b < p.nrBlocks; b++) {
    if ((b & 0xfffff) === 0) onProgress(done + b, total);
    if (p.space.refs[b] !== counted[b]) {
      if (counted[b] === 0) leaks.push(b);
      else problems.push(`block ${b}: reference count ${p.space.refs[b]}, counted ${counted[b]}`);
    }
  }
  for (const n of nodesOf([...p.devices.values()].map((d) => d.root))) {
    if (isLeaf(n)) {
      let c = 0;
      for (const b of n.blocks) if (b !== UNMAPPED) c++;
      if (c !== n.count) problems.push('a leaf node counts its entries wrong');
    }
  }
  if (p.metaFull) problems.push('the metadata space is exhausted (grow it: thin resize --metadata-size)');
  else if (p.needsCheck) problems.push(p.needsCheck);
  if (leaks.length) problems.push(`${leaks.length} leaked block(s)`);
  return { ok: problems.length === 0, problems, leaks };
}

// ---- thin_dump XML ----

/** The held metadata snapshot (reserve_metadata_snap), as thin_dump XML of that moment. */
export const METADATA_SNAP_FILE = 'metadata-snap.xml';

/** After a message: a reserved metadata snapshot is written out (the committed state), a released one goes. */
export function metadataSnapAfter(p: Pool, dir: string, msg: string): void {
  const verb = msg.trim().split(/\s+/)[0];
  const file = path.join(dir, METADATA_SNAP_FILE);
  if (verb === 'reserve_metadata_snap') {
    p.commit();
    fs.writeFileSync(`${file}.tmp`, dumpXml(p));
    fs.renameSync(`${file}.tmp`, file);
  } else if (verb === 'release_metadata_snap') fs.rmSync(file, { force: true });
}

/** `dump --metadata-snap`: the XML of the held metadata snapshot. */
export function metadataSnapXml(dir: string): string {
  try {
    return fs.readFileSync(path.join(dir, METADATA_SNAP_FILE), 'utf8');
  } catch {
    throw new ThinError(E.EINVAL, `${dir} holds no metadata snapshot (message reserve_metadata_snap first)`);
  }
}

const sectors = (bytes: number): number => bytes / 512;

export function dumpXml(p: Pool, onProgress: OnProgress = () => {}): string {
  const out: string[] = [];
  const total = [...p.devices.values()].reduce((n, d) => n + d.mapped, 0);
  let done = 0;
  out.push(`<superblock uuid="" time="${p.time}" transaction="${p.transactionId}" flags="0" version="2" data_block_size="${sectors(p.blockSize)}" nr_data_blocks="${p.nrBlocks}">`);
  for (const d of [...p.devices.values()].sort((a, b) => a.id - b.id)) {
    out.push(`  <device dev_id="${d.id}" mapped_blocks="${d.mapped}" transaction="${d.transaction}" creation_time="${d.creationTime}" snap_time="${d.snapTime}">`);
    const pairs: [number, number][] = [];
    walk(d.root, (v, b) => pairs.push([v, b]));
    for (let i = 0; i < pairs.length;) {
      let j = i + 1;
      while (j < pairs.length && pairs[j][0] === pairs[j - 1][0] + 1 && pairs[j][1] === pairs[j - 1][1] + 1) j++;
      const [v, b] = pairs[i];
      if ((done += j - i) % 65536 < j - i) onProgress(done, total);
      if (j - i === 1) out.push(`    <single_mapping origin_block="${v}" data_block="${b}" time="${d.creationTime}"/>`);
      else out.push(`    <range_mapping origin_begin="${v}" data_begin="${b}" length="${j - i}" time="${d.creationTime}"/>`);
      i = j;
    }
    out.push('  </device>');
    onProgress(done, total);
  }
  out.push('</superblock>');
  return out.join('\n') + '\n';
}

function attrs(tag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of tag.matchAll(/(\w+)="([^"]*)"/g)) out[m[1]] = m[2];
  return out;
}

/** Creates a pool in dir from thin_dump XML (the metadata; data blocks are the data file's). */
export function restoreXml(xml: string, dir: string): Pool {
  const sbTag = /<superblock\b[^>]*>/.exec(xml);
  if (!sbTag) throw new ThinError(E.EINVAL, 'not thin_dump XML: no <superblock>');
  const sb = attrs(sbTag[0]);
  const blockSize = Number(sb.data_block_size) * 512, nr = Number(sb.nr_data_blocks);
  if (!Number.isFinite(blockSize) || !Number.isFinite(nr) || nr <= 0) throw new ThinError(E.EINVAL, 'bad <superblock> attributes');
  const p = Pool.create(dir, nr * blockSize, { blockSize });
  const devRe = /<device\b([^>]*)>([\s\S]*?)<\/device>/g;
  const times: { id: number; transaction: number; creationTime: number; snapTime: number }[] = [];
  for (const m of xml.matchAll(devRe)) {
    const a = attrs(m[1]);
    const id = Number(a.dev_id);
    times.push({ id, transaction: Number(a.transaction ?? 0), creationTime: Number(a.creation_time ?? 0), snapTime: Number(a.snap_time ?? 0) });
    p.message(`create_thin ${id}`);
    let maxV = 0;
    for (const r of m[2].matchAll(/<(range_mapping|single_mapping)\b([^>]*)\/>/g)) {
      const x = attrs(r[2]);
      const [v0, b0, len] = r[1] === 'range_mapping'
        ? [Number(x.origin_begin), Number(x.data_begin), Number(x.length)]
        : [Number(x.origin_block), Number(x.data_block), 1];
      for (let i = 0; i < len; i++) p.restoreMapping(id, v0 + i, b0 + i);
      maxV = Math.max(maxV, v0 + len);
    }
    p.setSize(id, maxV * blockSize);
  }
  p.restoreTimes(Number(sb.time ?? 0), times);
  const t = Number(sb.transaction);
  if (t) p.message(`set_transaction_id 0 ${t}`);
  p.checkpoint();
  return p;
}

export function poolExists(dir: string): boolean {
  return fs.existsSync(path.join(dir, META_FILE)) && fs.existsSync(path.join(dir, DATA_FILE));
}
