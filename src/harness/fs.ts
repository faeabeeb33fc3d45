// A harness mount's filesystem: the overlay union, with every operation traced (a JSON line
// each in STATE/trace.jsonl: time, pid, op, path(s), result, duration) and checked against the
// fault rules (errno, latency). Files are served as JS handles with direct I/O so that every read,
// write and fsync reaches these checks (no page cache in between, no passthrough); their pid is
// the opener's.
// Control: setxattr of user.harness.ctl on the mount's root, a JSON command — inject, clear,
// mark, flush — answered once applied (a bad one fails, its reason in user.harness.error);
// getxattr of user.harness.rules lists the rules with their counts.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FsError, errnoName } from '../sys/errors';
import { native } from '../sys/native';
import { AT_EMPTY_PATH, E } from '../sys/constants';
import { ST_INO, ST_SIZE, newStat } from '../sys/stat';
import type { AttrReply, Caller, DirOpened, Entry, Filesystem, MaybeAsync, Notifier, Opened, SetAttr } from '../fuse/filesystem';
import type { DirList } from '../sys/native';
import { ROOT_ID } from '../fuse/ops';
import type { Union } from '../union/union';
import { Faults, checkRule } from './faults';

export const CTL_PREFIX = 'user.harness.';
const FLUSH_MS = 200;

interface Handle { fd: number; nodeid: number; path: string; ino: number; opener: Caller }

export class HarnessFs implements Filesystem {
  readonly nameMax?: number;
  private readonly faults = new Faults();
  private readonly handles = new Map<number, Handle>();
  private nextHandle = 1;
  private lines: string[] = [];
  private lastError = '';
  private readonly timer: NodeJS.Timeout;
  private readonly traceFile: string;

  constructor(private readonly u: Union, stateDir: string) {
    this.nameMax = u.nameMax;
    this.traceFile = path.join(stateDir, 'trace.jsonl');
    this.timer = setInterval(() => this.flushTrace(), FLUSH_MS);
    this.timer.unref();
    this.record({ mark: 'mount' });
  }

  // ---- trace ----

  private record(x: object): void {
    this.lines.push(JSON.stringify({ t: Date.now(), ...x }));
    if (this.lines.length >= 4096) this.flushTrace();
  }

  private flushTrace(): void {
    if (!this.lines.length) return;
    const text = this.lines.join('\n') + '\n';
    this.lines = [];
    try {
      fs.appendFileSync(this.traceFile, text);
    } catch { /* the state dir went (the harness ended): nothing to keep it for */ }
  }

  private where(nodeid: number, name?: string): string {
    const p = this.u.pathOf(nodeid);
    const dir = p === null ? '?' : `/${p}`;
    return name === undefined ? dir : path.posix.join(dir, name);
  }

  /** One operation: the fault rules first (wait, fail), then the union; traced either way. */
  private run<T>(op: string, paths: string[], caller: Caller | null, fn: () => MaybeAsync<T>, args?: object): MaybeAsync<T> {
    const t0 = performance.now();
    const act = this.faults.active ? this.faults.decide(op, paths) : null;
    const done = (result: string, extra?: object): void => this.record({
      pid: caller?.pid, op, path: paths[0], ...(paths[1] ? { path2: paths[1] } : {}), ...(args ? { args } : {}), ...extra,
      result, ms: Math.round((performance.now() - t0) * 1000) / 1000, ...(act ? { fault: act.rule } : {}),
    });
    const call = (): MaybeAsync<T> => {
      if (act?.errno !== undefined) throw new FsError(act.errno);
      try {
        return fn();
      } catch (e) {
        // Node's fs calls (the data path) throw their own errors: as the errno they carry
        const errno = (e as NodeJS.ErrnoException).errno;
        throw e instanceof FsError || typeof errno !== 'number' ? e : new FsError(-errno);
      }
    };
    const finish = (v: T): T => {
      done('ok', typeof v === 'number' && (op === 'write' || op === 'read') ? { bytes: v } : Buffer.isBuffer(v) && op === 'read' ? { bytes: v.length } : undefined);
      return v;
    };
    const failed = (e: unknown): never => {
      done(e instanceof FsError ? errnoName(e.errno) : 'EIO');
      throw e;
    };
    const go = (): MaybeAsync<T> => {
      try {
        const r = call();
        return r instanceof Promise ? r.then(finish, failed) : finish(r);
      } catch (e) {
        return failed(e);
      }
    };
    if (act?.delayMs) return new Promise<T>((resolve, reject) => setTimeout(() => Promise.resolve().then(go).then(resolve, reject), act.delayMs));
    return go();
  }

  // ---- control ----

