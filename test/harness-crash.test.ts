// Harness mode, power loss: what a crash keeps under the POSIX-strict and ext4 models (new
// files, fsync of a file vs of its dir, rename over an existing file, appends), the unsynced
// writes a crash may keep (the N most recent, a seeded random subset, torn into sectors or
// pages), open files failing with EIO after it, crashes at the Nth operation (before or after
// it), ENOSPC after N bytes, EIO on read ranges, unsynced data spilled to disk past 64 MiB —
// and SQLite under seeded random crashes (durable with synchronous=FULL, not with OFF).
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CLI, isMounted, layerfs, requireFuse, tempDir, unmountAll } from './helpers/mount';
import { ensureUser, runAs } from './helpers/users';
import { shown as shownView, treeHash } from './helpers/overlay';
import { randomOps, run, type OpSpace } from './helpers/union-ops';
import { Harness, type Model } from '../src/harness/api';
import { makeDb, trials, type SqliteConfig, type TrialCounts } from './helpers/sqlite-trials';

const py = (code: string): string => {
  const r = spawnSync('python3', ['-c', code], { encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`python3: ${r.stderr}`);
  return r.stdout;
};

const read = (p: string): string | null => (fs.existsSync(p) ? fs.readFileSync(p, 'utf8') : null);

describe('harness mode: power loss', () => {
  let dir: string;
  const mounted: Harness[] = [];

  beforeAll(() => {
    requireFuse();
    dir = tempDir('hcrash');
  });
  afterAll(async () => {
    for (const h of mounted) await h.unmount().catch(() => undefined);
    unmountAll(dir);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function setup(tag: string, model: Model, prep: (base: string) => void = () => {}): Promise<{ h: Harness; mnt: string; base: string }> {
    const base = path.join(dir, tag, 'base'), mnt = path.join(dir, tag, 'mnt');
    fs.mkdirSync(path.join(base, 'd'), { recursive: true });
    fs.writeFileSync(path.join(base, 'd/cfg'), 'old');
    fs.writeFileSync(path.join(base, 'log'), 'start\n');
    prep(base);
    fs.mkdirSync(mnt, { recursive: true });
    const h = await Harness.mount(base, mnt, { state: path.join(dir, tag, 'state'), model });
    mounted.push(h);
    return { h, mnt, base };
  }

  // one program, the same calls under each model
  const program = (m: string): string => `
import os
m=${JSON.stringify(m)}
def fsync_dir(p):
    fd=os.open(p, os.O_RDONLY); os.fsync(fd); os.close(fd)
open(m+'/unsynced','w').write('u')                      # no fsync at all
with open(m+'/filesync','w') as f:                       # the file's fsync, not its dir's
    f.write('f'); f.flush(); os.fsync(f.fileno())
os.mkdir(m+'/newdir')
with open(m+'/newdir/x','w') as f:
    f.write('x'); f.flush(); os.fsync(f.fileno())
fsync_dir(m+'/newdir')                                   # newdir's entries, not newdir's own name
with open(m+'/log','a') as f: f.write('more\\n')          # an unsynced append to a fixture file
with open(m+'/d/cfg.tmp','w') as f:                       # replace by rename: new data fsynced,
    f.write('new'); f.flush(); os.fsync(f.fileno())
os.rename(m+'/d/cfg.tmp', m+'/d/cfg')                     # the rename not (no fsync of d)
with open(m+'/late','w') as f: f.write('late')           # created before the commit below, data unsynced
fsync_dir(m+'/newdir')                                   # (ext4: a journal commit of everything before)
`;

  test('POSIX-strict: only what was fsynced survives, names only by an fsync of their dir', async () => {
    const { h, mnt, base } = await setup('posix', 'posix');
    const before = treeHash(base);
    py(program(mnt));
    expect((await h.status()).pendingChanges).toBeGreaterThan(0);
    await h.crash();
    expect(fs.readdirSync(mnt).sort()).toEqual(['d', 'log']);   // no new name was made durable in the root
    expect(read(`${mnt}/d/cfg`)).toBe('old');                     // the rename was lost
    expect(fs.readdirSync(`${mnt}/d`)).toEqual(['cfg']);          // and so was cfg.tmp's name
    expect(read(`${mnt}/log`)).toBe('start\n');                   // the append was lost
    expect(treeHash(base)).toBe(before);
    // what the harness's sync makes durable survives whole
    py(program(mnt));
    await h.sync();
    expect((await h.status()).pendingChanges).toBe(0);
    await h.crash();
    expect(read(`${mnt}/d/cfg`)).toBe('new');
    expect(read(`${mnt}/newdir/x`)).toBe('x');
    expect(read(`${mnt}/log`)).toBe('start\nmore\n');
    expect(read(`${mnt}/unsynced`)).toBe('u');
    // extended attributes are the inode's: durable with its fsync
    py(`
import os
m=${JSON.stringify(mnt)}
os.setxattr(m+'/d', 'user.synced', b'1')
fd=os.open(m+'/d', os.O_RDONLY); os.fsync(fd); os.close(fd)
os.setxattr(m+'/d', 'user.unsynced', b'2')
os.removexattr(m+'/d', 'user.synced')
`);
    await h.crash();
    expect(py(`import os; print(sorted(os.listxattr(${JSON.stringify(`${mnt}/d`)})))`).trim()).toBe("['user.synced']");
  });

  test('ext4 data=ordered: an fsync commits every earlier change of names; data only by its own fsync; replace-by-rename keeps the new data', async () => {
    const { h, mnt } = await setup('ext4', 'ext4');
    py(program(mnt));
    await h.crash();
    expect(fs.readdirSync(mnt).sort()).toEqual(['d', 'filesync', 'late', 'log', 'newdir', 'unsynced']);
    expect(read(`${mnt}/filesync`)).toBe('f');
    expect(read(`${mnt}/unsynced`)).toBe('');          // the name committed, its data never synced: empty
    expect(read(`${mnt}/late`)).toBe('');
    expect(read(`${mnt}/newdir/x`)).toBe('x');
    expect(read(`${mnt}/d/cfg`)).toBe('new');          // the rename committed with the new data
    expect(fs.readdirSync(`${mnt}/d`)).toEqual(['cfg']);
    expect(read(`${mnt}/log`)).toBe('start\n');
  });

  test('rename over an existing file without an fsync of the dir: lost under POSIX-strict, kept under ext4 (auto_da_alloc)', async () => {
    // the program: write the new version, fsync it (POSIX) or not (relying on ext4), rename it over the old one
    const replace = (m: string, fsyncFile: boolean): string => `
import os
with open(${JSON.stringify(m)}+'/d/cfg.new','w') as f:
    f.write('v2')
    ${fsyncFile ? 'f.flush(); os.fsync(f.fileno())' : 'pass'}
os.rename(${JSON.stringify(m)}+'/d/cfg.new', ${JSON.stringify(m)}+'/d/cfg')
fd=os.open(${JSON.stringify(m)}+'/log', os.O_RDWR); os.fsync(fd); os.close(fd)   # some later fsync elsewhere
`;
    for (const model of ['posix', 'ext4'] as Model[]) {
      for (const fsyncFile of [true, false]) {
        const { h, mnt } = await setup(`replace-${model}-${fsyncFile}`, model);
        py(replace(mnt, fsyncFile));
        expect(read(`${mnt}/d/cfg`)).toBe('v2');
        await h.crash();
        // never a torn or empty config: the old one, or the whole new one
        expect(read(`${mnt}/d/cfg`), `${model}, fsync of the file ${fsyncFile}`).toBe(model === 'ext4' ? 'v2' : 'old');
        await h.unmount();
        mounted.pop();
      }
    }
  });

  test('a crash keeps the N most recent unsynced writes, a seeded random subset, or torn parts of them', async () => {
    const { h, mnt } = await setup('keep', 'posix');
    const chunk = 3000;
    // a durable empty file, then four unsynced writes of 3000 bytes: A, B, C, D
    const writeAll = (): void => {
      py(`
import os
m=${JSON.stringify(mnt)}
f=open(m+'/f','wb', buffering=0); os.fsync(f.fileno())
fd=os.open(m, os.O_RDONLY); os.fsync(fd); os.close(fd)
for i in range(4): f.write(bytes([65+i])*${chunk})
`);
    };
    // which writer each byte of the file holds after the crash ('.' = never written)
    const layout = (): string => {
      const b = fs.readFileSync(`${mnt}/f`);
      let s = '';
      for (let i = 0; i < b.length; i += 500) s += b[i] === 0 ? '.' : String.fromCharCode(b[i]);
      return `${b.length}:${s}`;
    };
    writeAll();
    await h.crash();
    expect(fs.statSync(`${mnt}/f`).size).toBe(0);           // by default nothing unsynced survives
    writeAll();
    await h.crash({ keepLast: 2 });
    expect(layout()).toBe(`12000:${'.'.repeat(12)}${'C'.repeat(6)}${'D'.repeat(6)}`);
    // torn into pages: the last three parts are C's two (6000-8192, 8192-9000) and D's one
    writeAll();
    await h.crash({ keepLast: 3, torn: 'page' });
    const b = fs.readFileSync(`${mnt}/f`);
    expect(b.length).toBe(12000);
    expect(b.subarray(0, 6000).every((x) => x === 0)).toBe(true);
    expect(b.subarray(6000, 9000).every((x) => x === 67)).toBe(true);
    expect(b.subarray(9000).every((x) => x === 68)).toBe(true);
    // a seeded random subset of sectors: the same seed gives the same state; every sector whole
    const states: string[] = [];
    for (const seed of [5, 5, 6]) {
      writeAll();
      await h.crash({ keepProb: 0.5, torn: 'sector', seed });
      const got = fs.readFileSync(`${mnt}/f`);
      for (let s = 0; s < got.length; s += 512) {
        const sector = got.subarray(s, Math.min(got.length, s + 512));
        // a sector holds one writer's bytes where the writes are sector aligned... a write boundary
        // inside a sector splits it in two parts, each whole
        const parts = new Set([...sector].map((x) => x));
        expect(parts.size).toBeLessThanOrEqual(2);
      }
      states.push(got.toString('latin1'));
    }
    expect(states[0]).toBe(states[1]);
    expect(states[0]).not.toBe(states[2]);
    expect(new Set(states[0]).size).toBeGreaterThan(1);   // some parts kept, some not
  });

  test('after a crash open files fail with EIO, a fresh mount shows the durable state; crash rules fire before or after the Nth call', async () => {
    const { h, mnt } = await setup('eio', 'posix');
    // a process holding a file open across the crash
    const holder = spawn('python3', ['-c', `
import os, sys, time
f=open(${JSON.stringify(mnt)}+'/log','a', buffering=1)
print('open', flush=True)
sys.stdin.readline()
try:
    f.write('x\\n'); print('write ok', flush=True)
except OSError as e:
    print('errno', e.errno, flush=True)
`], { stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    holder.stdout.on('data', (d: Buffer) => (out += d.toString()));
    await new Promise<void>((res) => holder.stdout.once('data', () => res()));
    await h.crash();
    holder.stdin.write('\n');
    await new Promise((res) => holder.on('exit', res));
    expect(out).toContain('errno 5');
    expect(read(`${mnt}/log`)).toBe('start\n');
    expect(fs.writeFileSync(`${mnt}/after`, 'ok')).toBeUndefined();   // the new mount works

    // crash before the first fsync of /data: its write is lost; after it: kept
    for (const when of ['before', 'after'] as const) {
      await h.reset();
      await h.inject({ op: 'fsync', path: '/data', crash: when });
      const r = spawnSync('python3', ['-c', `
import os
m=${JSON.stringify(mnt)}
fd=os.open(m, os.O_RDONLY); 
with open(m+'/data','w') as f:
    os.fsync(fd)
    f.write('payload'); f.flush(); os.fsync(f.fileno())
`], { encoding: 'utf8' });
      expect(r.stderr).toContain('Errno 5');                    // the caller never saw its fsync succeed
      expect((await h.status()).crashed).toBe(true);
      expect(() => fs.readdirSync(mnt)).toThrow(/EIO/);          // nothing answers until the recovery
      await h.recover();
      expect(read(`${mnt}/data`), when).toBe(when === 'after' ? 'payload' : '');
      expect((await h.trace({ op: 'fsync', path: '/data' })).at(-1)?.fault).toBe(0);
    }
    await h.clearFaults();
    // a recover without a crash, a bad crash option: one clear line each, nothing changed
    await expect(h.recover()).rejects.toThrow(/has not crashed/);
    const bad = layerfs(['harness', 'ctl', mnt, 'crash', '--keep-last', '2', '--keep-prob', '0.5']);
    expect(bad.status).not.toBe(0);
    expect(bad.stderr.trim().split('\n')).toEqual(['layerfs: keepLast or keepProb, not both']);
    expect(layerfs(['harness', 'ctl', mnt, 'crash', '--torn', 'block']).stderr).toMatch(/bad torn: block/);
    expect((await h.status()).crashed).toBe(false);
  });

  test('ENOSPC after N bytes (a short write first), EIO on reads of a range', async () => {
    const { h, mnt } = await setup('space', 'posix', (base) => fs.writeFileSync(path.join(base, 'blob'), Buffer.alloc(64 * 1024, 7)));
    await h.inject({ op: 'write', path: '/out/**', afterBytes: 10_000 });
    fs.mkdirSync(`${mnt}/out`);
    const r = py(`
import os
fd=os.open(${JSON.stringify(mnt)}+'/out/f', os.O_WRONLY|os.O_CREAT, 0o644)
res=[]
for i in range(4):
    try: res.append(os.write(fd, b'x'*4096))
    except OSError as e: res.append(e.errno)
print(res)
`);
    expect(r.trim()).toBe('[4096, 4096, 1808, 28]');   // 10,000 bytes fit, then ENOSPC
    expect(fs.statSync(`${mnt}/out/f`).size).toBe(10_000);
    // other paths are not limited
    fs.writeFileSync(`${mnt}/free`, Buffer.alloc(20_000));
    await h.clearFaults();
    await h.inject({ op: 'read', path: '/blob', errno: 'EIO', range: [16384, 20480] });
    const rd = py(`
import os
fd=os.open(${JSON.stringify(mnt)}+'/blob', os.O_RDONLY)
out=[]
for off in (0, 8192, 16384, 18000, 20480, 32768):
    try: out.append(len(os.pread(fd, 4096, off)))
    except OSError as e: out.append(-e.errno)
print(out)
`);
    expect(rd.trim()).toBe('[4096, 4096, -5, -5, 4096, 4096]');
    await h.clearFaults();
  });

  test('overwritten unsynced data is kept aside (past 64 MiB on disk), so a crash can keep an older write and drop a newer one', async () => {
    const { h, mnt } = await setup('spill', 'posix');
    // 384 blocks of 128 KiB (48 MiB; one request each) written three times over (A, then B,
    // then C), nothing synced: A's and B's bytes leave the live file and are kept by the
    // harness — 96 MiB, past the 64 MiB it holds in memory
    const MiB = 1024 * 1024, BLK = 128 * 1024, N = 384;
    const writeAll = (): void => {
      py(`
import os
m=${JSON.stringify(mnt)}
f=open(m+'/big','wb', buffering=0); os.fsync(f.fileno())
fd=os.open(m, os.O_RDONLY); os.fsync(fd); os.close(fd)
for c in b'ABC':
    for i in range(${N}): os.pwrite(f.fileno(), bytes([c])*${BLK}, i*${BLK})
`);
    };
    writeAll();
    const st = await h.status();
    expect(st.writes).toBe(3 * N);
    expect(st.bytes).toBe(144 * MiB);
    expect(st.inMemory).toBeLessThanOrEqual(64 * MiB);
    expect(st.inMemory + st.spilled!).toBe(96 * MiB);
    // each write kept with probability 1/2: a block shows the last of its kept writes, whole
    const seen = new Set<string>();
    for (const seed of [1, 2]) {
      await h.crash({ keepProb: 0.5, seed });
      const b = fs.readFileSync(`${mnt}/big`);
      for (let i = 0; i < N; i++) {
        const block = b.subarray(i * BLK, (i + 1) * BLK);
        const first = block.length ? block[0] : 0;
        expect(block.length === 0 || block.every((x) => x === first), `block ${i}`).toBe(true);
        // B's first 128 blocks (16 MiB) were kept in memory, the rest spilled
        seen.add(`${i < 128 ? 'mem' : 'spill'}:${first === 0 ? '.' : String.fromCharCode(first)}`);
      }
      writeAll();
    }
    // older writes came back from memory and from the spill file
    for (const k of ['mem:A', 'mem:B', 'spill:B', 'mem:C', 'spill:C']) expect(seen, k).toContain(k);
    await h.crash();
  });

  test('more files with unsynced writes than the harness follows open (256): their data still reaches a sync or a crash that keeps it', async () => {
    const { h, mnt } = await setup('many', 'posix');
    const writeFiles = (tag: string): void => {
      py(`
import os
m=${JSON.stringify(mnt)}
os.makedirs(m+'/many', exist_ok=True)
for i in range(400):
    with open(m+'/many/f%d' % i, 'w') as f: f.write('${tag}%d' % i)
fd=os.open(m+'/many', os.O_RDONLY); os.fsync(fd); os.close(fd)
fd=os.open(m, os.O_RDONLY); os.fsync(fd); os.close(fd)
`);
    };
    const contents = (): string[] => Array.from({ length: 400 }, (_, i) => read(`${mnt}/many/f${i}`) ?? '-');
    writeFiles('a');
    await h.crash({ keepProb: 1 });                      // names durable (dir fsyncs), data kept by the crash
    expect(contents()).toEqual(Array.from({ length: 400 }, (_, i) => `a${i}`));
    writeFiles('b');
    await h.crash();                                     // the data dropped: the old data stays (never torn)
    expect(contents()).toEqual(Array.from({ length: 400 }, (_, i) => `a${i}`));
    writeFiles('c');
    await h.sync();
    expect((await h.status()).errors).toEqual([]);
    await h.crash();
    expect(contents()).toEqual(Array.from({ length: 400 }, (_, i) => `c${i}`));
    expect((await h.status()).errors).toEqual([]);
  });

  test('random sequences: a crash after sync shows the view as it was; one with nothing synced since (POSIX-strict) shows the view before the sequence', async () => {
    const SPACE: OpSpace = {
      known: ['etc/a', 'etc/b', 'etc/sub/x', 'usr/lib/lib.so', 'var/y', 'var/x', 'usr/conf'],
      dirs: ['', 'etc', 'etc/sub', 'usr', 'usr/lib', 'var'],
      names: ['a', 'b', 'c', 'conf', 'sub', 'x', 'y'],
      rmrf: ['etc/sub', 'usr/lib', 'var'],
    };
    for (const model of ['posix', 'ext4'] as Model[]) {
      const { h, mnt } = await setup(`random-${model}`, model, (base) => {
        for (const k of SPACE.known) {
          fs.mkdirSync(path.join(base, path.dirname(k)), { recursive: true });
          fs.writeFileSync(path.join(base, k), `fixture ${k}\n`);
        }
        fs.linkSync(path.join(base, 'var/x'), path.join(base, 'usr/x'));   // a lower hard link
      });
      // the fixture's hard link may show another link count after a crash: its copy-up and the
      // removal of its other name can reach the durable view in another order (README)
      const linkIno = fs.statSync(path.join(mnt, 'var/x')).ino;
      const shown = (root: string): ReturnType<typeof shownView> => {
        const v = shownView(root);
        for (const [k, r] of Object.entries(v)) if (r.type === 'f' && fs.lstatSync(path.join(root, k)).ino === linkIno) delete r.nlink;
        return v;
      };
      let done = 0;
      // HARNESS_SEEDS=N runs more seeds by hand
      for (let seed = 1; seed <= Number(process.env.HARNESS_SEEDS ?? 4); seed++) {
        await h.reset();
        const start = shown(mnt);
        run(mnt, randomOps(seed * 100, 40, SPACE));
        await h.sync();
        const synced = shown(mnt);
        await h.crash();
        expect(shown(mnt), `${model} seed ${seed}: after sync`).toEqual(synced);
        // nothing synced: back to the last durable view, whatever the sequence did (under ext4,
        // closing a file truncated to 0 syncs its data: the sequence's writes do that)
        const got = run(mnt, randomOps(seed * 100 + 1, 40, SPACE));
        done += got.filter((x) => x === 'ok').length;
        await h.crash();
        if (model === 'posix') expect(shown(mnt), `${model} seed ${seed}: nothing synced`).toEqual(synced);
        expect(start).not.toEqual(synced);
        expect((await h.status()).errors).toEqual([]);
      }
      expect(done).toBeGreaterThan(60);
    }
  });

  test('as a user with access to /dev/fuse (rootless): mount, crash, recover, crash rule, umount', () => {
    const uid = ensureUser();
    const root = path.join(dir, 'rootless');
    fs.chmodSync(dir, 0o711);   // (mkdtemp's 0700: the user must reach its dir)
    fs.mkdirSync(path.join(root, 'base/d'), { recursive: true });
    fs.writeFileSync(path.join(root, 'base/d/cfg'), 'old');
    fs.mkdirSync(path.join(root, 'mnt'));
    spawnSync('chown', ['-R', `${uid}:${uid}`, root]);   // the user's fixture and dirs (runAs: gid = uid)
    const as = (argv: string[]): ReturnType<typeof runAs> =>
      runAs(uid, ['env', '-i', `PATH=${process.env.PATH}`, `HOME=${root}`, ...argv]);
    const lfs = (...args: string[]): string => {
      const r = as([process.execPath, CLI, ...args]);
      expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(0);
      return r.stdout;
    };
    const mnt = path.join(root, 'mnt');
    expect(spawnSync('setfacl', ['-m', `u:${uid}:rw`, '/dev/fuse']).status).toBe(0);
    try {
      lfs('harness', path.join(root, 'base'), mnt, '-o', `state=${root}/state,model=ext4`);
      const w = as(['python3', '-c', `
import os
m=${JSON.stringify(mnt)}
with open(m+'/d/cfg.new','w') as f: f.write('new')
os.rename(m+'/d/cfg.new', m+'/d/cfg')
open(m+'/lost','w').write('x')
fd=os.open(m, os.O_RDONLY); os.fsync(fd); os.close(fd)
`]);
      expect(w.status, w.stderr).toBe(0);
      lfs('harness', 'ctl', mnt, 'crash');
      // (root may not look into a user's FUSE mount: no allow_other)
      const look = (code: string): string => as(['python3', '-c', `import os\nm=${JSON.stringify(mnt)}\n${code}`]).stdout.trim();
      expect(look("print(open(m+'/d/cfg').read(), repr(open(m+'/lost').read()), os.stat(m+'/lost').st_uid)")).toBe(`new '' ${uid}`);
      lfs('harness', 'ctl', mnt, 'inject', 'fsync', '/**', 'crash=before');
      const f = as(['python3', '-c', `
import os
f=open(${JSON.stringify(mnt)}+'/z','w'); f.write('z'); f.flush()
try: os.fsync(f.fileno())
except OSError as e: print(e.errno)
`]);
      expect(f.stdout.trim()).toBe('5');
      expect(JSON.parse(lfs('harness', 'ctl', mnt, 'status')).crashed).toBe(true);
      lfs('harness', 'ctl', mnt, 'recover');
      expect(look("print(sorted(os.listdir(m)))")).toBe("['d', 'lost']");
      lfs('harness', 'ctl', mnt, 'umount');
      expect(isMounted(mnt)).toBe(false);
    } finally {
      as(['fusermount3', '-u', '-z', mnt]);
      spawnSync('setfacl', ['-x', `u:${uid}`, '/dev/fuse']);
      spawnSync('pkill', ['-KILL', '-u', String(uid), '-f', 'layerfs.js service']);
    }
  });

  describe('SQLite under random crashes (seeded)', () => {
    const counts: Record<string, TrialCounts> = {};
    const run = async (c: SqliteConfig, model: Model, n: number): Promise<TrialCounts> => {
      const tag = `sqlite-${c.journal}-${c.sync}-${model}`;
      const base = path.join(dir, tag, 'base'), mnt = path.join(dir, tag, 'mnt');
      makeDb(path.join(base, 'db'), c);
      fs.mkdirSync(mnt, { recursive: true });
      const h = await Harness.mount(base, mnt, { state: path.join(dir, tag, 'state'), model });
      try {
        const r = await trials(h, mnt, c, n, Number(process.env.SQLITE_SEED ?? 1234));   // (other seeds by hand)
        counts[tag] = r;
        return r;
      } finally {
        await h.unmount();
      }
    };
    afterAll(() => {
      // the counts the closing note reports
      process.stdout.write(`sqlite trials: ${JSON.stringify(Object.fromEntries(Object.entries(counts).map(([k, v]) => [k, { ...v, failures: v.failures.length }])))}\n`);
    });

    for (const model of ['posix', 'ext4'] as Model[]) {
      for (const c of [{ journal: 'truncate', sync: 'full' }, { journal: 'wal', sync: 'full' }, { journal: 'delete', sync: 'extra' }] as SqliteConfig[]) {
        test(`${c.journal} journal, synchronous=${c.sync}, ${model}: 100 crashes, every acknowledged commit survives, integrity ok`, async () => {
          const n = Number(process.env.SQLITE_TRIALS ?? 100);   // (more by hand)
          const r = await run(c, model, n);
          expect(r.trials).toBe(n);
          expect(r.crashedMidRun).toBeGreaterThan(n * 0.9);
          expect(r.failures).toEqual([]);
          expect(r.acked).toBeGreaterThan(200);
        }, 300_000);
      }
    }

    test('synchronous=OFF: the harness loses acknowledged commits', async () => {
      const r = await run({ journal: 'truncate', sync: 'off' }, 'posix', 40);
      expect(r.lost + r.corrupt).toBeGreaterThan(10);
    }, 300_000);

    test('DELETE journal with synchronous=FULL: the last commit can roll back (SQLite documents EXTRA for this)', async () => {
      const r = await run({ journal: 'delete', sync: 'full' }, 'posix', 40);
      expect(r.corrupt).toBe(0);
      expect(r.lost).toBeGreaterThan(0);
    }, 300_000);
  });
});
