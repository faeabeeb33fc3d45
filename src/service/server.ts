// The resident service: one process per user (and user namespace, mount namespace and build)
// serves every background overlay mount. Mount helpers (native/helper/helper.c) talk to it over a unix
// SOCK_SEQPACKET socket that only its own uid may use (SO_PEERCRED, checked in C); each
// conversation is: mount request -> the dirs to open -> the helper's fds -> the kernel options
// -> the helper's mounted /dev/fuse fd -> "ok" once INIT is answered. It exits a grace period
// after its last mount and conversation are gone.
import * as fs from 'node:fs';
import { native } from '../sys/native';
import { Session } from '../fuse/session';
import { withEnv } from '../mount/env';
import { closeDirs, dirError, type Dir, type Want } from '../mount/dirs';
import type { Mountable } from '../mount/lifecycle';
import { overlayBuild, overlayPrepare } from '../overlay/mount';
import { aufsBuild, aufsPrepare } from '../aufs/mount';
import type { AufsConfig } from '../aufs/options';
import type { OverlayConfig } from '../overlay/options';
import { MountTable } from './table';
import { FsError, errnoName } from '../sys/errors';
import { UsageError } from '../mount/validate';

const GRACE_MS = Number(process.env.LAYERFS_SERVICE_GRACE_MS ?? 10_000);
const TRIM_MS = 1000;

interface Conversation {
  step: 'opened' | 'fuse' | 'ready';   // what the helper is to send next ('ready': served)
  pid: number;
  prog: string;
  aufs?: AufsConfig;    // an aufs-mode mount (prog layerfs-aufs)
  source: string;
  vars: NodeJS.ProcessEnv;
  cfg?: OverlayConfig;
  wants?: Want[];
  built?: Mountable;
  session?: Session;
  opened?: string[];    // the "opened" fields while more fds are on their way
  fds?: number[];
}

/** Who asked: the helper's parent (the engine, mount(8), a shell), read while the helper waits. */
function parentOf(pid: number): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) || pid;
  } catch {
    return pid;
  }
}

/** One line for a failed request: usage errors as they are, a syscall's errno by name. */
function describe(e: unknown, c: Conversation | undefined): string {
  if (e instanceof UsageError) return e.message;
  const what = c?.wants ? `cannot mount ${c.wants[0].path}` : 'cannot mount';
  if (e instanceof FsError) return `${what}: ${e.message || errnoName(e.errno)}`;
  return `${what}: ${(e as Error).message}`;
}

export class Service {
  private readonly convs = new Map<number, Conversation>();
  readonly table = new MountTable();
  private idle: NodeJS.Timeout | null = null;
  private trim: NodeJS.Timeout | null = null;
  private socketIno = 0;
  private stopping = false;

  constructor(private readonly socketPath: string) {}

  /** Listens; 0 or -errno. */
  listen(): number {
    const r = native.serviceListen(this.socketPath, (c, f, fds, pid) => this.packet(c, f, fds, pid));
    if (r === 0) this.socketIno = fs.statSync(this.socketPath).ino;
    this.armIdle();
    return r;
  }

  private reply(conn: number, fields: string[]): void {
    native.serviceSend(conn, fields);
  }

  private fail(conn: number, msg: string): void {
    const c = this.convs.get(conn);
    this.reply(conn, ['error', msg]);
    native.serviceClose(conn);
    this.convs.delete(conn);
    if (c) this.drop(c);
    this.armIdle();
  }

  /** A conversation ended before its mount was handed over: what it built goes. */
  private drop(c: Conversation): void {
    if (c.step === 'ready') return;   // the session owns it now
    c.built?.onEnd?.();
    c.built = undefined;
  }