  private control(value: Buffer, caller: Caller): void {
    if (caller.uid !== 0 && caller.uid !== process.geteuid?.()) throw new FsError(E.EPERM);
    try {
      let cmd: { cmd?: string; rule?: unknown; name?: string };
      try {
        cmd = JSON.parse(value.toString('utf8')) as typeof cmd;
      } catch {
        throw new Error(`not a JSON command: ${value.toString('utf8').slice(0, 80)}`);
      }
      switch (cmd.cmd) {
        case 'inject': this.faults.add(checkRule(cmd.rule)); break;
        case 'clear': this.faults.clear(); break;
        case 'mark':
          if (typeof cmd.name !== 'string' || !cmd.name) throw new Error('mark needs a name');
          this.record({ mark: cmd.name });
          this.flushTrace();
          break;
        case 'flush': this.flushTrace(); break;
        default: throw new Error(`unknown command '${String(cmd.cmd)}' (inject, clear, mark, flush)`);
      }
      this.lastError = '';
    } catch (e) {
      this.lastError = (e as Error).message;
      throw new FsError(E.EINVAL, this.lastError);
    }
  }

  // ---- the Filesystem, delegated ----

  init(info: { protoMinor: number; want: number; maxWrite: number }): void { this.u.init(info); }
  attach(n: Notifier): void { this.u.attach(n); }
  close(): void {
    clearInterval(this.timer);
    this.record({ mark: 'unmount' });
    this.flushTrace();
    for (const h of this.handles.values()) native.close(h.fd);
    this.handles.clear();
    this.u.close();
  }

  lookup(parent: number, name: string, caller: Caller): MaybeAsync<Entry | null> {
    return this.run('lookup', [this.where(parent, name)], caller, () => this.u.lookup(parent, name));
  }
  forget(nodeid: number, nlookup: number): void { this.u.forget(nodeid, nlookup); }
  renode(nodeid: number): void { this.u.renode(nodeid); }

  getattr(nodeid: number, fh: number): MaybeAsync<AttrReply> {
    return this.run('getattr', [this.where(nodeid)], null, () => {
      try {
        return this.u.getattr(nodeid);
      } catch (e) {
        // an unlinked file still open through a JS handle: its fd knows it
        const h = fh > 0 ? this.handles.get(fh) : [...this.handles.values()].find((x) => x.nodeid === nodeid);
        const st = newStat();
        if (!h || native.fstatat(h.fd, '', AT_EMPTY_PATH, st) < 0) throw e;
        st[ST_INO] = h.ino;
        return { attr: st };
      }
    });
  }
  setattr(nodeid: number, set: SetAttr, caller: Caller): MaybeAsync<AttrReply> {
    return this.run('setattr', [this.where(nodeid)], caller, () => this.u.setattr(nodeid, set), { valid: set.valid, size: set.size, mode: set.mode });
  }
  readlink(nodeid: number): MaybeAsync<string> { return this.run('readlink', [this.where(nodeid)], null, () => this.u.readlink(nodeid)); }
  mknod(parent: number, name: string, mode: number, rdev: number, caller: Caller): MaybeAsync<Entry> {
    return this.run('mknod', [this.where(parent, name)], caller, () => this.u.mknod(parent, name, mode, rdev, caller), { mode });
  }
  mkdir(parent: number, name: string, mode: number, caller: Caller): MaybeAsync<Entry> {
    return this.run('mkdir', [this.where(parent, name)], caller, () => this.u.mkdir(parent, name, mode, caller), { mode });
  }
  unlink(parent: number, name: string, caller: Caller): MaybeAsync<void> {
    return this.run('unlink', [this.where(parent, name)], caller, () => this.u.unlink(parent, name));
  }
  rmdir(parent: number, name: string, caller: Caller): MaybeAsync<void> {
    return this.run('rmdir', [this.where(parent, name)], caller, () => this.u.rmdir(parent, name));
  }
  symlink(target: string, parent: number, name: string, caller: Caller): MaybeAsync<Entry> {
    return this.run('symlink', [this.where(parent, name)], caller, () => this.u.symlink(target, parent, name, caller), { target });
  }
  rename(parent: number, name: string, newparent: number, newname: string, flags: number, caller: Caller): MaybeAsync<void> {
    return this.run('rename', [this.where(parent, name), this.where(newparent, newname)], caller,
      () => this.u.rename(parent, name, newparent, newname, flags), flags ? { flags } : undefined);
  }
  link(nodeid: number, newparent: number, newname: string, caller: Caller): MaybeAsync<Entry> {
    return this.run('link', [this.where(nodeid), this.where(newparent, newname)], caller, () => this.u.link(nodeid, newparent, newname, caller));
  }

  /** The union's open fd, kept as a JS handle served direct. */
  private handle(o: Opened, nodeid: number, p: string, ino: number, opener: Caller): Opened {
    if (o.fd === undefined) return o;
    const h = this.nextHandle++;
    this.handles.set(h, { fd: o.fd, nodeid, path: p, ino, opener });
    return { jsHandle: h, directIo: true };
  }

