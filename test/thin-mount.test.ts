// Thin volumes through a real mount: losetup + mkfs.ext4 + mount, snapshots of a mounted and
// written origin, e2fsck, fstrim giving space back to the host, online resize under load,
// out-of-space in both modes, CLI errors, crash consistency, and Debian's thin-provisioning-tools.
import { spawn, spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CLI, daemonPid, isMounted, layerfs, requireFuse, tempDir, unmountAll, waitFor } from './helpers/mount';

function sh(cmd: string): string {
  const r = spawnSync('bash', ['-c', cmd], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr}`);
  return r.stdout;
}

function ok(args: string[]): string {
  const r = layerfs(args);
  if (r.status !== 0) throw new Error(`layerfs ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** A new pool with volume 0, mounted at mnt (made here). */
function mountedPool(pool: string, mnt: string, createArgs: string[]): void {
  fs.mkdirSync(mnt);
  ok(['thin', 'create', pool, ...createArgs]);
  ok(['thin', 'message', pool, 'create_thin 0']);
  ok(['thin', 'mount', pool, mnt]);
}

function losetup(file: string): string {
  return sh(`losetup -f --show ${file}`).trim();
}

function allocated(file: string): number {
  return fs.statSync(file).blocks * 512;
}

function statusJson(pool: string): { data: { used: number; total: number }; line: string } {
  return JSON.parse(ok(['thin', 'status', pool, '--json']));
}

describe('thin volumes through a mount', () => {
  let base: string, pool: string, mnt: string;

  beforeAll(() => {
    requireFuse();
    base = tempDir('thin');
    pool = path.join(base, 'pool');
    mnt = path.join(base, 'vols');
    mountedPool(pool, mnt, ['--data-size', '2G']);
  });
  afterAll(() => unmountAll(base));

  test('losetup + mkfs.ext4 + mount; snapshot of the mounted origin; e2fsck clean on both', () => {
    fs.truncateSync(path.join(mnt, '0'), 1 << 30);
    expect(fs.statSync(path.join(mnt, '0')).size).toBe(1 << 30);
    const loop0 = losetup(path.join(mnt, '0'));
    const fs0 = path.join(base, 'fs0'), fs1 = path.join(base, 'fs1');
    fs.mkdirSync(fs0);
    fs.mkdirSync(fs1);
    try {
      sh(`mkfs.ext4 -q ${loop0} && mount ${loop0} ${fs0}`);
      fs.writeFileSync(path.join(fs0, 'a.txt'), 'version 1');
      fs.writeFileSync(path.join(fs0, 'big'), crypto.randomBytes(8 << 20));
      const bigSha = crypto.createHash('sha256').update(fs.readFileSync(path.join(fs0, 'big'))).digest('hex');
      sh('sync');
      sh(`fsfreeze -f ${fs0}`);   // a consistent filesystem for the snapshot
      try {
        ok(['thin', 'message', pool, 'create_snap 1 0']);
      } finally {
        sh(`fsfreeze -u ${fs0}`);
      }
      expect(fs.readdirSync(mnt).sort()).toEqual(['0', '1']);
      fs.writeFileSync(path.join(fs0, 'a.txt'), 'version 2');
      fs.unlinkSync(path.join(fs0, 'big'));
      sh('sync');
      const loop1 = losetup(path.join(mnt, '1'));
      try {
        sh(`mount ${loop1} ${fs1}`);
        expect(fs.readFileSync(path.join(fs1, 'a.txt'), 'utf8')).toBe('version 1');
        expect(crypto.createHash('sha256').update(fs.readFileSync(path.join(fs1, 'big'))).digest('hex')).toBe(bigSha);
        expect(fs.readFileSync(path.join(fs0, 'a.txt'), 'utf8')).toBe('version 2');
        sh(`umount ${fs1}`);
        sh(`e2fsck -fn ${loop1}`);
      } finally {
        spawnSync('umount', [fs1]);
        spawnSync('losetup', ['-d', loop1]);
      }
      sh(`umount ${fs0}`);
      sh(`e2fsck -fn ${loop0}`);
      sh(`mount ${loop0} ${fs0}`);
      // fstrim: blocks no volume uses go back to the host; the snapshot still holds its copy
      fs.writeFileSync(path.join(fs0, 'trimmed'), crypto.randomBytes(64 << 20));
      sh('sync');
      const before = allocated(path.join(pool, 'data'));
      const usedBefore = statusJson(pool).data.used;
      fs.unlinkSync(path.join(fs0, 'trimmed'));
      sh(`sync && fstrim ${fs0}`);
      ok(['thin', 'message', pool, 'set_transaction_id 0 0']);   // any message commits
      expect(statusJson(pool).data.used).toBeLessThan(usedBefore - 900);
      expect(allocated(path.join(pool, 'data'))).toBeLessThan(before - (56 << 20));
      expect(fs.readFileSync(path.join(mnt, '1')).length).toBe(1 << 30);   // snapshot readable
    } finally {
      spawnSync('umount', [fs0]);
      spawnSync('losetup', ['-d', loop0]);
    }
    expect(ok(['thin', 'check', pool]).trim()).toBe('ok');
  });

  test('delete of an open volume is EBUSY; CLI errors are one line and change nothing', () => {
    const dump = ok(['thin', 'dump', pool]);
    const fd = fs.openSync(path.join(mnt, '1'), 'r');
    try {
      const r = layerfs(['thin', 'message', pool, 'delete 1']);
      expect(r.status).not.toBe(0);
      expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/device 1 is open/)]);
    } finally {
      fs.closeSync(fd);
    }
    for (const [msg, re] of [['create_thin 0', /already exists/], ['create_snap 7 99', /does not exist/], ['delete 42', /does not exist/],
      ['set_transaction_id 5 6', /current id is 0/], ['create_thin 99999999', /24 bits/], ['bogus 1', /unknown message/]] as const) {
      const r = layerfs(['thin', 'message', pool, msg]);
      expect(r.status, msg).not.toBe(0);
      expect(r.stderr.trim().split('\n'), msg).toEqual([expect.stringMatching(re)]);
    }
    expect(ok(['thin', 'dump', pool])).toBe(dump);
    for (const args of [['thin', 'create', path.join(base, 'bad1'), '--data-size', '1G', '--block-size', '96k'],
      ['thin', 'create', pool, '--data-size', '1G'], ['thin', 'status', path.join(base, 'nopool')]]) {
      const r = layerfs(args);
      expect(r.status, args.join(' ')).not.toBe(0);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    }
    expect(fs.existsSync(path.join(base, 'bad1', 'data'))).toBe(false);
    // a pool has one owner: a second mount is refused
    const other = path.join(base, 'other-mnt');
    fs.mkdirSync(other);
    const r2 = layerfs(['thin', 'mount', pool, other]);
    expect(r2.status).not.toBe(0);
    expect(r2.stderr).toMatch(/already mounted/);
    expect(isMounted(other)).toBe(false);
    ok(['thin', 'message', pool, 'delete 1']);
    expect(fs.readdirSync(mnt)).toEqual(['0']);
  });

  test('online resize while a volume is written', async () => {
    ok(['thin', 'message', pool, 'create_thin 5']);
    fs.truncateSync(path.join(mnt, '5'), 512 << 20);
    const total = statusJson(pool).data.total;
    const writer = spawn('dd', ['if=/dev/urandom', `of=${path.join(mnt, '5')}`, 'bs=1M', 'count=256', 'conv=notrunc,fsync', 'status=none']);
    const done = new Promise<number>((r) => writer.on('exit', (c) => r(c ?? -1)));
    await new Promise((r) => setTimeout(r, 200));
    ok(['thin', 'resize', pool, '--data-size', '3G']);
    expect(await done).toBe(0);
    const s = statusJson(pool);
    expect(s.data.total).toBe(total * 1.5);
    expect(fs.statSync(path.join(pool, 'data')).size).toBe(3 * 2 ** 30);
    expect(ok(['thin', 'check', pool]).trim()).toBe('ok');
  });

  test("dump is thin_dump's XML: Debian's thin_restore, thin_check and thin_dump accept it", () => {
    const xml = path.join(base, 'pool.xml'), meta = path.join(base, 'meta.bin');
    fs.writeFileSync(xml, ok(['thin', 'dump', pool]));
    fs.writeFileSync(meta, '');
    fs.truncateSync(meta, 64 << 20);
    sh(`thin_restore -i ${xml} -o ${meta}`);
    sh(`thin_check ${meta}`);
    const back = sh(`thin_dump ${meta}`);
    const norm = (x: string): string[] => x.split('\n').map((l) => l.trim()).filter((l) => /mapping|<device/.test(l));
    expect(norm(back)).toEqual(norm(fs.readFileSync(xml, 'utf8')));
    // and restore reads it back into a pool with the same mappings
    const pool2 = path.join(base, 'pool2');
    ok(['thin', 'restore', xml, pool2]);
    expect(norm(ok(['thin', 'dump', pool2]))).toEqual(norm(fs.readFileSync(xml, 'utf8')));
    expect(ok(['thin', 'check', pool2]).trim()).toBe('ok');
  });
});

