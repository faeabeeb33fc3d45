// The FUSE protocol as layerfs speaks it: passthrough in effect (no READ or WRITE reaches the
// daemon for cat, dd, mmap, a MAP_SHARED write, pwrite; FSYNC still does and reaches the
// backing file), the same I/O counted without it, older kernels (7.38), bad input, and a
// kill -9 during passthrough I/O, and FUSE over io_uring (requests counted as they come through
// the ring; uring=on refused in one line when the kernel does not offer it).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CLI, daemonPid, isMounted, layerfs, requireFuse, tempDir, unmountAll, waitFor } from './helpers/mount';
import { ensureUser, runAs } from './helpers/users';
import { URING_PARAM, withUringParam } from './helpers/uring';

const IO = `
import mmap, os, sys
d = sys.argv[1]
os.system(f"cat {d}/lower.bin > /dev/null; dd if={d}/lower.bin of=/dev/null bs=64k status=none")
with open(f"{d}/lower.bin", "rb") as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); assert m[100] == 0x41; m.close()
fd = os.open(f"{d}/new.bin", os.O_CREAT | os.O_RDWR, 0o644)
os.pwrite(fd, b"N" * 65536, 0)
os.ftruncate(fd, 131072)
m = mmap.mmap(fd, 131072, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE); m[70000:70004] = b"MMAP"; m.flush(); m.close()
os.fsync(fd); os.close(fd)
with open(f"{d}/lower.bin", "r+b") as f: f.write(b"COPIED")
print(open(f"{d}/new.bin", "rb").read()[70000:70004].decode())
`;

/** A foreground daemon whose stderr we read: its request counts come on SIGUSR2. */
class Foreground {
  private err = '';
  readonly child: ChildProcess;
  /** What the daemon printed so far (for failure messages). */
  get stderr(): string {
    return this.err;
  }
  constructor(args: string[], env: NodeJS.ProcessEnv = process.env) {
    this.child = spawn(process.execPath, [CLI, 'mount', '-f', ...args], { stdio: ['ignore', 'ignore', 'pipe'], env });
    this.child.stderr!.on('data', (d) => (this.err += d));
  }
  async counts(mnt: string): Promise<Record<string, number>> {
    const before = this.err.length;
    this.child.kill('SIGUSR2');
    const end = Date.now() + 5000;
    while (!this.err.slice(before).includes(`layerfs requests ${mnt}:`) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    const line = this.err.slice(before).split('\n').find((l) => l.startsWith(`layerfs requests ${mnt}:`)) ?? '';
    return Object.fromEntries(line.split(': ')[1]?.split(' ').map((kv) => { const [k, v] = kv.split('='); return [k, Number(v)]; }) ?? []);
  }
  async stop(mnt: string): Promise<void> {
    spawnSync('umount', [mnt]);
    await new Promise((r) => (this.child.exitCode !== null ? r(null) : this.child.on('exit', r)));
  }
}

describe('the FUSE transport', () => {
  let base: string;
  const layers = (tag: string): { lower: string; upper: string; work: string; mnt: string } => {
    const d = path.join(base, tag);
    const r = { lower: path.join(d, 'l'), upper: path.join(d, 'u'), work: path.join(d, 'w'), mnt: path.join(d, 'm') };
    for (const x of Object.values(r)) fs.mkdirSync(x, { recursive: true });
    fs.writeFileSync(path.join(r.lower, 'lower.bin'), Buffer.alloc(4 << 20, 'A'));
    return r;
  };
  const opts = (l: ReturnType<typeof layers>, extra = ''): string => `lowerdir=${l.lower},upperdir=${l.upper},workdir=${l.work}${extra}`;

  beforeAll(() => {
    requireFuse();
    base = tempDir('transport');
    fs.chmodSync(base, 0o755);
  });
  afterAll(() => unmountAll(base));

  async function ioCounts(tag: string, extra: string, env?: NodeJS.ProcessEnv): Promise<{ counts: Record<string, number>; out: string; l: ReturnType<typeof layers> }> {
    const l = layers(tag);
    const d = new Foreground(['-o', opts(l, extra), l.mnt], env);
    try {
      expect(waitFor(() => isMounted(l.mnt), 10_000), `daemon stderr: ${d.stderr}`).toBe(true);
      const r = spawnSync('python3', ['-c', IO, l.mnt], { encoding: 'utf8' });
      expect(r.stderr).toBe('');
      return { counts: await d.counts(l.mnt), out: r.stdout.trim(), l };
    } finally {
      await d.stop(l.mnt);
    }
  }

  test('passthrough: no READ or WRITE reaches the daemon; FSYNC does and reaches the backing file', async () => {
    const { counts, out, l } = await ioCounts('pt', ',passthrough=on');
    expect(out).toBe('MMAP');
    expect(counts.OPEN).toBeGreaterThan(0);
    expect(counts.READ).toBe(0);
    expect(counts.WRITE).toBe(0);
    expect(counts.FSYNC).toBeGreaterThan(0);
    const up = fs.readFileSync(path.join(l.upper, 'new.bin'));
    expect(up.subarray(0, 3).toString()).toBe('NNN');
    expect(up.subarray(70000, 70004).toString()).toBe('MMAP');
    expect(fs.readFileSync(path.join(l.upper, 'lower.bin')).subarray(0, 7).toString()).toBe('COPIEDA');
    expect(fs.readFileSync(path.join(l.lower, 'lower.bin')).subarray(0, 6).toString()).toBe('AAAAAA');
  });

  test('passthrough=off: the same I/O is served by the daemon (READ and WRITE counted)', async () => {
    const { counts, out } = await ioCounts('nopt', ',passthrough=off');
    expect(out).toBe('MMAP');
    expect(counts.READ).toBeGreaterThan(0);
    expect(counts.WRITE).toBeGreaterThan(0);
  });

  test('a kernel that offers only 7.38: mounts and works without passthrough; passthrough=on fails in one line', async () => {
    const env = { ...process.env, LAYERFS_FUSE_MINOR: '38', LAYERFS_URING: 'auto' };  // auto: no ring on a 7.38 kernel
    const { counts, out } = await ioCounts('old', '', env);
    expect(out).toBe('MMAP');
    expect(counts.READ).toBeGreaterThan(0);
    const l = layers('old-on');
    const r = spawnSync(process.execPath, [CLI, 'mount', '-o', opts(l, ',passthrough=on'), l.mnt], { encoding: 'utf8', env });
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/passthrough=on: the kernel does not offer FUSE passthrough \(protocol 7\.38/)]);
    expect(isMounted(l.mnt)).toBe(false);
  });