  private packet(conn: number, fields: string[] | null, fds: number[], pid: number): void {
    if (fields === null) {   // the helper hung up (or was killed)
      const c = this.convs.get(conn);
      this.convs.delete(conn);
      if (c) this.drop(c);
      this.armIdle();
      return;
    }
    try {
      this.step(conn, fields, fds, pid);
    } catch (e) {
      for (const fd of fds) native.close(fd);
      this.fail(conn, describe(e, this.convs.get(conn)));
    }
  }

  private step(conn: number, f: string[], fds: number[], pid: number): void {
    const c = this.convs.get(conn);
    if (!c) {
      if (f[0] === 'ps') {
        this.reply(conn, ['text', f[1] === 'json' ? this.table.json() : this.table.text()]);
        native.serviceClose(conn);
        return;
      }
      if (f[0] !== 'mount' || f.length < 4) throw new Error(`unknown request ${f[0]}`);
      this.disarmIdle();
      const opts: string[] = [];
      const vars: NodeJS.ProcessEnv = {};
      for (let i = 4; i + 1 < f.length; i += 2) {
        if (f[i] === '-o') opts.push(f[i + 1]);
        else if (f[i] === '-e') {
          const eq = f[i + 1].indexOf('=');
          if (eq > 0) vars[f[i + 1].slice(0, eq)] = f[i + 1].slice(eq + 1);
        }
      }
      const conv: Conversation = { step: 'opened', pid: parentOf(pid), prog: f[1], source: f[2], vars };
      this.convs.set(conn, conv);
      // layerfs-aufs: aufs mode (its branches are the union's layers, its policy aufs's)
      const aufs = f[1] === 'layerfs-aufs' ? withEnv(vars, () => aufsPrepare(f[3], opts)) : null;
      const { cfg, wants } = aufs ? { cfg: aufs.cfg.overlay, wants: aufs.wants } : withEnv(vars, () => overlayPrepare(f[3], opts));
      conv.cfg = cfg;
      conv.aufs = aufs?.cfg;
      conv.wants = wants;
      // the helper prints the option warnings on the caller's stderr
      this.reply(conn, ['open', String(cfg.warnings.length), ...cfg.warnings, ...wants.flatMap((w) => [w.mode, w.path])]);
      return;
    }
    if (c.step === 'opened' && (f[0] === 'opened' || (f[0] === 'more' && c.opened))) {
      // over 250 dirs: the fds come in several packets (the kernel passes at most 253 in one)
      if (f[0] === 'opened') {
        c.opened = f;
        c.fds = fds;
      } else c.fds!.push(...fds);
      const opened = c.opened!;
      if (opened.length !== 1 + 2 * c.wants!.length) throw new Error(`the helper answered for ${(opened.length - 1) >> 1} of ${c.wants!.length} dirs`);
      const expected = c.wants!.filter((_, i) => Number(opened[1 + 2 * i]) === 0).length;
      if (c.fds!.length < expected) return;   // an error is answered only once every fd is in
      this.build(conn, c, opened, c.fds!);
      return;
    }
    if (c.step === 'fuse' && f[0] === 'fuse') {
      if (fds.length !== 1) throw new Error('the helper passed no /dev/fuse fd');
      this.serve(conn, c, fds[0], f[1] === '1');
      return;
    }
    throw new Error(`unexpected ${f[0]} from the helper`);
  }

  /** Every dir is opened (or one failed): build the union and tell the helper how to mount. */
  private build(conn: number, c: Conversation, f: string[], fds: number[]): void {
    c.opened = c.fds = undefined;
    const dirs: Dir[] = [];
    let k = 0;
    try {
      for (let i = 0; i < c.wants!.length; i++) {
        const w = c.wants![i];
        const errno = Number(f[1 + 2 * i]);
        if (errno) throw dirError(w.what, w.path, errno);
        if (k >= fds.length) throw new Error('the helper passed too few fds');
        dirs.push({ what: w.what, path: f[2 + 2 * i] || w.path, fd: fds[k++] });
      }
      c.built = withEnv(c.vars, () => (c.aufs ? aufsBuild(c.aufs, dirs, false, c.source, false)
        : overlayBuild(c.cfg!, dirs, false, { source: c.source, subtype: c.prog })));
    } finally {
      closeDirs(dirs);
      for (let i = k; i < fds.length; i++) native.close(fds[i]);
    }
    c.step = 'fuse';
    this.reply(conn, ['mount', c.built.session.mountOptions.join(','), c.built.mountpoint]);
  }

