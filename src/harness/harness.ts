// Harness mode: a throwaway copy-on-write view of a fixture. BASE is the only lower of an overlay
// mount (never modified); the upper and work dirs live in a state dir of the harness (its path is
// the mount's source, `harness:STATE`, so every later command finds it from MNT). reset: the
// mount ends, the upper is renamed away (removed in the background) and a fresh one mounted —
// O(1) whatever the upper holds; checkpoint/restore copy the upper (with its work dir: copied-up
// hard links live in its index); diff walks the upper against BASE or a checkpoint; commit writes
// the changes as an image-layer tar or an upper; crash/recover mount the durable view's upper
// (durable.ts) in a new generation.
import { spawn, spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UsageError, mountPoints, mountTable } from '../mount/validate';
import { unmount } from '../mount/unmount';
import { diffBetween, diffUpper, type Change } from './diff';
import { packUpper } from '../layer/pack';
import { native } from '../sys/native';
import { errnoName } from '../sys/errors';
import { CTL_PREFIX } from './fs';
import { MODELS, type Model } from './durable';
import type { CrashOpts } from './writes';
import { globRegExp, type Rule, type RuleState } from './faults';
import { copyTree } from './copy';
import { HELPER, serviceWanted } from '../service/client';

/** One traced operation (or a mark). */
export interface TraceLine { t: number; pid?: number; op?: string; path?: string; path2?: string; result?: string; ms?: number; mark?: string; fault?: number; args?: object; bytes?: number }

const SOURCE = 'harness:';
const CHECKPOINT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

interface Meta { base: string; mnt: string; gen: number; model?: Model }

/** What the daemon says of the durability model (user.harness.status). */
export interface HarnessStatus { crashed: boolean; model: Model; pendingChanges?: number; writes?: number; bytes?: number; inMemory?: number; spilled?: number; errors?: string[] }

/** The layerfs CLI beside this module (dist/src/harness -> dist/src/cli; from src, the build's). */
function cliPath(): string {
  const own = path.join(__dirname, '../cli/layerfs.js');
  return fs.existsSync(own) ? own : path.resolve(__dirname, '../../dist/src/cli/layerfs.js');
}

function within(inner: string, outer: string): boolean {
  return inner === outer || inner.startsWith(outer.endsWith('/') ? outer : `${outer}/`);
}

/** The dir a path names, resolved (symlinks of the caller's own paths followed, as mount does). */
function realDir(p: string, what: string): string {
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch {
    throw new UsageError(`${what} ${p} does not exist`);
  }
  if (!st.isDirectory()) throw new UsageError(`${what} ${p} is not a directory`);
  return fs.realpathSync(p);
}

function defaultState(mnt: string): string {
  const uid = process.geteuid?.() ?? 0;
  const root = uid === 0 ? '/var/tmp/layerfs-harness' : `/var/tmp/layerfs-harness-${uid}`;
  return path.join(root, crypto.createHash('sha1').update(mnt).digest('hex').slice(0, 16));
}

export class HarnessState {
  private constructor(readonly dir: string, private meta: Meta) {}

  get base(): string { return this.meta.base; }
  get mnt(): string { return this.meta.mnt; }
  get upper(): string { return path.join(this.dir, `upper-${this.meta.gen}`); }
  get work(): string { return path.join(this.dir, `work-${this.meta.gen}`); }

  private save(): void {
    fs.writeFileSync(path.join(this.dir, 'meta.json.tmp'), JSON.stringify(this.meta));
    fs.renameSync(path.join(this.dir, 'meta.json.tmp'), path.join(this.dir, 'meta.json'));
  }

