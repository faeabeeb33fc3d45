// The control socket of a mounted pool (POOL/control.sock): `layerfs thin message|status|
// resize|check|dump` reach the daemon that owns the metadata; without a daemon they open the
// pool themselves. One JSON request per connection, one JSON answer.
import * as net from 'node:net';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { E, LOCK_EX, LOCK_NB, LOCK_SH } from '../sys/constants';
import { native } from '../sys/native';
import { ThinError } from './pool';

export const SOCKET = 'control.sock';

export interface Request {
  cmd: 'message' | 'status' | 'resize' | 'resize-metadata' | 'check' | 'repair' | 'dump' | 'checkpoint';
  arg?: string | number;
}

export interface Answer {
  ok: boolean;
  out?: unknown;
  errno?: number;
  error?: string;
}

export function serveControl(dir: string, handle: (r: Request) => unknown): net.Server {
  const p = path.join(dir, SOCKET);
  fs.rmSync(p, { force: true });
  const srv = net.createServer((c) => {
    let buf = '';
    c.setEncoding('utf8');
    c.on('data', (d) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      let a: Answer;
      try {
        a = { ok: true, out: handle(JSON.parse(buf.slice(0, nl)) as Request) };
      } catch (e) {
        a = { ok: false, errno: e instanceof ThinError ? e.errno : E.EIO, error: (e as Error).message };
      }
      c.end(JSON.stringify(a) + '\n');
    });
    c.on('error', () => {});
  });
  srv.on('error', (e) => process.stderr.write(`layerfs thin: control socket ${p}: ${e.message}\n`));
  // the daemon runs with umask 0 (callers' modes are exact): the socket is the owner's alone
  const old = process.umask(0o077);
  try {
    srv.listen(p);  // binds synchronously
  } finally {
    process.umask(old);
  }
  srv.unref();
  return srv;
}

export const PIDFILE = 'daemon.pid';

export interface Owner {
  pid: number;
  mnt: string;
}

let ownerFd = -1;

/**
 * Makes this process the pool's owner: the pid file (pid, mountpoint) stays exclusively locked
 * for as long as the process lives. The kernel drops the lock the moment the process dies —
 * before it is reaped — so a killed owner never blocks check or repair, and a pid reused by
 * another process never looks like an owner.
 */
export function claimOwnership(dir: string, mnt: string): void {
  const fd = fs.openSync(path.join(dir, PIDFILE), fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644);
  if (native.flock(fd, LOCK_EX | LOCK_NB) < 0) {
    fs.closeSync(fd);
    throw new ThinError(E.EBUSY, `${dir} is already in use by another layerfs daemon`);
  }
  fs.ftruncateSync(fd, 0);
  fs.writeSync(fd, `${process.pid}\n${mnt}\n`, 0);
  ownerFd = fd;
}

const SIGKILL_BIT = 1n << 8n;  // signal 9 in /proc/PID/status's pending masks

/** Whether pid is dying: a zombie, or SIGKILL pending (it will let go of its lock at once). */
function exiting(pid: number): boolean {
  let st: string;
  try {
    st = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return true;
  }
  if (/^State:\s+[ZX]/m.test(st)) return true;
  for (const k of ['SigPnd', 'ShdPnd']) {
    const m = new RegExp(`^${k}:\\s+([0-9a-f]+)`, 'm').exec(st);
    if (m && (BigInt(`0x${m[1]}`) & SIGKILL_BIT) !== 0n) return true;
  }
  return false;
}

/** The live daemon that owns the pool, if any (its socket may not answer). A dying one is
 * waited for (up to a few seconds); a stale pid file is no owner. */
export function owner(dir: string): Owner | null {
  let fd: number;
  try {
    fd = fs.openSync(path.join(dir, PIDFILE), fs.constants.O_RDONLY);
  } catch {
    return null;
  }
  try {
    const deadline = Date.now() + 5000;
    for (;;) {
      if (native.flock(fd, LOCK_SH | LOCK_NB) === 0) return null;  // nobody holds it: stale
      const [pid, mnt] = fs.readFileSync(fd, 'utf8').split('\n');
      if (Number(pid) === process.pid) return null;
      if (!exiting(Number(pid)) || Date.now() > deadline) return { pid: Number(pid), mnt: mnt ?? '' };
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** The one line for a pool whose owner is alive but does not answer. */
export function hungOwner(dir: string, o: Owner): string {
  return `${dir} is in use by layerfs pid ${o.pid}${o.mnt ? ` (mounted on ${o.mnt})` : ''}, which is alive but does not ` +
    `answer on its control socket; if it is hung: kill ${o.pid} (kill -9 if it stays), ` +
    `layerfs umount ${o.mnt || 'MOUNTPOINT'}, then try again`;
}

export function stopServing(dir: string, srv: net.Server | null): void {
  srv?.close();
  fs.rmSync(path.join(dir, SOCKET), { force: true });
  fs.rmSync(path.join(dir, PIDFILE), { force: true });
  if (ownerFd >= 0) fs.closeSync(ownerFd);  // drops the lock
  ownerFd = -1;
}

/** Asks the daemon of a mounted pool; null when no daemon answers: none listens, or the owner
 * is stopped or dead (a stopped process's socket still accepts), or no answer in ANSWER_MS. */
export function ask(dir: string, r: Request): Promise<Answer | null> {
  const p = path.join(dir, SOCKET);
  if (!fs.existsSync(p)) return Promise.resolve(null);
  const pid = ownerPid(dir);
  return new Promise((resolve) => {
    const c = net.connect(p);
    let buf = '';
    const started = Date.now();
    const watch = setInterval(() => {
      if (Date.now() - started > ANSWER_MS || (pid > 0 && !running(pid))) done(null);
    }, 250);
    const done = (a: Answer | null): void => {
      clearInterval(watch);
      c.destroy();
      resolve(a);
    };
    c.setEncoding('utf8');
    c.on('connect', () => c.write(JSON.stringify(r) + '\n'));
    c.on('data', (d) => (buf += d));
    c.on('end', () => {
      try {
        done(JSON.parse(buf) as Answer);
      } catch {
        done(null);
      }
    });
    c.on('error', () => done(null));
  });
}

const ANSWER_MS = 30_000;

/** The pid the pid file names (0 when none). */
function ownerPid(dir: string): number {
  try {
    return Number(fs.readFileSync(path.join(dir, PIDFILE), 'utf8').split('\n')[0]) || 0;
  } catch {
    return 0;
  }
}

/** Whether pid exists and is neither stopped nor dying. */
function running(pid: number): boolean {
  try {
    const st = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    return !/^State:\s+[TtZX]/m.test(st) && !exiting(pid);
  } catch {
    return false;
  }
}
