// The binding through the passthrough filesystem, on a real mount driven from this process
// (the daemon is another process). Everything must look as on the mirrored directory itself.
import { spawn, spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  daemonPid, fdCount, isMounted, layerfs, mountOk, requireFuse, rssKiB, tempDir, unmountAll, waitFor,
} from './helpers/mount';
import { dinoMismatches, runScenario } from './helpers/posix-scenario';

const asRoot = process.geteuid?.() === 0;

describe('passthrough parity with the mirrored directory', () => {
  let base: string, ref: string, dir: string, mnt: string;

  beforeAll(() => {
    requireFuse();
    base = tempDir('parity');
    ref = path.join(base, 'ref');
    dir = path.join(base, 'dir');
    mnt = path.join(base, 'mnt');
    for (const d of [ref, dir, mnt]) fs.mkdirSync(d);
    mountOk(['--passthrough', dir, mnt]);
  });
  afterAll(() => unmountAll(base));

  test('same results, errors and stat fields step by step', async () => {
    const expected = await runScenario(ref, asRoot);
    const got = await runScenario(mnt, asRoot);
    expect(got.length).toBe(expected.length);
    for (let i = 0; i < expected.length; i++) expect(got[i], `step ${expected[i][0]}`).toEqual(expected[i]);
  });

  test('st_ino, nlink and times equal the backing files; d_ino == st_ino', () => {
    for (const name of fs.readdirSync(dir)) {
      const a = fs.lstatSync(path.join(dir, name), { bigint: true });
      const b = fs.lstatSync(path.join(mnt, name), { bigint: true });
      expect(b.ino, name).toBe(a.ino);
      expect(b.nlink, name).toBe(a.nlink);
      expect(b.mode, name).toBe(a.mode);
      expect(b.mtimeNs, name).toBe(a.mtimeNs);
      expect(b.size, name).toBe(a.size);
    }
    expect(dinoMismatches(mnt)).toEqual([]);
  });

  test('hard links share st_ino and count links through the mount', () => {
    fs.writeFileSync(path.join(mnt, 'hl1'), 'x');
    fs.linkSync(path.join(mnt, 'hl1'), path.join(mnt, 'hl2'));
    fs.linkSync(path.join(mnt, 'hl1'), path.join(mnt, 'hl3'));
    const s = ['hl1', 'hl2', 'hl3'].map((n) => fs.statSync(path.join(mnt, n)));
    expect(new Set(s.map((x) => x.ino)).size).toBe(1);
    expect(s[0].nlink).toBe(3);
    expect(s[0].ino).toBe(fs.statSync(path.join(dir, 'hl1')).ino);
    fs.appendFileSync(path.join(mnt, 'hl2'), 'y');
    expect(fs.readFileSync(path.join(mnt, 'hl3'), 'utf8')).toBe('xy');
    // the daemon knew the inode by the name hl1 first: the others must keep working without it
    fs.unlinkSync(path.join(mnt, 'hl1'));
    fs.chmodSync(path.join(mnt, 'hl2'), 0o600);
    expect(fs.statSync(path.join(mnt, 'hl3')).mode & 0o777).toBe(0o600);
    expect(fs.statSync(path.join(mnt, 'hl3')).nlink).toBe(2);
  });

  test('a tree with more entries than the daemon may hold fds', () => {
    const limit = Number(/Max open files\s+(\d+)/.exec(fs.readFileSync(`/proc/${daemonPid(mnt)}/limits`, 'utf8'))![1]);
    const n = limit + 2000;
    const big = path.join(dir, 'many');
    fs.mkdirSync(big);
    for (let i = 0; i < n; i++) fs.mkdirSync(path.join(big, `d${i}`));
    const r = spawnSync('find', [path.join(mnt, 'many')], { encoding: 'utf8', maxBuffer: 1 << 26 });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim().split('\n').length).toBe(n + 1);
    for (let i = 0; i < n; i += 997) expect(fs.statSync(path.join(mnt, 'many', `d${i}`)).isDirectory()).toBe(true);
    expect(fdCount(daemonPid(mnt))).toBeLessThan(limit / 2);
  });

  test('a symlink inside the tree is shown, never followed by the daemon', () => {
    fs.symlinkSync('/etc', path.join(dir, 'etc'));
    fs.mkdirSync(path.join(dir, 'sub'));
    fs.symlinkSync('../../../../../../..', path.join(dir, 'sub', 'up'));
    expect(fs.readlinkSync(path.join(mnt, 'etc'))).toBe('/etc');
    expect(fs.lstatSync(path.join(mnt, 'sub', 'up')).isSymbolicLink()).toBe(true);
    // chmod through the mount on a symlink must not reach the target
    const hostMode = fs.statSync('/etc/hostname').mode;
    fs.lchownSync(path.join(mnt, 'etc'), 0, 0);
    expect(fs.statSync('/etc/hostname').mode).toBe(hostMode);
  });

  test('open handles of an unlinked file keep working', () => {
    const p = path.join(mnt, 'gone');
    fs.writeFileSync(p, 'still here');
    const fd = fs.openSync(p, 'r+');
    fs.unlinkSync(p);
    expect(fs.existsSync(p)).toBe(false);
    const b = Buffer.alloc(10);
    fs.readSync(fd, b, 0, 10, 0);
    expect(b.toString()).toBe('still here');
    fs.writeSync(fd, 'S', 0);
    fs.closeSync(fd);
  });
});