  /** A new harness: checks every path first (nothing is made before), then mounts. */
  static create(baseIn: string, mntIn: string, stateIn: string | null, model: Model = 'posix'): HarnessState {
    if (!MODELS.includes(model)) throw new UsageError(`unknown durability model '${String(model)}' (${MODELS.join(', ')})`);
    const base = realDir(baseIn, 'base');
    const mnt = realDir(mntIn, 'mountpoint');
    if (within(mnt, base)) throw new UsageError(`mountpoint ${mnt} is inside base ${base}`);
    if (within(base, mnt)) throw new UsageError(`base ${base} is inside mountpoint ${mnt}`);
    if (mountPoints().has(mnt)) throw new UsageError(`${mnt} is already a mountpoint`);
    const dir = path.resolve(stateIn ?? defaultState(mnt));
    if (within(dir, base) || within(base, dir)) throw new UsageError(`state dir ${dir} and base ${base} must not contain each other`);
    if (within(dir, mnt)) throw new UsageError(`state dir ${dir} is inside mountpoint ${mnt}`);
    if (fs.existsSync(dir) && fs.readdirSync(dir).length) throw new UsageError(`state dir ${dir} is not empty (another harness, or left by one: remove it)`);
    if (dir.includes(',') || dir.includes(':') || base.includes(',') || base.includes(':')) throw new UsageError('paths with , or : cannot be mount options');
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const h = new HarnessState(dir, { base, mnt, gen: 1, model });
    fs.mkdirSync(h.upper);
    fs.mkdirSync(h.work);
    h.save();
    try {
      h.mount();
    } catch (e) {
      fs.rmSync(dir, { recursive: true, force: true });
      throw e;
    }
    return h;
  }

  /** The harness mounted at mnt (its state dir is the mount's source). */
  static of(mntIn: string): HarnessState {
    const mnt = path.resolve(mntIn);
    const src = mountTable().get(mnt);
    if (src === undefined) throw new UsageError(`${mnt} is not mounted`);
    if (!src.startsWith(SOURCE)) throw new UsageError(`${mnt} is not a layerfs harness mount`);
    const dir = src.slice(SOURCE.length);
    let meta: Meta;
    try {
      meta = JSON.parse(fs.readFileSync(path.join(dir, 'meta.json'), 'utf8')) as Meta;
    } catch {
      throw new UsageError(`the state of harness ${mnt} (${dir}) is unreadable`);
    }
    return new HarnessState(dir, meta);
  }

  private mount(): void {
    const opts = `lowerdir=${this.base},upperdir=${this.upper},workdir=${this.work},fsname=${SOURCE}${this.dir},harness`;
    // through the C helper straight to the resident service (no Node start: a reset costs ms)
    const viaC = serviceWanted() && fs.existsSync(HELPER);
    const r = viaC ? spawnSync(HELPER, ['mount', '-o', opts, this.mnt], { encoding: 'utf8', argv0: 'layerfs' })
      : spawnSync(process.execPath, [cliPath(), 'mount', '-o', opts, this.mnt], { encoding: 'utf8' });
    if (r.status !== 0) throw new UsageError((r.stderr || r.error?.message || 'mount failed').trim().split('\n')[0].replace(/^layerfs: /, ''));
  }

  /** Back to BASE: the upper goes whatever it holds (renamed now, removed in the background). */
  reset(): void {
    this.swap(() => {
      fs.mkdirSync(this.upper);
      fs.mkdirSync(this.work);
    });
  }

  get model(): Model { return this.meta.model ?? 'posix'; }

  /** The durability model's state in the daemon. */
  status(): HarnessStatus {
    const v = native.getxattr(this.mnt, `${CTL_PREFIX}status`, 1);
    if (typeof v === 'number') throw new UsageError(`${this.mnt}: ${errnoName(-v)}`);
    return JSON.parse(v.toString('utf8')) as HarnessStatus;
  }

  /** Everything written so far made durable (sync(2) and syncfs(2) never reach a FUSE daemon). */
  syncAll(): void { this.command({ cmd: 'sync' }); }

  /** Power loss: the daemon keeps the durable view (and what opts keep of the unsynced writes),
   * every call on the mount fails with EIO; then the mount is made anew from that view. */
  crash(opts: CrashOpts = {}): void {
    if (!this.status().crashed) this.command({ cmd: 'crash', ...opts });
    this.recover();
  }