  open(nodeid: number, flags: number, caller: Caller): MaybeAsync<Opened> {
    const p = this.where(nodeid);
    return this.run('open', [p], caller, () => this.handle(this.u.open(nodeid, flags) as Opened, nodeid, p, this.u.inoOf(nodeid), caller), { flags });
  }
  create(parent: number, name: string, mode: number, flags: number, caller: Caller): MaybeAsync<{ entry: Entry; opened: Opened }> {
    const p = this.where(parent, name);
    return this.run('create', [p], caller, () => {
      const r = this.u.create(parent, name, mode, flags, caller);
      return { entry: r.entry, opened: this.handle(r.opened, r.entry.nodeid, p, r.entry.attr[ST_INO], caller) };
    }, { mode, flags });
  }
  opendir(nodeid: number, _flags: number, caller: Caller): MaybeAsync<DirOpened> { return this.run('opendir', [this.where(nodeid)], caller, () => this.u.opendir(nodeid)); }
  readdir(nodeid: number, caller: Caller): MaybeAsync<DirList> { return this.run('readdir', [this.where(nodeid)], caller, () => this.u.readdir(nodeid)); }
  fsyncdir(nodeid: number, datasync: boolean): MaybeAsync<void> {
    return this.run('fsyncdir', [this.where(nodeid)], null, () => this.u.fsyncdir(nodeid, datasync));
  }
  statfs(nodeid: number): MaybeAsync<Float64Array> { return this.run('statfs', [this.where(nodeid)], null, () => this.u.statfs()); }

  setxattr(nodeid: number, name: string, value: Buffer, flags: number, caller: Caller): MaybeAsync<void> {
    if (nodeid === ROOT_ID && name === `${CTL_PREFIX}ctl`) return this.control(value, caller);
    return this.run('setxattr', [this.where(nodeid)], caller, () => this.u.setxattr(nodeid, name, value, flags, caller), { name });
  }
  getxattr(nodeid: number, name: string, caller: Caller): MaybeAsync<Buffer> {
    if (nodeid === ROOT_ID && name === `${CTL_PREFIX}rules`) return Buffer.from(JSON.stringify(this.faults.list()));
    if (nodeid === ROOT_ID && name === `${CTL_PREFIX}error`) return Buffer.from(this.lastError);
    return this.run('getxattr', [this.where(nodeid)], caller, () => this.u.getxattr(nodeid, name), { name });
  }
  listxattr(nodeid: number, caller: Caller): MaybeAsync<string[]> { return this.run('listxattr', [this.where(nodeid)], caller, () => this.u.listxattr(nodeid)); }
  removexattr(nodeid: number, name: string, caller: Caller): MaybeAsync<void> {
    return this.run('removexattr', [this.where(nodeid)], caller, () => this.u.removexattr(nodeid, name), { name });
  }

  private h(handle: number): Handle {
    const h = this.handles.get(handle);
    if (!h) throw new FsError(E.EBADF);
    return h;
  }

  read(handle: number, size: number, offset: number): MaybeAsync<Buffer> {
    const h = this.h(handle);
    return this.run('read', [h.path], h.opener, () => {
      const b = Buffer.allocUnsafe(size);
      return b.subarray(0, fs.readSync(h.fd, b, 0, size, offset));
    }, { offset, size });
  }
  write(handle: number, data: Buffer, offset: number): MaybeAsync<number> {
    const h = this.h(handle);
    return this.run('write', [h.path], h.opener, () => fs.writeSync(h.fd, data, 0, data.length, offset), { offset, size: data.length });
  }
  flush(handle: number): MaybeAsync<void> {
    const h = this.h(handle);
    return this.run('flush', [h.path], h.opener, () => undefined);
  }
  fsync(handle: number, datasync: boolean): MaybeAsync<void> {
    const h = this.h(handle);
    return this.run('fsync', [h.path], h.opener, () => (datasync ? fs.fdatasyncSync(h.fd) : fs.fsyncSync(h.fd)), datasync ? { datasync } : undefined);
  }
  release(handle: number): MaybeAsync<void> {
    const h = this.handles.get(handle);
    if (!h) return;
    this.handles.delete(handle);
    return this.run('release', [h.path], h.opener, () => {
      native.close(h.fd);
    });
  }
  fallocate(handle: number, mode: number, offset: number, length: number): MaybeAsync<void> {
    const h = this.h(handle);
    return this.run('fallocate', [h.path], h.opener, () => {
      if (mode !== 0) throw new FsError(E.EOPNOTSUPP);
      const st = newStat();
      if (native.fstatat(h.fd, '', AT_EMPTY_PATH, st) === 0 && st[ST_SIZE] < offset + length) fs.ftruncateSync(h.fd, offset + length);
    }, { mode, offset, length });
  }
}
