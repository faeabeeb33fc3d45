// A harness mount's filesystem: the overlay union, with every operation traced (a JSON line
// each in STATE/trace.jsonl: time, pid, op, path(s), result, duration), checked against the
// fault rules (errno, latency, short writes, crash) and followed by the durability model
// (durable.ts: what a power loss keeps). Files are served as JS handles with direct I/O so that
// every read, write and fsync reaches these checks (no page cache in between, no passthrough);
// their pid is the opener's. After a crash every call fails with EIO until the harness remounts.
// Control: setxattr of user.harness.ctl on the mount's root, a JSON command — inject, clear,
// mark, flush, sync, crash — answered once applied (a bad one fails, its reason in
// user.harness.error); getxattr of user.harness.rules lists the rules with their counts,
// user.harness.status the model's state.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FsError, errnoName } from '../sys/errors';
import { native } from '../sys/native';
import { AT_EMPTY_PATH, E, O_ACCMODE, O_DSYNC, O_RDONLY, O_TRUNC } from '../sys/constants';
import { ST_INO, ST_SIZE, newStat } from '../sys/stat';
import { SETATTR } from '../fuse/ops';
import type { AttrReply, Caller, DirOpened, Entry, Filesystem, MaybeAsync, Notifier, Opened, SetAttr } from '../fuse/filesystem';
import type { DirList } from '../sys/native';
import { ROOT_ID } from '../fuse/ops';
import type { Union } from '../union/union';
import { Faults, checkCrashOpts, checkRule, type Action } from './faults';
import { Durability, MODELS, type Model, type Obj } from './durable';
import type { CrashOpts } from './writes';
import { copyTree } from './copy';

export const CTL_PREFIX = 'user.harness.';
const FLUSH_MS = 200;

interface Handle { fd: number; nodeid: number; path: string; ino: number; opener: Caller; obj: Obj | null; sync: boolean }

/** Where a harness mount's live upper is, and how to make a union of the same options (the durable view). */
export interface HarnessDirs { upper: string; work: string; durable(upper: string, work: string): Union }

/**
 * The durable view's own copy of the live upper and work dir (at a mount both views are the
 * same: what was there is durable), STATE/durable-GEN; a copy left by an earlier mount goes.
 */
function durableCopy(stateDir: string, d: HarnessDirs): { upper: string; work: string } {
  const gen = path.basename(d.upper).replace(/^upper-/, '');
  const dir = path.join(stateDir, `durable-${gen}`);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.rmSync(`${dir}.tmp`, { recursive: true, force: true });
  fs.mkdirSync(`${dir}.tmp`, { mode: 0o700 });
  if (isEmptyTree(d.upper) && isEmptyTree(d.work)) {
    // a fresh upper (a new harness, a reset): nothing to copy, no cp to start (a reset costs ms)
    for (const p of [d.upper, d.work]) fs.mkdirSync(path.join(`${dir}.tmp`, path.basename(p)), { mode: fs.statSync(p).mode & 0o7777 });
  } else {
    copyTree([d.upper, d.work], `${dir}.tmp`);
  }
  fs.renameSync(`${dir}.tmp`, dir);
  return { upper: path.join(dir, path.basename(d.upper)), work: path.join(dir, path.basename(d.work)) };
}

/** A dir holding nothing but empty dirs (a work dir's work/ and index/ as a mount leaves them). */
function isEmptyTree(p: string): boolean {
  for (const e of fs.readdirSync(p, { withFileTypes: true })) if (!e.isDirectory() || !isEmptyTree(path.join(p, e.name))) return false;
  return true;
}

function modelOf(stateDir: string): Model {
  try {
    const m = (JSON.parse(fs.readFileSync(path.join(stateDir, 'meta.json'), 'utf8')) as { model?: Model }).model;
    return m && MODELS.includes(m) ? m : 'posix';
  } catch {
    return 'posix';
  }
}

export class HarnessFs implements Filesystem {
  readonly nameMax?: number;
  private readonly faults = new Faults();
  private readonly handles = new Map<number, Handle>();
  private nextHandle = 1;
  private lines: string[] = [];
  private lastError = '';
  private readonly timer: NodeJS.Timeout;
  private readonly traceFile: string;
  private readonly model: Durability;
  private crashed = false;

