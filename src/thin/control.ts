// The control socket of a mounted pool (POOL/control.sock): `layerfs thin message|status|
// resize|check|dump` reach the daemon that owns the metadata; without a daemon they open the
// pool themselves. One JSON request per connection, one JSON answer.
import * as net from 'node:net';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { E } from '../sys/constants';
import { ThinError } from './pool';

export const SOCKET = 'control.sock';

export interface Request {
  cmd: 'message' | 'status' | 'resize' | 'check' | 'dump' | 'checkpoint';
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
  fs.writeFileSync(path.join(dir, PIDFILE), `${process.pid}\n`, { mode: 0o644 });
  return srv;
}

export const PIDFILE = 'daemon.pid';

/** The pid of a live daemon that owns the pool, if any (its socket may not answer). */
export function owner(dir: string): number | null {
  try {
    const pid = Number(fs.readFileSync(path.join(dir, PIDFILE), 'utf8').trim());
    if (pid > 0 && pid !== process.pid && fs.existsSync(`/proc/${pid}`)) return pid;
  } catch {
    /* none */
  }
  return null;
}

export function stopServing(dir: string, srv: net.Server | null): void {
  srv?.close();
  fs.rmSync(path.join(dir, SOCKET), { force: true });
  fs.rmSync(path.join(dir, PIDFILE), { force: true });
}

/** Asks the daemon of a mounted pool; null when no daemon answers. */
export function ask(dir: string, r: Request): Promise<Answer | null> {
  const p = path.join(dir, SOCKET);
  if (!fs.existsSync(p)) return Promise.resolve(null);
  return new Promise((resolve) => {
    const c = net.connect(p);
    let buf = '';
    c.setEncoding('utf8');
    c.on('connect', () => c.write(JSON.stringify(r) + '\n'));
    c.on('data', (d) => (buf += d));
    c.on('end', () => {
      try {
        resolve(JSON.parse(buf) as Answer);
      } catch {
        resolve(null);
      }
    });
    c.on('error', () => resolve(null));
  });
}