describe('passthrough under load', () => {
  let base: string, dir: string, mnt: string;

  beforeAll(() => {
    requireFuse();
    base = tempDir('load');
    dir = path.join(base, 'dir');
    mnt = path.join(base, 'mnt');
    fs.mkdirSync(dir);
    fs.mkdirSync(mnt);
    mountOk(['--passthrough', dir, mnt]);
  });
  afterAll(() => unmountAll(base));

  test('16 concurrent writers and readers, data verified by checksum', async () => {
    // Each worker process writes its own 8 MiB file in random-size chunks, then reads every
    // other worker's file back and prints the sha256 of each.
    const script = `
      const fs = require('fs'), crypto = require('crypto'), path = require('path');
      const [dir, id, n] = process.argv.slice(1);
      const rnd = crypto.createHash('sha256').update('seed' + id);
      let seed = rnd.digest();
      const fd = fs.openSync(path.join(dir, 'w' + id), 'w');
      let off = 0;
      while (off < (8 << 20)) {
        seed = crypto.createHash('sha256').update(seed).digest();
        const len = Math.min((8 << 20) - off, 1 + (seed.readUInt32LE(0) % 300000));
        const buf = Buffer.alloc(len, seed[4]);
        fs.writeSync(fd, buf, 0, len, off);
        off += len;
      }
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      const out = {};
      for (let i = 0; i < Number(n); i++) {
        const f = path.join(dir, 'w' + i);
        while (!fs.existsSync(f) || fs.statSync(f).size < (8 << 20)) require('child_process').execSync('sleep 0.02');
        out[i] = crypto.createHash('sha256').update(fs.readFileSync(f)).digest('hex');
      }
      process.stdout.write(JSON.stringify(out));`;
    const N = 16;
    const runs = await Promise.all(Array.from({ length: N }, (_, i) => new Promise<Record<string, string>>((resolve, reject) => {
      const c = spawn(process.execPath, ['-e', script, mnt, String(i), String(N)], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      c.stdout.on('data', (d) => (out += d));
      c.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`worker ${i} exit ${code}`))));
    })));
    const truth: Record<string, string> = {};
    for (let i = 0; i < N; i++) {
      truth[i] = crypto.createHash('sha256').update(fs.readFileSync(path.join(dir, `w${i}`))).digest('hex');
    }
    for (const r of runs) expect(r).toEqual(truth);
  });

  test('open/close of 100,000 files leaves fd count and RSS at baseline', () => {
    const files = 1000;
    for (let i = 0; i < files; i++) fs.writeFileSync(path.join(dir, `o${i}`), String(i));
    const pid = daemonPid(mnt);
    const touch = (): void => {
      for (let i = 0; i < files; i++) fs.closeSync(fs.openSync(path.join(mnt, `o${i}`), 'r'));
    };
    touch();  // lookups done: the kernel now holds one node per file
    const fd0 = fdCount(pid), rss0 = rssKiB(pid);
    for (let round = 0; round < 100; round++) {
      for (let i = 0; i < files; i++) {
        const fd = fs.openSync(path.join(mnt, `o${i}`), round % 2 ? 'r' : 'r+');
        fs.closeSync(fd);
      }
    }
    expect(waitFor(() => fdCount(pid) <= fd0, 5000)).toBe(true);
    expect(rssKiB(pid) - rss0).toBeLessThan(32 * 1024);
  });
});