  constructor(private readonly u: Union, stateDir: string, dirs: HarnessDirs) {
    this.nameMax = u.nameMax;
    this.traceFile = path.join(stateDir, 'trace.jsonl');
    const d = durableCopy(stateDir, dirs);
    const model = modelOf(stateDir);
    this.model = new Durability(u, dirs.durable(d.upper, d.work), model, path.join(stateDir, `spill-${path.basename(dirs.upper)}`), d.upper);
    this.timer = setInterval(() => this.flushTrace(), FLUSH_MS);
    this.timer.unref();
    this.record({ mark: 'mount', model });
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
  private run<T>(op: string, paths: string[], caller: Caller | null, fn: (act: Action | null) => MaybeAsync<T>, args?: object,
    io?: { off: number; len: number }): MaybeAsync<T> {
    const t0 = performance.now();
    const act = this.crashed ? null : this.faults.active ? this.faults.decide(op, paths, io) : null;
    const done = (result: string, bytes?: number): void => {
      // one line per operation, built by hand (JSON.stringify of an object per call cost ~10% of the daemon)
      const q = JSON.stringify;
      let l = `{"t":${Date.now()}${caller ? `,"pid":${caller.pid}` : ''},"op":"${op}","path":${q(paths[0])}`;
      if (paths[1]) l += `,"path2":${q(paths[1])}`;
      if (args) l += `,"args":${q(args)}`;
      if (bytes !== undefined) l += `,"bytes":${bytes}`;
      l += `,"result":"${result}","ms":${Math.round((performance.now() - t0) * 1000) / 1000}${act ? `,"fault":${act.rule}` : ''}}`;
      this.lines.push(l);
      if (this.lines.length >= 4096 || act?.crash) this.flushTrace();   // the crashing call is on disk before its caller hears
    };
    const call = (): MaybeAsync<T> => {
      // the power is gone: nothing answers until the harness remounts
      if (this.crashed) throw new FsError(E.EIO);
      if (act?.crash) {
        if (act.crash === 'after') {
          try {
            void fn(act);
          } catch { /* its result is never seen */ }
        }
        this.crash(act.crashOpts ?? {}, `rule ${act.rule}`);
        throw new FsError(E.EIO);
      }
      if (act?.errno !== undefined) throw new FsError(act.errno);
      try {
        return fn(act);
      } catch (e) {
        // Node's fs calls (the data path) throw their own errors: as the errno they carry
        const errno = (e as NodeJS.ErrnoException).errno;
        throw e instanceof FsError || typeof errno !== 'number' ? e : new FsError(-errno);
      }
    };
    const finish = (v: T): T => {
      done('ok', typeof v === 'number' && (op === 'write' || op === 'read') ? v : Buffer.isBuffer(v) && op === 'read' ? v.length : undefined);
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

  /** The power goes: the durable view is final (the harness then mounts it); every call fails. */
  private crash(o: CrashOpts, why: string): void {
    if (this.crashed) return;
    this.crashed = true;
    let kept = 0;
    try {
      kept = this.model.crash(o).kept;
    } finally {
      for (const h of this.handles.values()) native.close(h.fd);
      this.handles.clear();
      this.record({ mark: 'crash', by: why, kept, ...o });
      this.flushTrace();
    }
  }

  private status(): Buffer {
    return Buffer.from(JSON.stringify({ crashed: this.crashed, ...(this.crashed ? { model: this.model.model, errors: this.model.errors } : this.model.status()) }));
  }

  /** A model hook after a live change: its failure is the model's (kept in its errors), never the caller's. */
  private note(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.model.errors.push((e as Error).message);
    }
  }

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
        case 'sync':
          if (this.crashed) throw new Error('the harness crashed: recover it first');
          this.model.syncAll();
          break;
        case 'crash': {
          const { cmd: _c, ...opts } = cmd as Record<string, unknown>;
          const bad = Object.keys(opts).find((k) => !['keepLast', 'keepProb', 'torn', 'seed'].includes(k));
          if (bad) throw new Error(`unknown crash option '${bad}' (keepLast, keepProb, torn, seed)`);
          this.crash(checkCrashOpts(opts), 'command');
          break;
        }
        default: throw new Error(`unknown command '${String(cmd.cmd)}' (inject, clear, mark, flush, sync, crash)`);
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
    if (!this.crashed) this.record({ mark: 'unmount' });   // (a crashed mount ends long after its successor began)
    this.flushTrace();
    for (const h of this.handles.values()) native.close(h.fd);
    this.handles.clear();
    if (!this.crashed) this.model.close();
    this.u.close();
  }

  lookup(parent: number, name: string, caller: Caller): MaybeAsync<Entry | null> {
    return this.run('lookup', [this.where(parent, name)], caller, () => this.u.lookup(parent, name));
  }
  forget(nodeid: number, nlookup: number): void { this.u.forget(nodeid, nlookup); }
  renode(nodeid: number): void { this.u.renode(nodeid); }

  getattr(nodeid: number, _fh: number): MaybeAsync<AttrReply> {
    // the root answers after a crash: the control xattrs are read through it
    if (this.crashed && nodeid === ROOT_ID) return this.u.getattr(nodeid);
    return this.run('getattr', [this.where(nodeid)], null, () => {
      try {
        return this.u.getattr(nodeid);
      } catch (e) {
        // an unlinked file still open through a JS handle: its fd knows it
        const h = this.handleOf(nodeid);
        const st = newStat();
        if (!h || native.fstatat(h.fd, '', AT_EMPTY_PATH, st) < 0) throw e;
        st[ST_INO] = h.ino;
        return { attr: st };
      }
    });
  }
  setattr(nodeid: number, set: SetAttr, caller: Caller): MaybeAsync<AttrReply> {
    return this.run('setattr', [this.where(nodeid)], caller, () => {
      const o = this.model.obj(nodeid);
      const sized = (set.valid & SETATTR.SIZE) !== 0;
      // the model keeps its own open of the file: a handle's fd (set.fh is the kernel's, not a
      // JS handle: any handle of the node will do), or one opened here for the call
      let own = -1;
      try {
        if (sized) this.note(() => this.model.beforeResize(o, set.size, () => this.handleOf(nodeid)?.fd ?? (own = this.u.open(nodeid, O_RDONLY).fd ?? -1)));
        const r = this.u.setattr(nodeid, set);
        this.note(() => {
          if (sized) this.model.resized(o, set.size);
          if (set.valid & ~SETATTR.SIZE) this.model.changed(o, r.attr);
        });
        return r;
      } finally {
        if (own >= 0) native.close(own);
      }
    }, { valid: set.valid, size: set.size, mode: set.mode });
  }

  private handleOf(nodeid: number): Handle | undefined {
    for (const h of this.handles.values()) if (h.nodeid === nodeid) return h;
    return undefined;
  }

  readlink(nodeid: number): MaybeAsync<string> { return this.run('readlink', [this.where(nodeid)], null, () => this.u.readlink(nodeid)); }

  /** A create-like call: the union makes it, the model notes the new name. */
  private made(op: string, parent: number, name: string, caller: Caller, make: () => Entry, args: object, target?: string): MaybeAsync<Entry> {
    return this.run(op, [this.where(parent, name)], caller, () => {
      const p = this.model.obj(parent);
      const e = make();
      this.note(() => this.model.created(p, name, e.attr, target));
      return e;
    }, args);
  }
  mknod(parent: number, name: string, mode: number, rdev: number, caller: Caller): MaybeAsync<Entry> {
    return this.made('mknod', parent, name, caller, () => this.u.mknod(parent, name, mode, rdev, caller), { mode });
  }
  mkdir(parent: number, name: string, mode: number, caller: Caller): MaybeAsync<Entry> {
    return this.made('mkdir', parent, name, caller, () => this.u.mkdir(parent, name, mode, caller), { mode });
  }
  symlink(target: string, parent: number, name: string, caller: Caller): MaybeAsync<Entry> {
    return this.made('symlink', parent, name, caller, () => this.u.symlink(target, parent, name, caller), { target }, target);
  }
  unlink(parent: number, name: string, caller: Caller): MaybeAsync<void> {
    return this.run('unlink', [this.where(parent, name)], caller, () => this.removeName(parent, name, () => this.u.unlink(parent, name)));
  }
  rmdir(parent: number, name: string, caller: Caller): MaybeAsync<void> {
    return this.run('rmdir', [this.where(parent, name)], caller, () => this.removeName(parent, name, () => this.u.rmdir(parent, name)));
  }
  private removeName(parent: number, name: string, remove: () => void): void {
    const p = this.model.obj(parent), o = this.model.objAt(parent, name);
    remove();
    if (o) this.note(() => this.model.removed(p, name, o));
  }
  rename(parent: number, name: string, newparent: number, newname: string, flags: number, caller: Caller): MaybeAsync<void> {
    return this.run('rename', [this.where(parent, name), this.where(newparent, newname)], caller, () => {
      const p = this.model.obj(parent), q = this.model.obj(newparent);
      const o = this.model.objAt(parent, name), replaced = this.model.objAt(newparent, newname);
      this.u.rename(parent, name, newparent, newname, flags);
      if (o) this.note(() => this.model.renamed(p, name, q, newname, o, replaced, flags));
    }, flags ? { flags } : undefined);
  }
  link(nodeid: number, newparent: number, newname: string, caller: Caller): MaybeAsync<Entry> {
    return this.run('link', [this.where(nodeid), this.where(newparent, newname)], caller, () => {
      const o = this.model.obj(nodeid), q = this.model.obj(newparent);
      const e = this.u.link(nodeid, newparent, newname, caller);
      this.note(() => this.model.added(q, newname, o));
      return e;
    });
  }

  /** The union's open fd, kept as a JS handle served direct. */
  private handle(o: Opened, nodeid: number, p: string, ino: number, opener: Caller, flags: number, obj: Obj | null): Opened {
    if (o.fd === undefined) return o;
    const h = this.nextHandle++;
    this.handles.set(h, { fd: o.fd, nodeid, path: p, ino, opener, obj, sync: (flags & O_DSYNC) !== 0 });
    return { jsHandle: h, directIo: true };
  }

  open(nodeid: number, flags: number, caller: Caller): MaybeAsync<Opened> {
    const p = this.where(nodeid);
    return this.run('open', [p], caller, () => {
      const obj = this.model.obj(nodeid);
      const trunc = (flags & O_TRUNC) !== 0 && (flags & O_ACCMODE) !== O_RDONLY;
      if (trunc) this.note(() => this.model.beforeResize(obj, 0, () => -1));   // (only pending writes have bytes to keep)
      const o = this.u.open(nodeid, flags) as Opened;
      if (trunc) this.note(() => this.model.resized(obj, 0, o.fd ?? -1));
      return this.handle(o, nodeid, p, this.u.inoOf(nodeid), caller, flags, obj);
    }, { flags });
  }
  create(parent: number, name: string, mode: number, flags: number, caller: Caller): MaybeAsync<{ entry: Entry; opened: Opened }> {
    const p = this.where(parent, name);
    return this.run('create', [p], caller, () => {
      const po = this.model.obj(parent);
      const r = this.u.create(parent, name, mode, flags, caller);
      let obj: Obj | null = null;
      this.note(() => {
        obj = this.model.created(po, name, r.entry.attr);
      });
      return { entry: r.entry, opened: this.handle(r.opened, r.entry.nodeid, p, r.entry.attr[ST_INO], caller, flags, obj) };
    }, { mode, flags });
  }
  opendir(nodeid: number, _flags: number, caller: Caller): MaybeAsync<DirOpened> { return this.run('opendir', [this.where(nodeid)], caller, () => this.u.opendir(nodeid)); }
  readdir(nodeid: number, caller: Caller): MaybeAsync<DirList> { return this.run('readdir', [this.where(nodeid)], caller, () => this.u.readdir(nodeid)); }
  fsyncdir(nodeid: number, _datasync: boolean): MaybeAsync<void> {
    return this.run('fsyncdir', [this.where(nodeid)], null, () => {
      const d = this.model.obj(nodeid);
      this.note(() => this.model.fsyncDir(d));
    });
  }
  statfs(nodeid: number): MaybeAsync<Float64Array> { return this.run('statfs', [this.where(nodeid)], null, () => this.u.statfs()); }

  setxattr(nodeid: number, name: string, value: Buffer, flags: number, caller: Caller): MaybeAsync<void> {
    if (nodeid === ROOT_ID && name === `${CTL_PREFIX}ctl`) return this.control(value, caller);
    return this.run('setxattr', [this.where(nodeid)], caller, () => {
      const o = this.model.obj(nodeid);
      this.u.setxattr(nodeid, name, value, flags, caller);
      this.note(() => this.model.xattr(o, name, value));
    }, { name });
  }
  getxattr(nodeid: number, name: string, caller: Caller): MaybeAsync<Buffer> {
    if (nodeid === ROOT_ID && name === `${CTL_PREFIX}rules`) return Buffer.from(JSON.stringify(this.faults.list()));
    if (nodeid === ROOT_ID && name === `${CTL_PREFIX}error`) return Buffer.from(this.lastError);
    if (nodeid === ROOT_ID && name === `${CTL_PREFIX}status`) return this.status();
    return this.run('getxattr', [this.where(nodeid)], caller, () => this.u.getxattr(nodeid, name), { name });
  }
  listxattr(nodeid: number, caller: Caller): MaybeAsync<string[]> { return this.run('listxattr', [this.where(nodeid)], caller, () => this.u.listxattr(nodeid)); }
  removexattr(nodeid: number, name: string, caller: Caller): MaybeAsync<void> {
    return this.run('removexattr', [this.where(nodeid)], caller, () => {
      const o = this.model.obj(nodeid);
      this.u.removexattr(nodeid, name);
      this.note(() => this.model.xattr(o, name, null));
    }, { name });
  }

  private h(handle: number): Handle {
    const h = this.handles.get(handle);
    if (!h) throw new FsError(this.crashed ? E.EIO : E.EBADF);
    return h;
  }

  read(handle: number, size: number, offset: number): MaybeAsync<Buffer> {
    const h = this.h(handle);
    return this.run('read', [h.path], h.opener, () => {
      const b = Buffer.allocUnsafe(size);
      return b.subarray(0, fs.readSync(h.fd, b, 0, size, offset));
    }, { offset, size }, { off: offset, len: size });
  }
  write(handle: number, data: Buffer, offset: number): MaybeAsync<number> {
    const h = this.h(handle);
    return this.run('write', [h.path], h.opener, (act) => {
      // ENOSPC after N bytes: the write that reaches the limit writes what fits
      const len = act?.short !== undefined ? act.short : data.length;
      const o = h.obj;
      if (o) this.note(() => this.model.beforeWrite(o, offset, len, h.fd));
      const n = fs.writeSync(h.fd, data, 0, len, offset);
      if (o && n > 0) {
        this.note(() => {
          this.model.wrote(o, offset, n);
          if (h.sync) this.model.fsyncFile(o);
        });
      }
      return n;
    }, { offset, size: data.length }, { off: offset, len: data.length });
  }
  flush(handle: number): MaybeAsync<void> {
    const h = this.h(handle);
    return this.run('flush', [h.path], h.opener, () => undefined);
  }
  fsync(handle: number, datasync: boolean): MaybeAsync<void> {
    const h = this.h(handle);
    // what an fsync promises is the durable view's (durable.ts); the live upper, a throwaway
    // copy, is not flushed to the host's disk
    return this.run('fsync', [h.path], h.opener, () => {
      const o = h.obj;
      if (o) this.note(() => this.model.fsyncFile(o));
    }, datasync ? { datasync } : undefined);
  }
  release(handle: number): MaybeAsync<void> {
    const h = this.handles.get(handle);
    if (!h) return;
    this.handles.delete(handle);
    return this.run('release', [h.path], h.opener, () => {
      native.close(h.fd);
      const o = h.obj;
      if (o) this.note(() => this.model.closed(o));
    });
  }
  fallocate(handle: number, mode: number, offset: number, length: number): MaybeAsync<void> {
    const h = this.h(handle);
    return this.run('fallocate', [h.path], h.opener, () => {
      if (mode !== 0) throw new FsError(E.EOPNOTSUPP);
      const st = newStat();
      if (native.fstatat(h.fd, '', AT_EMPTY_PATH, st) === 0 && st[ST_SIZE] < offset + length) {
        fs.ftruncateSync(h.fd, offset + length);
        const o = h.obj;
        if (o) this.note(() => this.model.resized(o, offset + length, h.fd));
      }
    }, { mode, offset, length });
  }
}