describe('thin metadata and events: metadata snapshot, metadata space, low water mark, auto-extend', () => {
  let base: string;
  beforeAll(() => {
    requireFuse();
    base = tempDir('thinmeta');
  });
  afterAll(() => unmountAll(base));

  test("dump --metadata-snap: the mappings as they were at reserve_metadata_snap, while the pool changes; thin_restore and thin_check accept it", () => {
    const pool = path.join(base, 'pool'), mnt = path.join(base, 'vols');
    mountedPool(pool, mnt, ['--data-size', '256M']);
    try {
      const vol = path.join(mnt, '0');
      fs.truncateSync(vol, 64 << 20);
      sh(`dd if=/dev/urandom of=${vol} bs=64K count=40 conv=notrunc,fsync status=none`);
      ok(['thin', 'message', pool, 'reserve_metadata_snap']);
      const atReserve = ok(['thin', 'dump', pool]);
      expect(layerfs(['thin', 'message', pool, 'reserve_metadata_snap']).stderr.trim()).toMatch(/already held/);
      // the pool moves on: new blocks, a snapshot, overwrites of shared blocks
      ok(['thin', 'message', pool, 'create_snap 1 0']);
      sh(`dd if=/dev/urandom of=${vol} bs=64K count=20 seek=100 conv=notrunc,fsync status=none`);
      sh(`dd if=/dev/urandom of=${vol} bs=64K count=5 conv=notrunc,fsync status=none`);
      const now = ok(['thin', 'dump', pool]);
      expect(now).not.toBe(atReserve);
      const snap = ok(['thin', 'dump', pool, '--metadata-snap']);
      expect(snap).toBe(atReserve);
      // Debian's thin-provisioning-tools take it as metadata
      const xml = path.join(base, 'snap.xml'), meta = path.join(base, 'snap.bin');
      fs.writeFileSync(xml, snap);
      fs.writeFileSync(meta, '');
      fs.truncateSync(meta, 64 << 20);
      sh(`thin_restore -i ${xml} -o ${meta}`);
      sh(`thin_check ${meta}`);
      expect(sh(`thin_dump ${meta}`)).toMatch(/<device dev_id="0" mapped_blocks="40"/);
      // status shows the held root; released, it is gone
      expect(statusJson(pool).line.split(' ')[3]).not.toBe('-');
      ok(['thin', 'message', pool, 'release_metadata_snap']);
      const gone = layerfs(['thin', 'dump', pool, '--metadata-snap']);
      expect(gone.status).toBe(1);
      expect(gone.stderr.trim().split('\n')).toHaveLength(1);
      expect(gone.stderr).toMatch(/holds no metadata snapshot/);
    } finally {
      expect(layerfs(['umount', mnt]).status).toBe(0);
    }
  });


  test('metadata full: the pool goes read-only with needs_check and one clear error; growing the metadata and check --repair bring it back, nothing written is lost', () => {
    const pool = path.join(base, 'mfull'), mnt = path.join(base, 'mfull-vols');
    mountedPool(pool, mnt, ['--data-size', '512M', '--metadata-size', '80K']);
    const vol = path.join(mnt, '0');
    fs.truncateSync(vol, 512 << 20);
    // 1 MiB at a time, each fsynced, until one fails: what succeeded must all be there at the end
    const fill = spawnSync('python3', ['-c', `
import os, hashlib
fd=os.open(${JSON.stringify(vol)}, os.O_RDWR)
h=hashlib.sha1(); n=0; err=None
for i in range(512):
    b=os.urandom(1<<20)
    try:
        os.pwrite(fd, b, i<<20); os.fsync(fd)
    except OSError as e:
        err=e.errno; break
    h.update(bytes(65536) + b[65536:] if i == 0 else b); n+=1   # (block 0 is zeroed below)
print(n, err, h.hexdigest())
`], { encoding: 'utf8', timeout: 120_000 });
    const [n, err, sum] = fill.stdout.trim().split(' ');
    expect(err, fill.stderr).toBe('5');                 // EIO, as dm-thin's read-only mode
    expect(Number(n)).toBeGreaterThan(50);
    const st = statusJson(pool);
    expect(st.line).toMatch(/ ro discard_passdown \w+ needs_check$/);
    const msg = layerfs(['thin', 'message', pool, 'create_thin 1']);
    expect(msg.status).toBe(1);
    expect(msg.stderr.trim().split('\n')).toEqual(['layerfs: the pool is read-only: its metadata space is exhausted (thin resize --metadata-size)']);
    expect(layerfs(['thin', 'check', pool]).stderr).toMatch(/metadata space is exhausted/);
    // a provisioned block is still written in place
    sh(`dd if=/dev/zero of=${vol} bs=64K count=1 conv=notrunc,fsync status=none`);
    ok(['thin', 'resize', pool, '--metadata-size', '16M']);
    expect(statusJson(pool).line).toMatch(/ rw discard_passdown \w+ needs_check$/);
    expect(layerfs(['thin', 'check', pool]).stderr).toMatch(/metadata space was exhausted/);
    expect(ok(['thin', 'check', pool, '--repair']).trim()).toBe('repaired: needs_check cleared');
    expect(ok(['thin', 'check', pool]).trim()).toBe('ok');
    expect(statusJson(pool).line).toMatch(/ rw discard_passdown \w+ -$/);
    sh(`dd if=/dev/urandom of=${vol} bs=1M count=4 seek=${Number(n) + 10} conv=notrunc,fsync status=none`);   // new blocks again
    expect(layerfs(['umount', mnt]).status).toBe(0);
    expect(ok(['thin', 'check', pool]).trim()).toBe('ok');
    // after a remount: every MiB that was acknowledged (the first block zeroed since)
    ok(['thin', 'mount', pool, mnt]);
    try {
      const back = spawnSync('python3', ['-c', `
import os, hashlib
fd=os.open(${JSON.stringify(vol)}, os.O_RDONLY)
h=hashlib.sha1()
for i in range(${n}):
    h.update(os.pread(fd, 1<<20, i<<20))
print(h.hexdigest())
`], { encoding: 'utf8' });
      expect(back.stdout.trim()).toBe(sum);
    } finally {
      expect(layerfs(['umount', mnt]).status).toBe(0);
    }
  });


  const statusFull = (pool: string): { data: { used: number; total: number; free: number }; eventCount: number; events: { n: number; msg: string }[] } =>
    JSON.parse(ok(['thin', 'status', pool, '--json']));

  /** ext4 on a volume of the pool mounted at mnt, through a loop device; fn with its mountpoint. */
  function withExt4(pool: string, mnt: string, fn: (fsdir: string) => void): void {
    ok(['thin', 'message', pool, 'create_thin 0']);
    ok(['thin', 'mount', pool, mnt]);
    const vol = path.join(mnt, '0'), fsdir = `${mnt}-fs`;
    fs.mkdirSync(fsdir);
    fs.truncateSync(vol, 512 << 20);
    const loop = losetup(vol);
    try {
      sh(`mkfs.ext4 -q -E nodiscard,lazy_itable_init=1,lazy_journal_init=1 ${loop}`);
      sh(`mount ${loop} ${fsdir}`);
      try {
        fn(fsdir);
      } finally {
        sh(`umount ${fsdir}`);
      }
      sh(`e2fsck -fn ${loop}`);
    } finally {
      sh(`losetup -d ${loop}`);
      expect(layerfs(['umount', mnt]).status).toBe(0);
    }
  }

  test('metadata full under ext4: fsync fails with EIO, not before; needs_check survives a SIGKILL (the pool comes back read-only); grow, repair, e2fsck: what was fsynced is there', () => {
    const pool = path.join(base, 'mfull-ext4'), mnt = path.join(base, 'mfull-ext4-vols'), fsDir = path.join(base, 'mfull-ext4-fs');
    mountedPool(pool, mnt, ['--data-size', '512M', '--metadata-size', '80K']);
    fs.mkdirSync(fsDir);
    const vol = path.join(mnt, '0');
    fs.truncateSync(vol, 512 << 20);
    let loop = losetup(vol);
    const synced: string[] = [];
    let failure = '';
    try {
      sh(`mkfs.ext4 -q -E nodiscard ${loop} && mount ${loop} ${fsDir}`);
      // files of 1 MiB, each fsynced (data and name), until one fails
      const fill = spawnSync('python3', ['-c', `
import os, sys
d=${JSON.stringify(fsDir)}
for i in range(400):
    p=os.path.join(d, 'f%03d' % i)
    try:
        fd=os.open(p, os.O_WRONLY|os.O_CREAT, 0o644); os.write(fd, bytes([i % 251]) * (1<<20)); os.fsync(fd); os.close(fd)
        dfd=os.open(d, os.O_RDONLY); os.fsync(dfd); os.close(dfd)
    except OSError as e:
        print('fail', i, e.errno); sys.exit(0)
    print('ok', i, flush=True)
`], { encoding: 'utf8', timeout: 120_000 });
      for (const line of fill.stdout.trim().split('\n')) {
        const [what, i, errno] = line.split(' ');
        if (what === 'ok') synced.push(`f${i.padStart(3, '0')}`);
        else failure = errno;
      }
      expect(failure, fill.stderr).toBe('5');   // EIO: the metadata could not take the mappings
      expect(synced.length).toBeGreaterThan(10);
      expect(statusJson(pool).line).toMatch(/ ro discard_passdown \w+ needs_check$/);
    } finally {
      spawnSync('umount', [fsDir]);
      spawnSync('losetup', ['-d', loop]);
    }
    // the daemon dies: the flag is in the metadata, not only in its memory
    const pid = daemonPid(mnt);
    process.kill(pid, 'SIGKILL');
    waitFor(() => !fs.existsSync(`/proc/${pid}`));
    expect(layerfs(['umount', mnt]).status).toBe(0);
    fs.rmSync(path.join(pool, 'control.sock'), { force: true });
    expect(layerfs(['thin', 'check', pool]).stderr).toMatch(/metadata space was exhausted/);
    ok(['thin', 'mount', pool, mnt]);
    try {
      expect(statusJson(pool).line).toMatch(/ ro discard_passdown \w+ needs_check$/);
      const msg = layerfs(['thin', 'message', pool, 'create_thin 1']);
      expect(msg.status).toBe(1);
      expect(msg.stderr).toMatch(/read-only: needs_check is set .*thin check --repair/);
    } finally {
      expect(layerfs(['umount', mnt]).status).toBe(0);
    }
    // offline: the repair refuses while the state does not fit; grow, then repair
    ok(['thin', 'resize', pool, '--metadata-size', '16M']);
    expect(layerfs(['thin', 'check', pool]).status).not.toBe(0);
    expect(ok(['thin', 'check', pool, '--repair'])).toMatch(/^repaired: /);
    expect(ok(['thin', 'check', pool]).trim()).toBe('ok');
    ok(['thin', 'mount', pool, mnt]);
    loop = losetup(vol);
    try {
      expect(statusJson(pool).line).toMatch(/ rw discard_passdown \w+ -$/);
      sh(`e2fsck -fy ${loop} >/dev/null 2>&1 || [ $? -le 2 ]`);   // the journal replayed, the last (failed) file's leftovers fixed
      sh(`e2fsck -fn ${loop}`);
      sh(`mount ${loop} ${fsDir}`);
      for (const f of synced) {
        const b = fs.readFileSync(path.join(fsDir, f));
        const i = Number(f.slice(1));
        expect(b.length, f).toBe(1 << 20);
        expect(b.every((x) => x === i % 251), f).toBe(true);
      }
      fs.writeFileSync(path.join(fsDir, 'after'), crypto.randomBytes(4 << 20));   // new blocks again
      sh(`sync -f ${fsDir}/after`);
    } finally {
      spawnSync('umount', [fsDir]);
      spawnSync('losetup', ['-d', loop]);
      expect(layerfs(['umount', mnt]).status).toBe(0);
    }
    expect(ok(['thin', 'check', pool]).trim()).toBe('ok');
  });

  test('check and dump show their progress on a terminal, never on a pipe', () => {
    const pool = path.join(base, 'prog'), mnt = path.join(base, 'prog-vols');
    mountedPool(pool, mnt, ['--data-size', '64M']);
    fs.truncateSync(path.join(mnt, '0'), 16 << 20);
    sh(`dd if=/dev/urandom of=${mnt}/0 bs=1M count=8 conv=notrunc,fsync status=none`);
    expect(layerfs(['umount', mnt]).status).toBe(0);
    // (the first second is quiet: LAYERFS_PROGRESS_AFTER_MS=0 shows it at once)
    const onTty = (args: string): string => spawnSync('script', ['-qec', `${process.execPath} ${CLI} thin ${args}`, '/dev/null'],
      { encoding: 'utf8', env: { ...process.env, LAYERFS_PROGRESS_AFTER_MS: '0' } }).stdout;
    expect(onTty(`check ${pool}`)).toMatch(new RegExp(`check ${pool}: \\d+% \\(\\d+/\\d+\\)[\\s\\S]*ok`));
    expect(onTty(`dump ${pool}`)).toMatch(new RegExp(`dump ${pool}: \\d+% \\(\\d+/128\\)`));
    const piped = spawnSync(process.execPath, [CLI, 'thin', 'check', pool], { encoding: 'utf8', env: { ...process.env, LAYERFS_PROGRESS_AFTER_MS: '0' } });
    expect(piped.stderr).toBe('');
    expect(piped.stdout).toBe('ok\n');
  });

  test('the low water mark: one event when free blocks drop to it (not before), shown by status', () => {
    const pool = path.join(base, 'lw'), mnt = path.join(base, 'lw-vols');
    fs.mkdirSync(mnt);
    // 128 MiB of 64 KiB blocks = 2048; the mark at 512 blocks (32 MiB) free
    ok(['thin', 'create', pool, '--data-size', '128M', '--low-water-mark', '512']);
    withExt4(pool, mnt, (fsdir) => {
      sh(`dd if=/dev/urandom of=${fsdir}/a bs=1M count=40 conv=fsync status=none`);
      const before = statusFull(pool);
      expect(before.data.free).toBeGreaterThan(512);
      expect(before.eventCount).toBe(0);
      sh(`dd if=/dev/urandom of=${fsdir}/b bs=1M count=60 conv=fsync status=none`);
      const after = statusFull(pool);
      expect(after.data.free).toBeLessThanOrEqual(512);
      expect(after.eventCount).toBe(1);
      expect(after.events[0].msg).toMatch(/^low water mark reached: \d+ free blocks \(mark 512\)$/);
      expect(ok(['thin', 'status', pool])).toMatch(/Events: 1\n  #1 .* low water mark reached/);
      // more writes below the mark: still one event
      sh(`dd if=/dev/urandom of=${fsdir}/c bs=1M count=5 conv=fsync status=none`);
      expect(statusFull(pool).eventCount).toBe(1);
    });
  });

  test('auto-extend THRESHOLD:STEP:CAP: the data file grows by STEP% past THRESHOLD% used, never past CAP; an event each time; the data reads back', () => {
    const pool = path.join(base, 'ae'), mnt = path.join(base, 'ae-vols');
    fs.mkdirSync(mnt);
    ok(['thin', 'create', pool, '--data-size', '32M', '--auto-extend', '70:50:96M']);
    withExt4(pool, mnt, (fsdir) => {
      const sizes: number[] = [];
      let sum = '';
      for (let i = 0; i < 6; i++) {
        sh(`dd if=/dev/urandom of=${fsdir}/f${i} bs=1M count=10 conv=fsync status=none`);
        sizes.push(statusFull(pool).data.total);
      }
      sum = sh(`cat ${fsdir}/f* | sha1sum`);
      // the daemon looks at usage once a second: the last step may come just after the writes
      expect(waitFor(() => statusFull(pool).data.total === 1536, 5000)).toBe(true);
      const st = statusFull(pool);
      // 32M -> 48M -> 72M -> 96M (the cap): 512, 768, 1152, 1536 blocks
      expect(new Set(sizes)).toEqual(new Set(sizes.filter((n) => [512, 768, 1152, 1536].includes(n))));
      expect(st.data.total).toBe(1536);
      expect(st.events.map((e) => e.msg)).toEqual(['auto-extended the data file to 50331648 bytes', 'auto-extended the data file to 75497472 bytes',
        'auto-extended the data file to 100663296 bytes']);
      expect(fs.statSync(path.join(pool, 'data')).size).toBe(96 << 20);
      sh('sync; echo 3 > /proc/sys/vm/drop_caches');
      expect(sh(`cat ${fsdir}/f* | sha1sum`)).toBe(sum);
    });
    expect(ok(['thin', 'check', pool]).trim()).toBe('ok');
  });
});

// the pool's data file on a loop-mounted filesystem with reflinks: the copy-on-write copy is
// copy_file_range inside the data file, which the kernel turns into a reflink there
for (const [name, mkfs] of [['xfs', 'mkfs.xfs -q -m reflink=1'], ['btrfs', 'mkfs.btrfs -q']] as const) {
  describe(`thin on ${name} with reflinks`, () => {
    let base: string, host: string;
    beforeAll(() => {
      requireFuse();
      base = tempDir(`thin${name}`);
      host = path.join(base, name);
      fs.mkdirSync(host);
      sh(`truncate -s 1G ${base}/${name}.img && ${mkfs} ${base}/${name}.img && mount -o loop ${base}/${name}.img ${host}`);
    });
    afterAll(() => {
      unmountAll(base);
      // the pool's daemon may still be closing its files on it: retry, then detach lazily
      if (!waitFor(() => spawnSync('umount', [host]).status === 0 || !isMounted(host), 5000)) spawnSync('umount', ['-l', host]);
    });

    test("copy-on-write of a shared block is a reflink: the 4 KiB written is the only new data; the snapshot's blocks never change", () => {
      const pool = path.join(host, 'pool'), mnt = path.join(base, 'vols');
      mountedPool(pool, mnt, ['--data-size', '512M']);
      try {
        const vol = path.join(mnt, '0');
        fs.truncateSync(vol, 64 << 20);
        sh(`dd if=/dev/urandom of=${vol} bs=1M count=64 conv=notrunc,fsync status=none`);
        ok(['thin', 'message', pool, 'create_snap 1 0']);
        const snapSum = sh(`sha1sum < ${mnt}/1`);
        // the data file's extents shared with another part of it (FIEMAP_EXTENT_SHARED), in bytes
        const shared = (): number => sh(`sync && xfs_io -r -c 'fiemap -v' ${pool}/data`).split('\n')
          .map((l) => /^\s*\d+: \S+\s+\S+\s+(\d+)\s+0x([0-9a-f]+)/.exec(l)).filter((m): m is RegExpExecArray => !!m && (parseInt(m[2], 16) & 0x2000) !== 0)
          .reduce((n, m) => n + Number(m[1]) * 512, 0);
        expect(shared()).toBe(0);
        const used = Number(sh(`df -B1 --output=used ${host} | tail -1`));
        // a first 4 KiB write into each of the first 256 blocks (64 KiB) of the origin
        sh(`python3 -c "
import os
fd=os.open('${vol}', os.O_RDWR)
for i in range(256): os.pwrite(fd, b'z'*4096, i*65536)
os.fsync(fd)"`);
        // each copy shares its other 60 KiB with the snapshot's block: both sides count
        expect(shared()).toBeGreaterThanOrEqual(2 * 256 * 60 * 1024);
        // and the host filesystem holds little more than the 1 MiB written (not 16 MiB of copies)
        expect(Number(sh(`df -B1 --output=used ${host} | tail -1`)) - used).toBeLessThan(8 << 20);
        expect(sh(`sha1sum < ${mnt}/1`)).toBe(snapSum);
        expect(sh(`head -c 4096 ${vol} | tr -d z | wc -c`).trim()).toBe('0');
      } finally {
        expect(layerfs(['umount', mnt]).status).toBe(0);
      }
      expect(ok(['thin', 'check', pool]).trim()).toBe('ok');
    });
  });
}

describe('thin first writes served in C: allocation and copy-on-write from held blocks', () => {
  let base: string;
  beforeAll(() => {
    requireFuse();
    base = tempDir('thinc');
  });
  afterAll(() => unmountAll(base));

  // 1,024 blocks of 64 KiB: the daemon holds 64 of them for the C write path at a time, so the
  // writes below drain the log, run out of held blocks and fall back to JS many times over
  test('writes into unmapped and shared blocks, a snapshot with nothing synced, remount: every byte where it belongs, space counted once', () => {
    const pool = path.join(base, 'pool'), mnt = path.join(base, 'mnt');
    const SIZE = 48 << 20, BS = 64 << 10;
    mountedPool(pool, mnt, ['--data-size', '64M']);
    const vol = (id: number): string => path.join(mnt, String(id));
    fs.truncateSync(vol(0), SIZE);
    let seed = 7;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const origin = Buffer.alloc(SIZE);
    const touchedA = new Set<number>(), touchedB = new Set<number>();
    const writeSome = (model: Buffer, touched: Set<number>, fill: number): void => {
      const fd = fs.openSync(vol(0), 'r+');
      try {
        const put = (off: number, len: number): void => {
          const data = crypto.randomBytes(len);
          data[0] = fill;
          fs.writeSync(fd, data, 0, len, off);
          data.copy(model, off);
          for (let b = Math.floor(off / BS); b * BS < off + len; b++) touched.add(b);
        };
        for (let k = 0; k < 300; k++) put(rnd(SIZE / 4096) * 4096, 4096);   // 4 KiB: a partial block
        for (let k = 0; k < 20; k++) put(rnd(SIZE / BS) * BS, BS);           // whole blocks: never copied
        put(rnd(SIZE / BS - 160) * BS + 512, 8 << 20);                       // more than is ever held
      } finally {
        fs.closeSync(fd);   // no fsync: the snapshot must see what was acknowledged all the same
      }
    };
    const sha = (b: Buffer): string => crypto.createHash('sha256').update(b).digest('hex');
    try {
      writeSome(origin, touchedA, 0xa);
      const snapModel = Buffer.from(origin);
      ok(['thin', 'message', pool, 'create_snap 1 0']);
      writeSome(origin, touchedB, 0xb);   // into blocks shared with the snapshot, and fresh ones
      const verify = (): void => {
        expect(sha(fs.readFileSync(vol(1)))).toBe(sha(snapModel));
        expect(sha(fs.readFileSync(vol(0)))).toBe(sha(origin));
        // a block the origin wrote after the snapshot is its own copy; the rest are shared
        expect(statusJson(pool).data.used).toBe(touchedA.size + touchedB.size);
      };
      verify();
      expect(ok(['thin', 'check', pool]).trim()).toBe('ok');
      expect(layerfs(['umount', mnt]).status).toBe(0);
      expect(ok(['thin', 'check', pool]).trim()).toBe('ok');
      ok(['thin', 'mount', pool, mnt]);
      verify();
    } finally {
      layerfs(['umount', mnt]);
    }
  });
});

describe('thin data path with worker threads', () => {
  let base: string;
  beforeAll(() => {
    requireFuse();
    base = tempDir('thinmt');
  });
  afterAll(() => unmountAll(base));

  // four processes write four volumes at once (the kernel serialises the writes into one file,
  // not into several), into unmapped blocks, then into blocks shared with snapshots: every
  // block they take comes from the same held blocks, and none may be taken twice
  test('concurrent writers on four volumes, into fresh and shared blocks: every sector where it was written', async () => {
    const pool = path.join(base, 'pool'), mnt = path.join(base, 'mnt');
    const SIZE = 16 << 20, VOLS = [0, 1, 2, 3];
    mountedPool(pool, mnt, ['--data-size', '256M']);
    for (const v of VOLS.slice(1)) ok(['thin', 'message', pool, `create_thin ${v}`]);
    for (const v of VOLS) fs.truncateSync(path.join(mnt, String(v)), SIZE);
    const writer = `
import os, sys
vol, k, rnd = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fd = os.open(vol, os.O_RDWR)
for i in range(${SIZE / 4096}):
    os.pwrite(fd, (b'%s:%d:%011d:' % (rnd.encode(), k, i)) * 256, i * 4096)   # 16 bytes * 256
`;
    const sector = (rnd: string, k: number, i: number): Buffer => Buffer.from(`${rnd}:${k}:${String(i).padStart(11, '0')}:`.repeat(256));
    const round = async (rnd: string): Promise<void> => {
      const runs = VOLS.map((k) => new Promise<number | null>((resolve) => {
        spawn('python3', ['-c', writer, path.join(mnt, String(k)), String(k), rnd], { stdio: 'inherit' }).on('exit', resolve);
      }));
      expect(await Promise.all(runs)).toEqual([0, 0, 0, 0]);
    };
    const expectAll = (vol: number, k: number, rnd: string): void => {
      const b = fs.readFileSync(path.join(mnt, String(vol)));
      let bad = 0;
      for (let i = 0; i < SIZE / 4096; i++) if (!b.subarray(i * 4096, (i + 1) * 4096).equals(sector(rnd, k, i))) bad++;
      expect(bad, `volume ${vol}: sectors not as written in round ${rnd}`).toBe(0);
    };
    try {
      await round('1');
      for (const k of VOLS) expectAll(k, k, '1');
      for (const k of VOLS) ok(['thin', 'message', pool, `create_snap ${10 + k} ${k}`]);
      await round('2');
      for (const k of VOLS) {
        expectAll(k, k, '2');
        expectAll(10 + k, k, '1');
      }
      expect(statusJson(pool).data.used).toBe((2 * VOLS.length * SIZE) / (64 << 10));
    } finally {
      expect(layerfs(['umount', mnt]).status).toBe(0);
    }
    expect(ok(['thin', 'check', pool]).trim()).toBe('ok');
  });
});

describe('thin out of space', () => {
  let base: string;
  beforeAll(() => {
    requireFuse();
    base = tempDir('thinfull');
  });
  afterAll(() => unmountAll(base));

  for (const mode of ['error', 'queue'] as const) {
    test(`${mode}_if_no_space: writes needing a block fail, the rest keeps working, the daemon answers`, () => {
      const pool = path.join(base, `p-${mode}`), mnt = path.join(base, `m-${mode}`);
      fs.mkdirSync(mnt);
      ok(['thin', 'create', pool, '--data-size', '1M', ...(mode === 'error' ? ['--error-if-no-space'] : [])]);
      ok(['thin', 'message', pool, 'create_thin 0']);
      ok(['thin', 'mount', pool, mnt, ...(mode === 'queue' ? ['-o', 'no_space_timeout=2'] : [])]);
      try {
        const vol = path.join(mnt, '0');
        fs.truncateSync(vol, 4 << 20);
        const fd = fs.openSync(vol, 'r+');
        try {
          fs.writeSync(fd, Buffer.alloc(1 << 20, 1), 0, 1 << 20, 0);     // fills the pool
          const t0 = Date.now();
          expect(() => fs.writeSync(fd, Buffer.alloc(4096, 2), 0, 4096, 2 << 20)).toThrow(/ENOSPC/);
          const waited = Date.now() - t0;
          if (mode === 'error') expect(waited).toBeLessThan(1000);
          else expect(waited).toBeGreaterThanOrEqual(1500);
          fs.writeSync(fd, Buffer.alloc(4096, 3), 0, 4096, 4096);        // provisioned: fine
          expect(statusJson(pool).line).toMatch(/out_of_data_space/);
          expect(statusJson(pool).line).toMatch(mode === 'error' ? /error_if_no_space/ : /queue_if_no_space/);
        } finally {
          fs.closeSync(fd);
        }
      } finally {
        expect(layerfs(['umount', mnt]).status).toBe(0);
      }
    });
  }
});

describe('thin crash consistency', () => {
  let base: string;
  beforeAll(() => {
    requireFuse();
    base = tempDir('thincrash');
  });
  afterAll(() => unmountAll(base));

  test('SIGKILL during writes, snapshots and deletes: check passes, fsynced data is intact', async () => {
    const pool = path.join(base, 'pool'), mnt = path.join(base, 'mnt');
    fs.mkdirSync(mnt);
    ok(['thin', 'create', pool, '--data-size', '1G']);
    ok(['thin', 'message', pool, 'create_thin 0']);
    for (const delay of [50, 150, 300, 600]) {
      ok(['thin', 'mount', pool, mnt]);
      fs.truncateSync(path.join(mnt, '0'), 256 << 20);
      // a writer that records each region after its fsync returned, and churns snapshots
      const log = path.join(base, `acked-${delay}`);
      const script = `
        const fs = require('fs'), cp = require('child_process');
        const [vol, log, pool, cli] = process.argv.slice(1);
        const fd = fs.openSync(vol, 'r+');
        for (let i = 0; ; i++) {
          const off = (i * 7919 % 4000) * 65536, fill = (i % 250) + 1;
          try { fs.writeSync(fd, Buffer.alloc(65536, fill), 0, 65536, off); fs.fsyncSync(fd); } catch { process.exit(0); }
          fs.appendFileSync(log, off + ' ' + fill + '\\n');
          if (i % 20 === 5) cp.spawnSync(process.execPath, [cli, 'thin', 'message', pool, 'create_snap ' + (100 + i) + ' 0']);
          if (i % 20 === 15) cp.spawnSync(process.execPath, [cli, 'thin', 'message', pool, 'delete ' + (100 + i - 10)]);
        }`;
      const w = spawn(process.execPath, ['-e', script, path.join(mnt, '0'), log, pool, path.resolve(__dirname, '../dist/src/cli/layerfs.js')], { stdio: 'ignore' });
      const wrote = new Promise((r) => w.on('exit', r));
      await new Promise((r) => setTimeout(r, delay));
      const pid = daemonPid(mnt);
      process.kill(pid, 'SIGKILL');
      waitFor(() => !fs.existsSync(`/proc/${pid}`));
      await wrote;
      expect(layerfs(['umount', mnt]).status).toBe(0);
      expect(isMounted(mnt)).toBe(false);
      fs.rmSync(path.join(pool, 'control.sock'), { force: true });
      const c = layerfs(['thin', 'check', pool]);
      expect(c.stdout.trim(), c.stderr).toBe('ok');
      // every acknowledged write reads back (the last one per offset wins)
      ok(['thin', 'mount', pool, mnt]);
      const last = new Map<number, number>();
      if (fs.existsSync(log)) {
        for (const line of fs.readFileSync(log, 'utf8').trim().split('\n').filter(Boolean)) {
          const [o, f] = line.split(' ').map(Number);
          last.set(o, f);
        }
      }
      const fd = fs.openSync(path.join(mnt, '0'), 'r');
      for (const [o, f] of last) {
        const b = Buffer.alloc(65536);
        fs.readSync(fd, b, 0, 65536, o);
        expect(b.equals(Buffer.alloc(65536, f)), `offset ${o} after kill at ${delay} ms`).toBe(true);
      }
      fs.closeSync(fd);
      expect(layerfs(['umount', mnt]).status).toBe(0);
    }
  });
});

describe('the owner of a pool', () => {
  let base: string, pool: string, mnt: string;
  beforeAll(() => {
    requireFuse();
    base = tempDir('thinowner');
    pool = path.join(base, 'pool');
    mnt = path.join(base, 'mnt');
    fs.mkdirSync(mnt);
    ok(['thin', 'create', pool, '--data-size', '256M']);
    ok(['thin', 'message', pool, 'create_thin 0']);
  });
  afterAll(() => unmountAll(base));

  test('check right after the daemon was killed: passes at once, without waiting or unmounting first', () => {
    ok(['thin', 'mount', pool, mnt]);
    fs.truncateSync(path.join(mnt, '0'), 64 << 20);
    const fd = fs.openSync(path.join(mnt, '0'), 'r+');
    fs.writeSync(fd, Buffer.alloc(1 << 20, 7), 0, 1 << 20, 0);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    const pid = daemonPid(mnt);
    process.kill(pid, 'SIGKILL');
    const c = layerfs(['thin', 'check', pool]);  // at once: the dying daemon's pid may still exist
    expect(c.stderr).toBe('');
    expect(c.stdout.trim()).toBe('ok');
    expect(c.status).toBe(0);
    expect(layerfs(['umount', mnt]).status).toBe(0);
  });

  test('a stale pid file naming a live process of another program is no owner', () => {
    const other = spawn('sleep', ['30']);
    try {
      fs.writeFileSync(path.join(pool, 'daemon.pid'), `${other.pid}\n${mnt}\n`);
      expect(ok(['thin', 'check', pool]).trim()).toBe('ok');
      ok(['thin', 'mount', pool, mnt]);  // and the pool mounts
      expect(layerfs(['umount', mnt]).status).toBe(0);
    } finally {
      other.kill();
    }
  });

  test('an owner that is alive but hung: one line saying what to do, exit 1, nothing touched', () => {
    ok(['thin', 'mount', pool, mnt]);
    const pid = daemonPid(mnt);
    const meta = fs.readdirSync(pool).map((n) => `${n} ${fs.statSync(path.join(pool, n)).mtimeMs}`);
    process.kill(pid, 'SIGSTOP');
    try {
      const c = layerfs(['thin', 'check', pool]);
      expect(c.status).toBe(1);
      const lines = c.stderr.trim().split('\n');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(new RegExp(`pid ${pid} \\(mounted on ${mnt}\\), which is alive but does not answer.*kill ${pid}.*layerfs umount ${mnt}`));
      expect(fs.readdirSync(pool).map((n) => `${n} ${fs.statSync(path.join(pool, n)).mtimeMs}`)).toEqual(meta);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    expect(layerfs(['umount', mnt]).status).toBe(0);
  });
});