describe('mount lifecycle', () => {
  let base: string, dir: string, mnt: string;

  beforeAll(() => {
    requireFuse();
    base = tempDir('life');
    dir = path.join(base, 'dir');
    mnt = path.join(base, 'mnt');
    fs.mkdirSync(dir);
    fs.mkdirSync(mnt);
    fs.writeFileSync(path.join(dir, 'x'), 'x');
  });
  afterAll(() => unmountAll(base));

  test('the mount command returns only once the mount answers, and umount ends the daemon', () => {
    mountOk(['--passthrough', dir, mnt]);
    expect(isMounted(mnt)).toBe(true);
    expect(fs.readFileSync(path.join(mnt, 'x'), 'utf8')).toBe('x');
    const pid = daemonPid(mnt);
    const r = layerfs(['umount', mnt]);
    expect(r.status, r.stderr).toBe(0);
    expect(isMounted(mnt)).toBe(false);
    expect(waitFor(() => !fs.existsSync(`/proc/${pid}`))).toBe(true);
  });

  test('SIGTERM to the daemon unmounts cleanly', () => {
    mountOk(['--passthrough', dir, mnt]);
    const pid = daemonPid(mnt);
    process.kill(pid, 'SIGTERM');
    expect(waitFor(() => !isMounted(mnt) && !fs.existsSync(`/proc/${pid}`))).toBe(true);
  });

  test('a daemon killed with SIGKILL leaves a mount that layerfs umount clears', () => {
    mountOk(['--passthrough', dir, mnt]);
    const pid = daemonPid(mnt);
    process.kill(pid, 'SIGKILL');
    expect(waitFor(() => !fs.existsSync(`/proc/${pid}`))).toBe(true);
    expect(() => fs.statSync(mnt)).toThrow(/ENOTCONN/);
    const r = layerfs(['umount', mnt]);
    expect(r.status, r.stderr).toBe(0);
    expect(isMounted(mnt)).toBe(false);
    expect(fs.statSync(mnt).isDirectory()).toBe(true);
  });

  test('a caller holding the stdout/stderr pipes is not kept waiting by the daemon', async () => {
    const t0 = Date.now();
    const closed = await new Promise<number>((resolve) => {
      const c = spawn(process.execPath, [path.resolve(__dirname, '../dist/src/cli/layerfs.js'), 'mount', '--passthrough', dir, mnt],
        { stdio: ['ignore', 'pipe', 'pipe'] });
      c.on('close', (code) => resolve(code ?? -1));
    });
    expect(closed).toBe(0);
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(isMounted(mnt)).toBe(true);
    expect(layerfs(['umount', mnt]).status).toBe(0);
  });

  test('-f serves in the foreground until SIGINT', async () => {
    const c = spawn(process.execPath, [path.resolve(__dirname, '../dist/src/cli/layerfs.js'), 'mount', '-f', '--passthrough', dir, mnt],
      { stdio: ['ignore', 'ignore', 'pipe'] });
    try {
      expect(waitFor(() => isMounted(mnt), 10_000)).toBe(true);
      expect(fs.readFileSync(path.join(mnt, 'x'), 'utf8')).toBe('x');
      const exited = new Promise<number>((r) => c.on('exit', (code) => r(code ?? -1)));
      c.kill('SIGINT');
      expect(await exited).toBe(0);
      expect(isMounted(mnt)).toBe(false);
    } finally {
      c.kill('SIGKILL');
    }
  });
});

describe('bad input: one clear line, non-zero exit, nothing mounted', () => {
  let base: string, dir: string, mnt: string, file: string;

  beforeAll(() => {
    requireFuse();
    base = tempDir('bad');
    dir = path.join(base, 'dir');
    mnt = path.join(base, 'mnt');
    file = path.join(base, 'file');
    fs.mkdirSync(dir);
    fs.mkdirSync(mnt);
    fs.writeFileSync(file, '');
  });
  afterAll(() => unmountAll(base));

  const expectOneLineError = (args: string[], re: RegExp): void => {
    const r = layerfs(['mount', ...args]);
    expect(r.status).not.toBe(0);
    const lines = r.stderr.trim().split('\n');
    expect(lines.length, r.stderr).toBe(1);
    expect(lines[0]).toMatch(re);
    expect(isMounted(mnt)).toBe(false);
  };

  test('missing directory', () => expectOneLineError(['--passthrough', path.join(base, 'nope'), mnt], /does not exist/));
  test('directory that is a file', () => expectOneLineError(['--passthrough', file, mnt], /not a directory/));
  test('missing mountpoint', () => expectOneLineError(['--passthrough', dir, path.join(base, 'nomnt')], /does not exist/));
  test('mountpoint that is a file', () => expectOneLineError(['--passthrough', dir, file], /not a directory/));
  test('bad option value', () => expectOneLineError(['--passthrough', '-o', 'writeback=maybe', dir, mnt], /bad value for option writeback/));
  test('mountpoint inside the mirrored directory', () => {
    fs.mkdirSync(path.join(dir, 'inner'), { recursive: true });
    expectOneLineError(['--passthrough', dir, path.join(dir, 'inner')], /inside/);
  });
  test('mountpoint busy', () => {
    mountOk(['--passthrough', dir, mnt]);
    const r = layerfs(['mount', '--passthrough', dir, mnt]);
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/busy/);
    expect(layerfs(['umount', mnt]).status).toBe(0);
  });
  test('no /dev/fuse', () => {
    // a private mount namespace where /dev is an empty tmpfs
    const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c',
      `mount -t tmpfs none /dev && exec "${process.execPath}" "${path.resolve(__dirname, '../dist/src/cli/layerfs.js')}" mount --passthrough "${dir}" "${mnt}"`],
    { encoding: 'utf8' });
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/\/dev\/fuse/);
  });
  test('umount of something not mounted', () => {
    const r = layerfs(['umount', mnt]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/not mounted/);
  });
});
