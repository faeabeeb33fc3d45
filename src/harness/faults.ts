// Fault rules of a harness mount: which calls fail (errno) or wait (latency). A rule matches an
// operation name (or '*') and a path glob (`*` within a name, `**` across dirs, `?` one char);
// of the matching calls it acts on the Nth (default: the first) and the `count` after it (0: every
// one from then on), each with probability `prob` drawn from a generator seeded by `seed`, so a
// run is reproducible.
import { E } from '../sys/constants';
import { mulberry32 } from '../sys/random';
import type { CrashOpts } from './writes';

export interface Rule {
  op: string;          // lookup, open, read, write, fsync, create, mkdir, unlink, rename, ... or *
  path: string;        // glob of the union path ("/" first)
  errno?: string;      // EIO, ENOSPC, ...: the call fails with it
  delayMs?: number;    // the call waits this long (then runs, or fails with errno)
  nth?: number;        // the first matching call acted on (1 = the first)
  count?: number;      // how many calls from the nth on (0 = all)
  prob?: number;       // each of those acts with this probability (0..1, default 1)
  seed?: number;
  crash?: 'before' | 'after';  // the power goes at that call (before or after it runs): see durable.ts
  keepLast?: number;           // that crash keeps the N most recent unsynced writes (writes.ts)
  keepProb?: number;           // or each with this probability
  torn?: 'sector' | 'page';    // in parts of 512 bytes or 4 KiB
  afterBytes?: number;         // (write) calls pass until this many bytes went through; then a short write, then errno
  range?: [number, number];    // (read, write) only calls touching bytes [start, end) of the file match
}

export interface RuleState extends Rule { seen: number; fired: number }

export const OPS = ['lookup', 'getattr', 'setattr', 'readlink', 'mknod', 'mkdir', 'unlink', 'rmdir', 'symlink', 'rename', 'link',
  'open', 'create', 'opendir', 'readdir', 'read', 'write', 'flush', 'fsync', 'fsyncdir', 'release', 'statfs',
  'setxattr', 'getxattr', 'listxattr', 'removexattr', 'fallocate'];

const ERRNOS = E as unknown as Record<string, number>;

export function errnoOf(name: string): number | undefined {
  return /^E[A-Z0-9]+$/.test(name) ? ERRNOS[name] : undefined;
}

/** A rule from its JSON form: every field checked, one message for what is wrong. */
export function checkRule(x: unknown): Rule {
  if (!x || typeof x !== 'object') throw new Error('a rule is a JSON object');
  const r = x as Record<string, unknown>;
  const known = ['op', 'path', 'errno', 'delayMs', 'nth', 'count', 'prob', 'seed', 'crash', 'keepLast', 'keepProb', 'torn', 'afterBytes', 'range'];
  for (const k of Object.keys(r)) if (!known.includes(k)) throw new Error(`unknown rule field '${k}' (${known.join(', ')})`);
  const op = r.op ?? '*', path = r.path ?? '/**';
  if (typeof op !== 'string' || (op !== '*' && !OPS.includes(op))) throw new Error(`unknown operation '${String(op)}' (${OPS.join(', ')}, *)`);
  if (typeof path !== 'string' || !path.startsWith('/')) throw new Error(`bad path glob '${String(path)}' (absolute in the mount: /dir/*.db, /**)`);
  if (r.errno !== undefined && (typeof r.errno !== 'string' || errnoOf(r.errno) === undefined)) throw new Error(`unknown errno '${String(r.errno)}'`);
  const num = (k: string, min: number, max = Infinity, int = true): number | undefined => {
    const v = r[k];
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max || (int && !Number.isInteger(v))) {
      throw new Error(`bad ${k}: ${String(v)} (${int ? 'an integer' : 'a number'} from ${min}${max < Infinity ? ` to ${max}` : ''})`);
    }
    return v;
  };
  const rule: Rule = { op, path, errno: r.errno as string | undefined, delayMs: num('delayMs', 0, 600_000), nth: num('nth', 1),
    count: num('count', 0), prob: num('prob', 0, 1, false), seed: num('seed', 0) };
  if (r.crash !== undefined) {
    if (r.crash !== 'before' && r.crash !== 'after') throw new Error(`bad crash: ${String(r.crash)} (before, after)`);
    rule.crash = r.crash;
    Object.assign(rule, checkCrashOpts(r));
  } else if (['keepLast', 'keepProb', 'torn'].some((k) => r[k] !== undefined)) throw new Error('keepLast, keepProb and torn go with crash');
  if (r.afterBytes !== undefined) {
    if (op !== 'write' && op !== '*') throw new Error('afterBytes is for write calls');
    rule.afterBytes = num('afterBytes', 0);
    rule.errno ??= 'ENOSPC';
  }
  if (r.range !== undefined) {
    const g = r.range;
    if (!Array.isArray(g) || g.length !== 2 || !g.every((x) => Number.isInteger(x) && x >= 0) || g[0] >= g[1]) throw new Error('bad range (two byte offsets [start, end), start < end)');
    if (!['read', 'write', '*'].includes(op)) throw new Error('range is for read and write calls');
    rule.range = [g[0], g[1]];
  }
  if (rule.errno === undefined && rule.delayMs === undefined && !rule.crash) throw new Error('a rule needs errno, delayMs or crash');
  return rule;
}