  private serve(conn: number, c: Conversation, fd: number, byFusermount: boolean): void {
    const m = c.built!;
    const s = withEnv(c.vars, () => new Session(m.fs, m.mountpoint, { ...m.session, fd, byFusermount }));
    c.session = s;
    c.step = 'ready';
    m.onSession?.(s);
    const entry = this.table.add(s, { mode: c.aufs ? 'aufs' : 'overlay', prog: c.prog, source: c.source, pid: c.pid, cfg: c.cfg! });
    s.ready.then(() => {
      this.reply(conn, ['ok']);
      native.serviceClose(conn);
      this.convs.delete(conn);
    }, (e: Error) => {
      this.reply(conn, ['error', `cannot mount ${m.mountpoint}: ${e.message}`]);
      native.serviceClose(conn);
      this.convs.delete(conn);
      s.unmount();
    });
    s.ended.then(() => {
      this.table.remove(entry);
      m.onEnd?.();
      if (this.convs.get(conn)?.session === s) this.convs.delete(conn);
      this.armIdle();
    });
  }

  private disarmIdle(): void {
    if (this.idle) clearTimeout(this.idle);
    if (this.trim) clearTimeout(this.trim);
    this.idle = this.trim = null;
  }

  /** With nothing mounted and nobody talking: exit after the grace period. */
  private armIdle(): void {
    this.disarmIdle();
    if (this.table.size || this.convs.size) return;
    if (this.stopping) return this.exit();
    // the last mount went: give its memory back soon (not in the way of a next mount), not at
    // V8's next convenience; then exit if nothing came within the grace period
    const trim = (): void => {
      (globalThis as { gc?: () => void }).gc?.();
      native.trimMemory();
    };
    // twice: V8 gives the pages of a collected heap back over a few seconds
    this.trim = setTimeout(() => {
      trim();
      this.trim = setTimeout(trim, 4 * TRIM_MS);
    }, Math.min(TRIM_MS, GRACE_MS / 2));
    this.idle = setTimeout(() => this.exit(), GRACE_MS);
  }

  private exit(): void {
    native.serviceStop();
    try {   // only our own socket: a newer service may have taken the name already
      if (fs.statSync(this.socketPath).ino === this.socketIno) fs.unlinkSync(this.socketPath);
    } catch { /* gone */ }
    process.exit(0);
  }

  /** SIGTERM and friends: every mount is detached; the process ends once they have ended. */
  stop(): void {
    this.stopping = true;
    native.serviceStop();
    for (const s of this.table.sessions()) s.unmount();
    this.armIdle();
    setTimeout(() => process.exit(0), 5000).unref();
  }
}

/** `layerfs service --socket PATH --ready-fd N`: started by the mount helper. */
export function runService(socketPath: string, readyFd: number): void {
  process.umask(0);   // created objects get exactly the caller's mode (fuse/modes.ts)
  native.raiseNofile();
  const svc = new Service(socketPath);
  const r = svc.listen();
  const say = (line: string): void => {
    try {
      fs.writeSync(readyFd, line + '\n');
      fs.closeSync(readyFd);
    } catch { /* the helper is gone */ }
  };
  if (r < 0) {
    say(`error cannot listen on ${socketPath}: errno ${-r}`);
    process.exit(1);
  }
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(sig, () => svc.stop());
  process.stderr.write(`layerfs service ${process.pid} listening on ${socketPath}\n`);
  say('ok');
}