  test('passthrough=on without privileges, or with writeback: one line, exit 1, nothing mounted', () => {
    const uid = ensureUser();
    const l = layers('user-on');
    spawnSync('chown', ['-R', String(uid), path.dirname(l.mnt)]);
    const r = runAs(uid, [process.execPath, CLI, 'mount', '-o', opts(l, ',passthrough=on'), l.mnt]);
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/passthrough=on needs root/)]);
    const w = layerfs(['mount', '-o', opts(l, ',passthrough=on,writeback=1'), l.mnt]);
    expect(w.status).toBe(1);
    expect(w.stderr.trim().split('\n')).toEqual([expect.stringMatching(/passthrough=on cannot be combined with writeback/)]);
    const bad = layerfs(['mount', '-o', opts(l, ',passthrough=sometimes'), l.mnt]);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/bad value for option passthrough/);
    expect(isMounted(l.mnt)).toBe(false);
  });

  test('io_uring: with the kernel offering it, uring=on serves requests through the ring (data and metadata)', async () => {
    expect(fs.existsSync(URING_PARAM), `${URING_PARAM}: this kernel has no FUSE over io_uring`).toBe(true);
    await withUringParam(true, async () => {
      const { counts, out, l } = await ioCounts('uring', ',uring=on,passthrough=off');
      expect(out).toBe('MMAP');
      expect(counts.READ).toBeGreaterThan(0);
      expect(counts.WRITE).toBeGreaterThan(0);
      const total = Object.entries(counts).filter(([k]) => !['io_uring', 'INIT', 'FORGET', 'BATCH_FORGET'].includes(k))
        .reduce((a, [, v]) => a + v, 0);
      // everything but INIT and forgets (which stay on /dev/fuse) came through the ring
      expect(counts.io_uring).toBeGreaterThanOrEqual(total - 2);
      expect(counts.io_uring).toBeGreaterThan(20);
      expect(fs.readFileSync(path.join(l.upper, 'new.bin')).subarray(70000, 70004).toString()).toBe('MMAP');
      expect(fs.readFileSync(path.join(l.lower, 'lower.bin')).subarray(0, 6).toString()).toBe('AAAAAA');
    });
  });

  test('io_uring: uring=off (the default) keeps the read loop; uring=on without the kernel offering it fails in one line', async () => {
    const env = { ...process.env };
    delete env.LAYERFS_URING;
    await withUringParam(true, async () => {
      const { counts, out } = await ioCounts('uring-default', ',passthrough=off', env);
      expect(out).toBe('MMAP');
      expect(counts.READ).toBeGreaterThan(0);
      expect(counts.io_uring).toBe(0);
    });
    await withUringParam(false, () => {
      const l = layers('uring-off');
      const r = spawnSync(process.execPath, [CLI, 'mount', '-o', opts(l, ',uring=on'), l.mnt], { encoding: 'utf8' });
      expect(r.status).toBe(1);
      expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/uring=on: the kernel does not offer FUSE over io_uring/)]);
      expect(isMounted(l.mnt)).toBe(false);
      const bad = layerfs(['mount', '-o', opts(l, ',uring=maybe'), l.mnt]);
      expect(bad.status).toBe(1);
      expect(bad.stderr).toMatch(/bad value for option uring/);
      expect(isMounted(l.mnt)).toBe(false);
    });
  });

  test('security.capability answered in C: a capability set through the mount is still dropped by the next write, as on kernel overlayfs', () => {
    // v2 file capability cap_net_raw+ep, as setcap writes it
    const CAP = '0x0100000200200000000000000000000000000000';
    const script = `
import os, subprocess, sys
d = sys.argv[1]
def write(p):
    fd = os.open(p, os.O_WRONLY | os.O_APPEND); os.write(fd, b"x"); os.close(fd)
def cap(p):
    r = subprocess.run(["getfattr", "--absolute-names", "-n", "security.capability", "-e", "hex", p], capture_output=True, text=True)
    return r.stdout.split("=")[-1].strip() if r.returncode == 0 else "none"
out = []
for name, src in (("new", None), ("old", "lower")):
    p = f"{d}/{name}"
    if src is None:
        open(p, "w").close()
    write(p)   # the probe: no capability (cached from here on)
    subprocess.run(["setfattr", "-n", "security.capability", "-v", "${CAP}", p], check=True)
    out.append(cap(p))
    write(p)   # must drop it
    out.append(cap(p))
    write(p); out.append(cap(p))
print(" ".join(out))
`;
    const run = (tag: string, mount: (l: ReturnType<typeof layers>) => void): string => {
      const l = layers(tag);
      fs.writeFileSync(path.join(l.lower, 'old'), 'lower');
      mount(l);
      try {
        const r = spawnSync('python3', ['-c', script, l.mnt], { encoding: 'utf8' });
        expect(r.stderr).toBe('');
        return r.stdout.trim();
      } finally {
        spawnSync('umount', [l.mnt]);
      }
    };
    const kernel = run('cap-k', (l) => expect(spawnSync('mount', ['-t', 'overlay', 'overlay', '-o', opts(l), l.mnt]).status).toBe(0));
    const ours = run('cap-l', (l) => expect(layerfs(['mount', '-o', opts(l), l.mnt]).status).toBe(0));
    expect(kernel).toBe(`${CAP} none none ${CAP} none none`);
    expect(ours).toBe(kernel);
  });

  test('kill -9 during passthrough I/O: no hung process, layerfs umount clears the mount, fsynced data is on disk', async () => {
    const l = layers('kill');
    expect(layerfs(['mount', '-o', opts(l), l.mnt]).status).toBe(0);
    const writer = spawn('python3', ['-c', `
import os, sys
fd = os.open(sys.argv[1] + "/w.bin", os.O_CREAT | os.O_WRONLY, 0o644)
log = open(sys.argv[2], "a")
for i in range(1000000):
    os.pwrite(fd, bytes([65 + i % 26]) * 4096, (i % 256) * 4096)
    os.fsync(fd)
    log.write(f"{i}\\n"); log.flush()
`, l.mnt, path.join(base, 'kill-log')], { stdio: 'ignore' });
    const reader = spawn('sh', ['-c', `while :; do cat ${l.mnt}/lower.bin > /dev/null || exit 0; done`], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 400));
    process.kill(daemonPid(l.mnt), 'SIGKILL');
    // nothing hangs: the I/O processes end (with errors) by themselves
    const ended = (p: ChildProcess): Promise<unknown> => new Promise((r) => (p.exitCode !== null || p.signalCode ? r(null) : p.on('exit', r)));
    const t = setTimeout(() => { writer.kill('SIGKILL'); reader.kill('SIGKILL'); }, 10_000);
    await Promise.all([ended(writer), ended(reader)]);
    clearTimeout(t);
    expect(writer.signalCode).toBeNull();  // ended on its own, not by the timeout
    expect(layerfs(['umount', l.mnt]).status).toBe(0);
    expect(isMounted(l.mnt)).toBe(false);
    const acked = fs.readFileSync(path.join(base, 'kill-log'), 'utf8').trim().split('\n').filter(Boolean).map(Number);
    expect(acked.length).toBeGreaterThan(0);
    const last = acked[acked.length - 1];
    const data = fs.readFileSync(path.join(l.upper, 'w.bin'));
    const off = (last % 256) * 4096;
    expect(data[off]).toBe(65 + (last % 26));  // the last fsynced write is on the backing file
  });
});