  /** After a crash (a command's or a rule's): the old mount is detached (its open files stay
   * EIO), the durable view's upper becomes the mount's. */
  recover(): void {
    if (!this.status().crashed) throw new UsageError(`${this.mnt} has not crashed (harness ctl ${this.mnt} crash)`);
    const durable = path.join(this.dir, `recovered-${this.meta.gen}`);
    fs.renameSync(path.join(this.dir, `durable-${this.meta.gen}`), durable);
    const up = path.join(durable, path.basename(this.upper)), wk = path.join(durable, path.basename(this.work));
    this.swap(() => {
      fs.renameSync(up, this.upper);
      fs.renameSync(wk, this.work);
      fs.rmdirSync(durable);
    }, true);
  }

  /** Ends the mount, moves the current upper/work aside, makes the next generation, mounts. */
  private swap(make: () => void, lazy = false): void {
    unmount(this.mnt, lazy);   // (what the old upper holds is dropped: nothing to flush first)
    const trash = path.join(this.dir, `trash-${this.meta.gen}-${Date.now()}`);
    fs.mkdirSync(trash);
    fs.renameSync(this.upper, path.join(trash, 'upper'));
    fs.renameSync(this.work, path.join(trash, 'work'));
    // the durable view of that mount (what a crash left moved out first) and its spill file
    for (const n of [`durable-${this.meta.gen}`, `spill-upper-${this.meta.gen}`]) {
      if (fs.existsSync(path.join(this.dir, n))) fs.renameSync(path.join(this.dir, n), path.join(trash, n));
    }
    this.meta.gen++;
    try {
      make();
    } finally {
      this.save();
      this.mount();
      removeLater(trash);
    }
  }

  /** The mount's changes reach the upper (a writeback cache may hold them). */
  private sync(): void {
    spawnSync('sync', ['-f', this.mnt]);
  }

  checkpoint(name: string): void {
    if (!CHECKPOINT_NAME.test(name)) throw new UsageError(`bad checkpoint name '${name}' (letters, digits, . _ -)`);
    const to = path.join(this.dir, 'checkpoints', name);
    if (fs.existsSync(to)) throw new UsageError(`checkpoint ${name} exists`);
    this.sync();
    fs.mkdirSync(path.join(this.dir, 'checkpoints'), { recursive: true });
    const tmp = `${to}.tmp`;
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.mkdirSync(tmp);
    // one cp for both dirs: hard links between the upper and the index stay links
    copyTree([this.upper, this.work], tmp);
    fs.renameSync(tmp, to);
  }

  restore(name: string): void {
    const from = path.join(this.dir, 'checkpoints', name);
    if (!CHECKPOINT_NAME.test(name) || !fs.existsSync(from)) throw new UsageError(`no checkpoint ${name} (${this.checkpoints().join(', ') || 'none made'})`);
    const saved = fs.readdirSync(from);
    const up = saved.find((n) => n.startsWith('upper-')), wk = saved.find((n) => n.startsWith('work-'));
    if (!up || !wk) throw new UsageError(`checkpoint ${name} is incomplete`);
    this.swap(() => {
      const tmp = path.join(this.dir, `restore-${Date.now()}`);
      fs.mkdirSync(tmp);
      copyTree([path.join(from, up), path.join(from, wk)], tmp);
      fs.renameSync(path.join(tmp, up), this.upper);
      fs.renameSync(path.join(tmp, wk), this.work);
      fs.rmdirSync(tmp);
    });
  }

  checkpoints(): string[] {
    try {
      return fs.readdirSync(path.join(this.dir, 'checkpoints')).filter((n) => !n.endsWith('.tmp')).sort();
    } catch {
      return [];
    }
  }

