// The resident service and its C mount helper: mounts and unmounts that leave nothing behind,
// parallel helpers racing to start it, kill -9 under I/O, a broken mount beside healthy ones,
// bad input, rootless mounts and the socket's owner check. Each test uses a runtime dir of its
// own (LAYERFS_RUNTIME_DIR), so the services it starts and kills are its own.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { CLI, HELPER, daemonPid, fdCount, isMounted, requireFuse, rssKiB, servicePs, tempDir, unmountAll, waitFor } from './helpers/mount';
import { ensureUser } from './helpers/users';

let base: string;
let uid: number;
const started: string[] = [];   // runtime dirs whose services are killed at the end

/** A fresh runtime dir (0700, owned by owner): a service of its own. */
function runtime(tag: string, owner = 0): NodeJS.ProcessEnv {
  const d = path.join(base, `run-${tag}`);
  fs.mkdirSync(d, { mode: 0o700 });
  fs.chownSync(d, owner, owner);
  started.push(d);
  return { ...process.env, LAYERFS_RUNTIME_DIR: d };
}

function helper(args: string[], env: NodeJS.ProcessEnv, asUser = false): { status: number; stderr: string; stdout: string } {
  const argv = asUser ? ['setpriv', `--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', HELPER, ...args] : [HELPER, ...args];
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', env, timeout: 60_000 });
  return { status: r.status ?? -1, stderr: r.stderr, stdout: r.stdout };
}

interface Stack { lower: string; upper: string; work: string; mnt: string; opts: string }

function stack(tag: string, owner = 0): Stack {
  const d = path.join(base, tag);
  const s = { lower: `${d}/lower`, upper: `${d}/upper`, work: `${d}/work`, mnt: `${d}/mnt`, opts: '' };
  for (const p of [s.lower, s.upper, s.work, s.mnt]) fs.mkdirSync(p, { recursive: true });
  fs.writeFileSync(`${s.lower}/hello`, `hello from ${tag}\n`);
  for (const p of [d, s.upper, s.work, s.mnt]) fs.chownSync(p, owner, owner);
  s.opts = `lowerdir=${s.lower},upperdir=${s.upper},workdir=${s.work}`;
  return s;
}

function mount(s: Stack, env: NodeJS.ProcessEnv, asUser = false): void {
  const r = helper(['mount', '-o', s.opts, s.mnt], env, asUser);
  expect(r.status, r.stderr).toBe(0);
  expect(r.stderr).toBe('');
}

function servicePids(runDir: string): number[] {
  const out: number[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
      if (cmd.includes('service') && cmd.some((a) => a.startsWith(`${runDir}/`))) out.push(Number(d));
    } catch { /* gone */ }
  }
  return out;
}

function mountCount(): number {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter(Boolean).length;
}

beforeAll(() => {
  requireFuse();
  if (!fs.existsSync(HELPER)) throw new Error(`${HELPER} is missing: run 'make build'`);
  base = tempDir('service');
  fs.chmodSync(base, 0o755);
  uid = ensureUser();
});

afterEach(() => unmountAll(base));

afterAll(() => {
  unmountAll(base);
  for (const d of started) for (const pid of servicePids(d)) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  spawnSync('setfacl', ['-x', `u:${uid}`, '/dev/fuse']);
});

describe('resident service', () => {
  test('mounts through one service; ps shows mountpoint, caller pid and open handles; umount and fusermount3 -u free the state', () => {
    const env = runtime('basic');
    const a = stack('basic-a'), b = stack('basic-b');
    mount(a, env);
    mount(b, env);
    const ps = servicePs(env)!;
    expect(ps.mounts.map((m) => m.mountpoint).sort()).toEqual([a.mnt, b.mnt].sort());
    expect(servicePids(env.LAYERFS_RUNTIME_DIR!)).toEqual([ps.pid]);
    expect(fs.readFileSync(`${a.mnt}/hello`, 'utf8')).toBe('hello from basic-a\n');
    fs.writeFileSync(`${b.mnt}/new`, 'x');
    expect(fs.readFileSync(`${b.upper}/new`, 'utf8')).toBe('x');   // b's own upper
    expect(fs.existsSync(`${a.upper}/new`)).toBe(false);
    const fd = fs.openSync(`${a.mnt}/hello`, 'r');
    try {
      expect(servicePs(env)!.mounts.find((m) => m.mountpoint === a.mnt)!.openHandles).toBe(1);
    } finally {
      fs.closeSync(fd);
    }
    expect(waitFor(() => servicePs(env)!.mounts.find((m) => m.mountpoint === a.mnt)!.openHandles === 0)).toBe(true);
    // the text form names both mounts too
    const text = helper(['ps'], env).stdout;
    expect(text).toContain(a.mnt);
    expect(text).toContain(b.mnt);
    expect(spawnSync('umount', [a.mnt]).status).toBe(0);
    expect(spawnSync('fusermount3', ['-u', b.mnt]).status).toBe(0);
    expect(waitFor(() => servicePs(env)?.mounts.length === 0)).toBe(true);
    expect(servicePs(env)!.pid).toBe(ps.pid);   // still resident (grace period)
  });

  test('200 mount/unmount cycles: service fds, memory and the mount table back to baseline', () => {
    const env = { ...runtime('cycles'), LAYERFS_SERVICE_GRACE_MS: '600000' };
    const s = stack('cycles');
    const cycle = (): void => {
      mount(s, env);
      expect(fs.readFileSync(`${s.mnt}/hello`, 'utf8')).toBe('hello from cycles\n');
      fs.writeFileSync(`${s.mnt}/f`, 'y');
      expect(spawnSync('umount', [s.mnt]).status).toBe(0);
    };
    for (let i = 0; i < 10; i++) cycle();
    const pid = servicePs(env)!.pid;
    expect(waitFor(() => servicePs(env)!.mounts.length === 0)).toBe(true);
    const settle = (): void => void spawnSync('sleep', ['1.5']);   // the service trims 1 s after its last mount
    settle();
    const fds = fdCount(pid), rss = rssKiB(pid), mounts = mountCount();
    for (let i = 0; i < 200; i++) cycle();
    expect(waitFor(() => servicePs(env)!.mounts.length === 0)).toBe(true);
    settle();
    expect(servicePs(env)!.pid).toBe(pid);
    expect(fdCount(pid)).toBeLessThanOrEqual(fds);
    expect(mountCount()).toBe(mounts);
    // the service collects and trims a second and five seconds after its last mount went
    waitFor(() => rssKiB(pid) - rss < 10 * 1024, 15_000);
    expect(rssKiB(pid) - rss, 'RSS growth over 200 cycles (KiB)').toBeLessThan(10 * 1024);
  });

  test('20 helpers at once against a cold service: one service starts, every mount answers', async () => {
    const env = runtime('parallel');
    const stacks = Array.from({ length: 20 }, (_, i) => stack(`par-${i}`));
    const runs = stacks.map((s) => new Promise<{ code: number; err: string }>((resolve) => {
      const c = spawn(HELPER, ['mount', '-o', s.opts, s.mnt], { env, stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      c.stderr.on('data', (d) => (err += d));
      c.on('exit', (code) => resolve({ code: code ?? -1, err }));
    }));
    const results = await Promise.all(runs);
    for (const r of results) expect(r.code, r.err).toBe(0);
    expect(servicePids(env.LAYERFS_RUNTIME_DIR!)).toHaveLength(1);
    expect(servicePs(env)!.mounts).toHaveLength(20);
    stacks.forEach((s) => expect(fs.readFileSync(`${s.mnt}/hello`, 'utf8')).toBe(`hello from ${path.basename(path.dirname(s.mnt))}\n`));
  });

  test('kill -9 of the service during I/O on 5 mounts: no hung process, layerfs umount clears each, the next helper starts a fresh service', async () => {
    const env = runtime('kill');
    const stacks = Array.from({ length: 5 }, (_, i) => stack(`kill-${i}`));
    for (const s of stacks) mount(s, env);
    const pid = servicePs(env)!.pid;
    const writers = stacks.map((s) => spawn('sh', ['-c', `i=0; while :; do echo $i >> '${s.mnt}/log' || exit 3; cat '${s.mnt}/hello' >/dev/null || exit 4; i=$((i+1)); done`], { stdio: 'ignore' }));
    const exited = writers.map((w) => new Promise<number | null>((r) => w.on('exit', (code) => r(code))));
    await new Promise((r) => setTimeout(r, 300));
    process.kill(pid, 'SIGKILL');
    const t = setTimeout(() => writers.forEach((w) => w.kill('SIGKILL')), 10_000);
    const codes = await Promise.all(exited);
    clearTimeout(t);
    expect(codes.every((c) => c === 3 || c === 4), `writers ended by an error, not a hang: ${codes}`).toBe(true);
    for (const s of stacks) {
      const r = spawnSync(process.execPath, [CLI, 'umount', s.mnt], { encoding: 'utf8', env });
      expect(r.status, r.stderr).toBe(0);
      expect(isMounted(s.mnt)).toBe(false);
    }
    for (const s of stacks) mount(s, env);   // usable again, through a new service
    const again = servicePs(env)!;
    expect(again.pid).not.toBe(pid);
    expect(again.mounts).toHaveLength(5);
    expect(fs.readFileSync(`${stacks[0].mnt}/hello`, 'utf8')).toBe('hello from kill-0\n');
  });

  test('a mount whose lower dir is removed, one whose lower fails with I/O errors, and one listing a huge directory leave the other mounts answering', async () => {
    const env = runtime('broken');
    const gone = stack('gone'), good = stack('good'), huge = stack('huge');
    const N = 50_000;
    for (let i = 0; i < N; i++) fs.writeFileSync(`${huge.lower}/f${i}`, '');
    for (const s of [gone, good, huge]) mount(s, env);
    fs.mkdirSync(`${gone.lower}/sub`);
    fs.rmSync(gone.lower, { recursive: true });
    const ls = spawnSync('ls', [gone.mnt], { encoding: 'utf8', timeout: 10_000 });
    expect(ls.error).toBeUndefined();   // an answer (an error or an empty dir), not a hang
    expect(spawnSync('cat', [`${gone.mnt}/hello`], { timeout: 10_000 }).status).not.toBe(0);
    // a lower on a FUSE mount whose server dies: every read of it fails (ENOTCONN), at once
    const dying = stack('dying');
    const back = path.join(base, 'dying-backing'), front = path.join(base, 'dying-front');
    fs.mkdirSync(back);
    fs.mkdirSync(front);
    fs.writeFileSync(`${back}/data`, 'served\n');
    const pt = spawnSync(process.execPath, [CLI, 'mount', '--passthrough', back, front], { encoding: 'utf8' });
    expect(pt.status, pt.stderr).toBe(0);
    const r = helper(['mount', '-o', `lowerdir=${front},upperdir=${dying.upper},workdir=${dying.work}`, dying.mnt], env);
    expect(r.status, r.stderr).toBe(0);
    expect(fs.readFileSync(`${dying.mnt}/data`, 'utf8')).toBe('served\n');
    process.kill(daemonPid(front), 'SIGKILL');
    expect(waitFor(() => spawnSync('stat', [front]).status !== 0)).toBe(true);
    const broken = spawnSync('sh', ['-c', `cat '${dying.mnt}/data' '${dying.mnt}/other'; ls '${dying.mnt}/new-dir'`], { encoding: 'utf8', timeout: 10_000 });
    expect(broken.error).toBeUndefined();   // errors, not a hang
    expect(broken.status).not.toBe(0);
    expect(fs.readFileSync(`${good.mnt}/hello`, 'utf8')).toBe('hello from good\n');
    // the huge listing and 300 stats of the healthy mount, at the same time from two processes
    const lister = spawn('sh', ['-c', `ls -f '${huge.mnt}' | wc -l`], { stdio: ['ignore', 'pipe', 'ignore'] });
    let count = '';
    lister.stdout.on('data', (d) => (count += d));
    const statter = spawnSync('sh', ['-c', `for i in $(seq 300); do stat -c %s '${good.mnt}/hello' >/dev/null || exit 1; done`], { timeout: 60_000 });
    expect(statter.status).toBe(0);
    await new Promise((r) => lister.on('close', r));
    expect(Number(count.trim())).toBe(N + 3);   // . .. hello
    expect(fs.readFileSync(`${good.mnt}/hello`, 'utf8')).toBe('hello from good\n');
    for (const m of [gone.mnt, dying.mnt]) expect(spawnSync('umount', [m]).status).toBe(0);
    expect(waitFor(() => servicePs(env)?.mounts.length === 2)).toBe(true);
  });

  test('bad options and dirs: one line, exit 1, the service and its other mount as they were', () => {
    const env = runtime('bad');
    const ok = stack('bad-ok');
    mount(ok, env);
    const before = servicePs(env)!;
    const inner = path.join(ok.lower, 'inner');
    fs.mkdirSync(inner);
    const target = path.join(base, 'bad-target');
    fs.mkdirSync(target);
    const file = path.join(base, 'a-file');
    fs.writeFileSync(file, '');
    const cases: [string[], RegExp][] = [
      [['-o', `lowerdir=${base}/missing`, target], /lowerdir .*missing does not exist/],
      [['-o', `lowerdir=${file}`, target], /is not a directory/],
      [['-o', `lowerdir=${ok.lower},upperdir=${inner},workdir=${ok.work}`, target], /upperdir .* is inside lowerdir/],
      [['-o', `lowerdir=${ok.lower}`, `${base}/no-such-mnt`], /mountpoint .* does not exist/],
      [['-o', `lowerdir=${ok.lower}`, ok.mnt], /is busy/],
      [['-o', `lowerdir=${ok.lower},passthrough=sometimes`, target], /bad value for option passthrough/],
      [['-o', `lowerdir=${ok.lower},upperdir=${ok.upper}`, target], /workdir/],
    ];
    const lowerBefore = fs.readdirSync(ok.lower).sort();
    for (const [args, re] of cases) {
      const r = helper(['mount', ...args], env);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr).toMatch(re);
      expect(r.stderr.trim().split('\n'), r.stderr).toHaveLength(1);
      expect(isMounted(target)).toBe(false);
    }
    const after = servicePs(env)!;
    expect(after.pid).toBe(before.pid);
    expect(after.mounts.map((m) => m.mountpoint)).toEqual([ok.mnt]);
    expect(fs.readdirSync(ok.lower).sort()).toEqual(lowerBefore);
    expect(fs.readFileSync(`${ok.mnt}/hello`, 'utf8')).toBe('hello from bad-ok\n');
  });

  test('rootless: a user mounts through their own service, fusermount3 -u frees it; a layer the user cannot read is EACCES', () => {
    expect(spawnSync('setfacl', ['-m', `u:${uid}:rw`, '/dev/fuse']).status).toBe(0);
    const env = runtime('user', uid);
    const s = stack('user', uid);
    mount(s, env, true);
    const ps = spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', HELPER, 'ps', '--json'], { encoding: 'utf8', env });
    const table = JSON.parse(ps.stdout);
    expect(table.mounts.map((m: { mountpoint: string }) => m.mountpoint)).toEqual([s.mnt]);
    expect(fs.readFileSync(`/proc/${table.pid}/status`, 'utf8')).toMatch(new RegExp(`\\nUid:\\s+${uid}\\s`));
    const w = spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', 'sh', '-c', `echo mine > '${s.mnt}/mine'`]);
    expect(w.status).toBe(0);
    expect(fs.statSync(`${s.upper}/mine`).uid).toBe(uid);
    // a lower dir only root may read: the helper, running as the user, cannot open it
    const secret = path.join(base, 'secret');
    fs.mkdirSync(secret, { mode: 0o700 });
    const other = stack('user-2', uid);
    const r = helper(['mount', '-o', `lowerdir=${secret},upperdir=${other.upper},workdir=${other.work}`, other.mnt], env, true);
    expect(r.status).toBe(1);
    expect(r.stderr.trim()).toMatch(/^layerfs: lowerdir .*secret: permission denied$/);
    expect(isMounted(other.mnt)).toBe(false);
    const u = spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', 'fusermount3', '-u', s.mnt], { encoding: 'utf8' });
    expect(u.status, u.stderr).toBe(0);
    expect(waitFor(() => JSON.parse(spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', HELPER, 'ps', '--json'], { encoding: 'utf8', env }).stdout).mounts.length === 0)).toBe(true);
  });

  test("another user reaching the socket is refused by the service itself (SO_PEERCRED), not only by file modes", () => {
    const env = runtime('owner');
    const s = stack('owner');
    mount(s, env);
    const dir = env.LAYERFS_RUNTIME_DIR!;
    const sock = fs.readdirSync(dir).find((n) => n.endsWith('.sock'))!;
    // open the modes up, as a careless admin might: the service must still refuse
    fs.chmodSync(dir, 0o755);
    fs.chmodSync(path.join(dir, sock), 0o777);
    try {
      const py = `import socket,sys
s=socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(sys.argv[1]); s.send(b"ps\\0json")
print(s.recv(4096).decode().replace("\\0", "|"))`;
      const r = spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '/usr/bin/python3', '-c', py, path.join(dir, sock)], { encoding: 'utf8' });
      expect(r.stdout.trim(), r.stderr).toBe('error|this layerfs service belongs to another user');
      // and a helper run by that user will not use a runtime dir it does not own
      const h = helper(['mount', '-o', s.opts, s.mnt], env, true);
      expect(h.status).toBe(1);
      expect(h.stderr).toMatch(/no private directory for the service's socket/);
    } finally {
      fs.chmodSync(dir, 0o700);
    }
    expect(servicePs(env)!.mounts).toHaveLength(1);
  });

  test('one page cache without passthrough (rootless): mounts reading one big lower file hold one copy; exec and mmap still work; small files, copy-up and page_cache=private are per mount, page_cache=shared shares all', () => {
    expect(spawnSync('setfacl', ['-m', `u:${uid}:rw`, '/dev/fuse']).status).toBe(0);
    const env = runtime('pagecache', uid);
    const shared = path.join(base, 'pc-lower');
    fs.mkdirSync(shared);
    const data = Buffer.alloc(64 << 20);   // page_cache=auto shares data files of 64 MiB and more
    for (let i = 0; i < data.length; i += 4096) data.writeUInt32LE(i, i);
    fs.writeFileSync(`${shared}/big`, data);
    fs.writeFileSync(`${shared}/small`, data.subarray(0, 1 << 20));
    // mincore (fincore) tells a caller the truth only about files it owns or may write
    for (const f of ['big', 'small']) fs.chownSync(`${shared}/${f}`, uid, uid);
    fs.copyFileSync('/bin/true', `${shared}/true`);
    fs.chmodSync(`${shared}/true`, 0o755);
    const stacks = [0, 1, 2].map((i) => stack(`pc-${i}`, uid));
    for (const s of stacks) {
      const r = helper(['mount', '-o', `lowerdir=${shared},upperdir=${s.upper},workdir=${s.work}`, s.mnt], env, true);
      expect(r.status, r.stderr).toBe(0);
    }
    // the user's mounts are the user's alone (no allow_other): every look at them runs as the user
    const sh = (cmd: string): { status: number; stdout: string; stderr: string } => {
      const r = spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', 'sh', '-c', cmd], { encoding: 'utf8' });
      return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
    };
    const resident = (f: string): number => Number(sh(`fincore -nb -o RES '${f}'`).stdout.trim());
    for (const s of stacks) expect(sh(`cmp '${s.mnt}/big' '${shared}/big'`).status).toBe(0);
    for (const s of stacks) expect(resident(`${s.mnt}/big`), `${s.mnt}/big cached by the mount`).toBe(0);
    expect(resident(`${shared}/big`)).toBe(data.length);   // the one copy: the lower file's own
    expect(sh(`cat '${stacks[0].mnt}/small' >/dev/null`).status).toBe(0);
    expect(resident(`${stacks[0].mnt}/small`)).toBe(1 << 20);   // small: cached by the mount
    // exec (the kernel mmaps it) and an mmap read of a direct-io file
    expect(sh(`'${stacks[0].mnt}/true'`).status).toBe(0);
    const mm = sh(`/usr/bin/python3 -c "import mmap,sys
f=open(sys.argv[1],'rb'); m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ); print(int.from_bytes(m[40960:40964],'little'))" '${stacks[1].mnt}/big'`);
    expect(mm.stdout.trim(), mm.stderr).toBe('40960');
    // a copied-up file is the mount's own: written data is read back through that mount only
    expect(sh(`printf 'XXXX' | dd of='${stacks[2].mnt}/big' conv=notrunc bs=4 seek=1 2>/dev/null`).status).toBe(0);
    expect(sh(`dd if='${stacks[2].mnt}/big' bs=4 skip=1 count=1 2>/dev/null`).stdout).toBe('XXXX');
    expect(sh(`cmp '${stacks[0].mnt}/big' '${shared}/big'`).status).toBe(0);
    // page_cache=shared: small files too; page_cache=private: the mount keeps its own copy of
    // everything (fuse-overlayfs's behaviour)
    for (const s of stacks) expect(sh(`fusermount3 -u '${s.mnt}'`).status).toBe(0);
    const p = stacks[0];
    for (const [mode, file, cached] of [['shared', 'small', 0], ['private', 'big', data.length]] as const) {
      const r = helper(['mount', '-o', `lowerdir=${shared},upperdir=${p.upper},workdir=${p.work},page_cache=${mode}`, p.mnt], env, true);
      expect(r.status, r.stderr).toBe(0);
      expect(sh(`cat '${p.mnt}/${file}' >/dev/null`).status).toBe(0);
      expect(resident(`${p.mnt}/${file}`), `page_cache=${mode}`).toBe(cached);
      expect(sh(`fusermount3 -u '${p.mnt}'`).status).toBe(0);
    }
  });

  test('merged lower listings are shared by mounts of one stack: whiteouts stay per mount, a change made directly in the lower shows in every mount', () => {
    const env = runtime('listing');
    const lower = path.join(base, 'shared-lower');
    fs.mkdirSync(path.join(lower, 'dir'), { recursive: true });
    for (const n of ['a', 'b', 'c']) fs.writeFileSync(path.join(lower, 'dir', n), n);
    const [m1, m2] = [stack('list-1'), stack('list-2')];
    for (const s of [m1, m2]) {
      const r = helper(['mount', '-o', `lowerdir=${lower},upperdir=${s.upper},workdir=${s.work}`, s.mnt], env);
      expect(r.status, r.stderr).toBe(0);
    }
    const ls = (s: Stack): string => fs.readdirSync(path.join(s.mnt, 'dir')).sort().join(',');
    expect(ls(m1)).toBe('a,b,c');
    expect(ls(m2)).toBe('a,b,c');
    fs.rmSync(path.join(m2.mnt, 'dir', 'b'));   // a whiteout in m2's upper only
    fs.writeFileSync(path.join(m1.mnt, 'dir', 'up1'), '');
    expect(ls(m1)).toBe('a,b,c,up1');
    expect(ls(m2)).toBe('a,c');
    fs.writeFileSync(path.join(lower, 'dir', 'new'), '');   // behind both mounts' backs
    expect(waitFor(() => ls(m1) === 'a,b,c,new,up1' && ls(m2) === 'a,c,new')).toBe(true);
    expect(spawnSync('umount', [m1.mnt]).status).toBe(0);
    fs.rmSync(path.join(lower, 'dir', 'a'));
    expect(waitFor(() => ls(m2) === 'c,new')).toBe(true);
    expect(spawnSync('umount', [m2.mnt]).status).toBe(0);
    fs.writeFileSync(path.join(lower, 'dir', 'later'), '');   // while nothing watches it
    const r = helper(['mount', '-o', `lowerdir=${lower},upperdir=${m1.upper},workdir=${m1.work}`, m1.mnt], env);
    expect(r.status, r.stderr).toBe(0);
    expect(ls(m1)).toBe('b,c,later,new,up1');
  });

  test('LAYERFS_SERVICE=off: the mount gets a daemon of its own, as before the service', () => {
    const env = { ...runtime('off'), LAYERFS_SERVICE: 'off' };
    const s = stack('off');
    const r = spawnSync(process.execPath, [CLI, 'mount', '-o', s.opts, s.mnt], { encoding: 'utf8', env });
    expect(r.status, r.stderr).toBe(0);
    expect(fs.readFileSync(`${s.mnt}/hello`, 'utf8')).toBe('hello from off\n');
    expect(servicePs(env)?.pid ?? null).toBe(null);   // no service was started
    expect(servicePids(env.LAYERFS_RUNTIME_DIR!)).toEqual([]);
    const own = fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d)).some((d) => {
      try {
        const cmd = fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0');
        return cmd.includes('--layerfs-daemon-child') && cmd.includes(s.mnt);
      } catch { return false; }
    });
    expect(own).toBe(true);
  });

  test('SIGTERM to the service detaches every mount it serves, then it exits', () => {
    const env = runtime('term');
    const stacks = [stack('term-a'), stack('term-b')];
    for (const s of stacks) mount(s, env);
    const pid = servicePs(env)!.pid;
    process.kill(pid, 'SIGTERM');
    expect(waitFor(() => !fs.existsSync(`/proc/${pid}`), 10_000)).toBe(true);
    for (const s of stacks) expect(isMounted(s.mnt)).toBe(false);
    for (const s of stacks) expect(fs.readFileSync(`${s.lower}/hello`, 'utf8')).toMatch(/^hello from term-/);
  });

  test('the service exits a grace period after its last mount, removing its socket', () => {
    const env = { ...runtime('idle'), LAYERFS_SERVICE_GRACE_MS: '300' };
    const s = stack('idle');
    mount(s, env);
    const pid = servicePs(env)!.pid;
    expect(spawnSync('umount', [s.mnt]).status).toBe(0);
    expect(waitFor(() => !fs.existsSync(`/proc/${pid}`), 10_000)).toBe(true);
    expect(fs.readdirSync(env.LAYERFS_RUNTIME_DIR!).filter((n) => n.endsWith('.sock'))).toEqual([]);
    mount(s, env);   // and the next helper starts another
    expect(servicePs(env)!.pid).not.toBe(pid);
  });
});