/** The crash options of a rule or a crash command, checked. */
export function checkCrashOpts(r: Record<string, unknown>): CrashOpts {
  const o: CrashOpts = {};
  if (r.keepLast !== undefined) {
    if (!Number.isInteger(r.keepLast) || (r.keepLast as number) < 0) throw new Error(`bad keepLast: ${String(r.keepLast)} (a count of writes)`);
    o.keepLast = r.keepLast as number;
  }
  if (r.keepProb !== undefined) {
    if (typeof r.keepProb !== 'number' || r.keepProb < 0 || r.keepProb > 1) throw new Error(`bad keepProb: ${String(r.keepProb)} (0..1)`);
    o.keepProb = r.keepProb;
  }
  if (o.keepLast !== undefined && o.keepProb !== undefined) throw new Error('keepLast or keepProb, not both');
  if (r.torn !== undefined) {
    if (r.torn !== 'sector' && r.torn !== 'page') throw new Error(`bad torn: ${String(r.torn)} (sector, page)`);
    o.torn = r.torn;
  }
  if (r.seed !== undefined) {
    if (!Number.isInteger(r.seed) || (r.seed as number) < 0) throw new Error(`bad seed: ${String(r.seed)}`);
    o.seed = r.seed as number;
  }
  return o;
}

export function globRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === '*' && glob[i + 1] === '*') {
      re += '.*';
      i++;
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

/** What to do to one call: nothing, or wait and/or fail, or pass part of a write, or crash. */
export interface Action { errno?: number; delayMs?: number; rule: number; short?: number; crash?: 'before' | 'after'; crashOpts?: CrashOpts }

export class Faults {
  private rules: { r: RuleState; re: RegExp; rnd: () => number; budget: number }[] = [];

  add(rule: Rule): number {
    this.rules.push({ r: { ...rule, seen: 0, fired: 0 }, re: globRegExp(rule.path), rnd: mulberry32(rule.seed ?? 1), budget: rule.afterBytes ?? 0 });
    return this.rules.length - 1;
  }

  clear(): void {
    this.rules = [];
  }

  list(): RuleState[] {
    return this.rules.map((x) => ({ ...x.r }));
  }

  get active(): boolean {
    return this.rules.length > 0;
  }

  /** The first rule that acts on this call (every matching rule counts it). */
  decide(op: string, paths: string[], io?: { off: number; len: number }): Action | null {
    let out: Action | null = null;
    this.rules.forEach((x, i) => {
      const r = x.r;
      if ((r.op !== '*' && r.op !== op) || !paths.some((p) => x.re.test(p))) return;
      if (r.range && (!io || io.off >= r.range[1] || io.off + io.len <= r.range[0])) return;
      if (r.afterBytes !== undefined && (op !== 'write' || !io)) return;
      r.seen++;
      const from = r.nth ?? 1;
      if (r.seen < from || (r.count && r.fired >= r.count)) return;
      if (r.prob !== undefined && x.rnd() >= r.prob) return;
      let short: number | undefined;
      if (r.afterBytes !== undefined) {
        // the space left passes; the call that would overrun it writes what fits (a short write)
        if (io!.len <= x.budget) {
          x.budget -= io!.len;
          return;
        }
        if (x.budget > 0) short = x.budget;
        x.budget = 0;
      }
      r.fired++;
      if (!out) {
        out = { errno: short === undefined && r.errno ? errnoOf(r.errno) : undefined, delayMs: r.delayMs, rule: i, short };
        if (r.crash) out.crash = r.crash, out.crashOpts = { keepLast: r.keepLast, keepProb: r.keepProb, torn: r.torn, seed: r.seed };
      }
    });
    return out;
  }
}