  /** What changed since BASE, or since checkpoint `since`. */
  diff(since?: string): Change[] {
    this.sync();
    if (since === undefined) return diffUpper(this.upper, this.base);
    const cp = path.join(this.dir, 'checkpoints', since);
    const up = CHECKPOINT_NAME.test(since) && fs.existsSync(cp) ? fs.readdirSync(cp).find((n) => n.startsWith('upper-')) : undefined;
    if (!up) throw new UsageError(`no checkpoint ${since} (${this.checkpoints().join(', ') || 'none made'})`);
    return diffBetween(path.join(cp, up), this.upper, this.base);
  }

  /** The changes as an overlay upper dir (whiteouts and opaque dirs in the mount's format) at dir, which must not exist. */
  commitUpper(dirIn: string): void {
    const dir = path.resolve(dirIn);
    if (fs.existsSync(dir)) throw new UsageError(`${dir} exists (commit makes a new upper dir)`);
    this.sync();
    const tmp = `${dir}.tmp-${process.pid}`;
    fs.mkdirSync(tmp, { mode: 0o755 });
    try {
      copyTree([`${this.upper}/.`], tmp);
      fs.renameSync(tmp, dir);
    } catch (e) {
      fs.rmSync(tmp, { recursive: true, force: true });
      throw e;
    }
  }

  /** The changes as an image-layer tar (`.wh.` whiteouts), to fd. */
  commitTar(fd: number): void {
    this.sync();
    packUpper(this.upper, [this.base], fd);
  }

  /** A command to the mount's daemon (user.harness.ctl on its root): applied when this returns. */
  command(cmd: object): void {
    const r = native.setxattr(this.mnt, `${CTL_PREFIX}ctl`, Buffer.from(JSON.stringify(cmd)), 0, 1);
    if (r < 0) {
      const why = native.getxattr(this.mnt, `${CTL_PREFIX}error`, 1);
      throw new UsageError(typeof why !== 'number' && why.length ? why.toString('utf8') : `${this.mnt}: ${errnoName(-r)}`);
    }
  }

  inject(rule: Rule): void { this.command({ cmd: 'inject', rule }); }
  clearFaults(): void { this.command({ cmd: 'clear' }); }
  mark(name: string): void { this.command({ cmd: 'mark', name }); }

  rules(): RuleState[] {
    const v = native.getxattr(this.mnt, `${CTL_PREFIX}rules`, 1);
    if (typeof v === 'number') throw new UsageError(`${this.mnt}: ${errnoName(-v)}`);
    return JSON.parse(v.toString('utf8')) as RuleState[];
  }

  /** The trace, from the mount (or from the last mark `since`), filtered by op and path glob. */
  trace(f: { since?: string; op?: string; path?: string } = {}): TraceLine[] {
    this.command({ cmd: 'flush' });
    let lines: TraceLine[] = [];
    try {
      lines = fs.readFileSync(path.join(this.dir, 'trace.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as TraceLine);
    } catch { /* no trace yet */ }
    if (f.since !== undefined) {
      const at = lines.map((l) => l.mark).lastIndexOf(f.since);
      if (at < 0) throw new UsageError(`no mark ${f.since} in the trace`);
      lines = lines.slice(at + 1);
    }
    const re = f.path ? globRegExp(f.path) : null;
    return lines.filter((l) => l.op !== undefined && (!f.op || l.op === f.op) && (!re || re.test(l.path ?? '') || re.test(l.path2 ?? '')));
  }

  /** Ends the harness: the mount, then its state. */
  destroy(): void {
    let crashed = false;
    try {
      crashed = this.status().crashed;
    } catch { /* a dead mount: unmounted below */ }
    unmount(this.mnt, crashed);
    const trash = `${this.dir}.trash-${Date.now()}`;
    fs.renameSync(this.dir, trash);
    removeLater(trash);
  }
}

/** rm -rf in a detached child: the caller does not wait for a big upper to go. */
function removeLater(p: string): void {
  const c = spawn('rm', ['-rf', '--one-file-system', p], { detached: true, stdio: 'ignore' });
  c.unref();
}
