// The pool core without a mount: allocation, sharing and breaking it, reference counts through
// snapshot/write/delete chains, many volumes and snapshots, deep chains, space accounting,
// discards, out-of-space, validation, and recovery of committed state.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { E } from '../src/sys/constants';
import { Pool, ThinError } from '../src/thin/pool';
import { check, dumpXml, restoreXml } from '../src/thin/report';
import { tempDir } from './helpers/mount';

const BS = 64 * 1024;
let dir: string;
let pool: Pool;

function fresh(blocks = 64, opts: Parameters<typeof Pool.create>[2] = {}): Pool {
  const d = path.join(dir, `p${Math.random().toString(36).slice(2)}`);
  return Pool.create(d, blocks * BS, opts);
}

function thin(p: Pool, id: number, blocks: number): void {
  p.message(`create_thin ${id}`);
  p.setSize(id, blocks * BS);
}

const block = (fill: number, len = BS): Buffer => Buffer.alloc(len, fill);

function errnoOf(fn: () => unknown): number {
  try {
    fn();
  } catch (e) {
    if (e instanceof ThinError) return e.errno;
    throw e;
  }
  return 0;
}

beforeEach(() => {
  dir = tempDir('thinpool');
  pool = fresh();
});
afterEach(() => {
  pool.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('thin pool core', () => {
  test('reads of unprovisioned blocks are zeros and allocate nothing; first writes allocate', () => {
    thin(pool, 0, 16);
    expect(pool.read(0, 0, 3 * BS).equals(Buffer.alloc(3 * BS))).toBe(true);
    expect(pool.space.usedBlocks).toBe(0);
    pool.write(0, BS + 100, Buffer.from('hello'));
    expect(pool.space.usedBlocks).toBe(1);
    const b = pool.read(0, BS, BS);
    expect(b.subarray(100, 105).toString()).toBe('hello');
    expect(b.subarray(0, 100).equals(Buffer.alloc(100))).toBe(true);   // the rest of the block is zero
    expect(b.subarray(105).equals(Buffer.alloc(BS - 105))).toBe(true);
    pool.write(0, BS + 200, Buffer.from('again'));
    expect(pool.space.usedBlocks).toBe(1);                              // same block, no new one
    expect(pool.devices.get(0)!.mapped).toBe(1);
  });

  test('a write to a block shared with a snapshot copies it once and never touches the other', () => {
    thin(pool, 0, 8);
    pool.write(0, 0, block(1, 2 * BS));
    pool.message('create_snap 1 0');
    expect(pool.space.usedBlocks).toBe(2);
    pool.write(0, 10, Buffer.from('X'));
    expect(pool.space.usedBlocks).toBe(3);                              // block 0 copied once
    pool.write(0, 20, Buffer.from('Y'));
    expect(pool.space.usedBlocks).toBe(3);                              // now exclusive
    expect(pool.read(1, 0, BS).equals(block(1))).toBe(true);            // the snapshot is intact
    const o = pool.read(0, 0, BS);
    expect([o[10], o[20], o[0]]).toEqual([0x58, 0x59, 1]);
    expect(pool.read(0, BS, BS).equals(block(1))).toBe(true);           // still shared
    pool.write(1, BS, block(9));                                        // the snapshot breaks sharing too
    expect(pool.read(0, BS, BS).equals(block(1))).toBe(true);
    expect(pool.read(1, BS, BS).equals(block(9))).toBe(true);
    expect(check(pool).ok).toBe(true);
  });

  test('reference counts stay right through snapshot / write / delete chains', () => {
    thin(pool, 0, 16);
    pool.write(0, 0, block(1, 4 * BS));
    pool.message('create_snap 1 0');
    pool.message('create_snap 2 1');
    pool.write(1, 0, block(2));
    pool.write(2, BS, block(3));
    expect(check(pool)).toEqual({ ok: true, problems: [], leaks: [] });
    pool.message('delete 1');
    expect(check(pool).ok).toBe(true);
    pool.message('delete 0');
    expect(pool.read(2, 0, 4 * BS).equals(Buffer.concat([block(1), block(3), block(1), block(1)]))).toBe(true);
    expect(check(pool).ok).toBe(true);
    pool.message('delete 2');
    pool.commit();
    expect(pool.space.usedBlocks).toBe(0);
    expect(check(pool).ok).toBe(true);
  });

  test('space used is 1x then 2x a volume after a full overwrite of its snapshot', () => {
    thin(pool, 0, 20);
    pool.write(0, 0, block(5, 20 * BS));
    expect(pool.space.usedBlocks).toBe(20);
    pool.message('create_snap 1 0');
    expect(pool.space.usedBlocks).toBe(20);
    pool.write(1, 0, block(6, 20 * BS));
    expect(pool.space.usedBlocks).toBe(40);
    expect(pool.read(0, 0, 20 * BS).equals(block(5, 20 * BS))).toBe(true);
  });

  test('discard: exclusive blocks go back to free space (after commit), shared ones stay', () => {
    thin(pool, 0, 8);
    pool.write(0, 0, block(1, 4 * BS));
    pool.message('create_snap 1 0');
    pool.write(0, 2 * BS, block(2, 2 * BS));       // blocks 2,3 of 0 now exclusive
    const used = pool.space.usedBlocks;
    pool.discard(0, 0, 4 * BS);
    expect(pool.devices.get(0)!.mapped).toBe(0);
    expect(pool.read(0, 0, 4 * BS).equals(Buffer.alloc(4 * BS))).toBe(true);
    expect(pool.read(1, 0, 4 * BS).equals(block(1, 4 * BS))).toBe(true);   // shared blocks stay
    expect(pool.space.usedBlocks).toBe(used - 2);
    pool.commit();
    expect(pool.space.freeBlocks).toBe(pool.nrBlocks - 4);
    expect(check(pool).ok).toBe(true);
  });

  test('out of space: ENOSPC for new blocks, provisioned exclusive blocks keep working', () => {
    const p = fresh(4, { errorIfNoSpace: true });
    try {
      thin(p, 0, 10);
      p.write(0, 0, block(1, 4 * BS));
      expect(errnoOf(() => p.write(0, 4 * BS, block(2)))).toBe(E.ENOSPC);
      p.write(0, 0, block(3));                                  // exclusive: fine
      expect(p.read(0, 0, BS).equals(block(3))).toBe(true);
      p.message('create_snap 1 0');
      expect(errnoOf(() => p.write(0, 0, block(4)))).toBe(E.ENOSPC);  // shared now: needs a copy
      p.resize(8 * BS);                                         // online grow gives room
      p.write(0, 4 * BS, block(2));
      expect(check(p).ok).toBe(true);
    } finally {
      p.close();
    }
  });

  test('validation errors leave the pool untouched', () => {
    thin(pool, 0, 4);
    const before = dumpXml(pool);
    expect(errnoOf(() => pool.message('create_thin 0'))).toBe(E.EEXIST);
    expect(errnoOf(() => pool.message('create_thin 16777216'))).toBe(E.EINVAL);
    expect(errnoOf(() => pool.message('create_thin -1'))).toBe(E.EINVAL);
    expect(errnoOf(() => pool.message('create_snap 0 0'))).toBe(E.EEXIST);
    expect(errnoOf(() => pool.message('create_snap 5 9'))).toBe(E.ENODATA);
    expect(errnoOf(() => pool.message('delete 9'))).toBe(E.ENODATA);
    pool.openDevices.set(0, 1);
    expect(errnoOf(() => pool.message('delete 0'))).toBe(E.EBUSY);
    pool.openDevices.delete(0);
    expect(errnoOf(() => pool.message('set_transaction_id 3 4'))).toBe(E.EINVAL);
    expect(errnoOf(() => pool.message('frobnicate'))).toBe(E.EINVAL);
    expect(errnoOf(() => pool.message('release_metadata_snap'))).toBe(E.EINVAL);
    expect(dumpXml(pool)).toBe(before);
    pool.message('set_transaction_id 0 7');
    expect(pool.transactionId).toBe(7);
    pool.message('reserve_metadata_snap');
    expect(pool.heldRoot).not.toBeNull();
    pool.message('release_metadata_snap');
    expect(pool.heldRoot).toBeNull();
    for (const bs of [32 * 1024, 96 * 1024, 2 * 1024 * 1024 * 1024]) {
      expect(errnoOf(() => fresh(4, { blockSize: bs }))).toBe(E.EINVAL);
    }
  });

  test('1,000 volumes; 1,000 snapshots of one volume; a 1,000-deep snapshot chain', () => {
    const p = fresh(4096);
    try {
      for (let i = 0; i < 1000; i++) thin(p, i, 4);
      for (let i = 0; i < 1000; i++) p.write(i, 0, Buffer.from(`v${i}`));
      expect(p.space.usedBlocks).toBe(1000);
      p.write(0, 0, block(7, 2 * BS));
      for (let i = 0; i < 1000; i++) p.message(`create_snap ${2000 + i} 0`);
      expect(p.space.usedBlocks).toBe(1001);
      for (let i = 0; i < 1000; i++) p.message(`create_snap ${3000 + i} ${i === 0 ? 1 : 2999 + i}`);
      const deepest = 3999;
      expect(p.read(deepest, 0, 2).toString()).toBe('v1');
      p.write(deepest, 0, Buffer.from('deep'));
      expect(p.read(1, 0, 2).toString()).toBe('v1');
      expect(p.read(deepest, 0, 4).toString()).toBe('deep');
      expect(check(p).ok).toBe(true);
      // a lookup costs the same at depth 1 and 1000: it is 4 node steps either way
      const t = (id: number): number => {
        const s = process.hrtime.bigint();
        for (let i = 0; i < 20000; i++) p.read(id, BS, 16);
        return Number(process.hrtime.bigint() - s);
      };
      t(3000); t(deepest);
      expect(t(deepest) / t(3000)).toBeLessThan(3);
    } finally {
      p.close();
    }
  });

  test('committed state survives a reopen; an uncommitted transaction is lost whole', () => {
    thin(pool, 0, 8);
    pool.write(0, 0, block(1));
    pool.message('create_snap 1 0');
    pool.commit();
    pool.write(0, BS, block(2));     // not committed
    const d = pool.dir;
    pool.close();
    pool = Pool.open(d);
    expect(pool.devices.has(1)).toBe(true);
    expect(pool.read(0, 0, BS).equals(block(1))).toBe(true);
    expect(pool.devices.get(0)!.mapped).toBe(1);
    expect(check(pool).ok).toBe(true);
    pool.checkpoint();
    pool.close();
    pool = Pool.open(d);
    expect(pool.read(1, 0, BS).equals(block(1))).toBe(true);
  });

  test('dump and restore give back the same mappings', () => {
    thin(pool, 0, 8);
    pool.write(0, 0, block(1, 3 * BS));
    pool.write(0, 6 * BS, block(2));
    pool.message('create_snap 1 0');
    pool.write(1, BS, block(3));
    const xml = dumpXml(pool);
    const p2 = restoreXml(xml, path.join(dir, 'restored'));
    try {
      expect(dumpXml(p2)).toBe(xml);
      expect(check(p2).ok).toBe(true);
      expect(p2.mappings(1)).toEqual(pool.mappings(1));
    } finally {
      p2.close();
    }
  });
});
