// `layerfs harness BASE MNT [-o state=DIR,model=posix|ext4]`: a throwaway copy-on-write view of
// BASE at MNT. `layerfs harness ctl MNT VERB`: reset | diff [--json] | checkpoint NAME |
// restore NAME | checkpoints | commit FILE (an image-layer tar; - for stdout) | umount |
// inject OP GLOB ACTION [--nth N] [--count N] [--prob P] [--seed S] [--after-bytes N]
// [--range A-B] (ACTION: ERRNO, delay=MS, crash=before|after, joined by commas) | faults |
// clear | mark NAME | trace [--since MARK] [--op OP] [--path GLOB] (JSON lines) | sync |
// crash [--keep-last N | --keep-prob P] [--torn sector|page] [--seed S] | recover | status.
import { spawn, spawnSync } from 'node:child_process';
import * as path from 'node:path';
import type { Command } from 'commander';
import { UsageError } from '../mount/validate';
import { HarnessState } from './harness';
import type { Change } from './diff';
import { checkCrashOpts, checkRule, type Rule } from './faults';
import { MODELS, type Model } from './durable';
import { COMMANDS, execute, serve } from './protocol';

const VERBS = 'reset, diff, checkpoint NAME, restore NAME, checkpoints, commit FILE, umount, inject OP GLOB ACTION, faults, clear, mark NAME, trace, sync, crash, recover, status';

interface CtlFlags {
  socket?: string; upper?: boolean;
  json?: boolean; nth?: string; count?: string; prob?: string; seed?: string; since?: string; op?: string; path?: string;
  afterBytes?: string; range?: string; keepLast?: string; keepProb?: string; torn?: string;
}

function numFlag(v: string | undefined, k: string): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+(\.\d+)?$/.test(v)) throw new UsageError(`bad --${k}: ${v}`);
  return Number(v);
}

/** The crash options of the flags (checked again by the daemon). */
function crashOpts(f: CtlFlags): Record<string, unknown> {
  const o: Record<string, unknown> = { keepLast: numFlag(f.keepLast, 'keep-last'), keepProb: numFlag(f.keepProb, 'keep-prob'), torn: f.torn, seed: numFlag(f.seed, 'seed') };
  for (const k of Object.keys(o)) if (o[k] === undefined) delete o[k];
  try {
    return { ...checkCrashOpts(o) };
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/** inject OP GLOB ACTION and its flags, as a rule (checked by the daemon too). */
function ruleOf(args: string[], f: CtlFlags): Rule {
  const [op, glob, action] = args;
  const rule: Record<string, unknown> = { op, path: glob };
  for (const part of action.split(',')) {
    const m = /^delay=(\d+)$/.exec(part), c = /^crash=(.*)$/.exec(part);
    if (m) rule.delayMs = Number(m[1]);
    else if (c) rule.crash = c[1];
    else rule.errno = part;
  }
  const num = (v: string | undefined, k: string, flag = k): void => {
    const n = numFlag(v, flag);
    if (n !== undefined) rule[k] = n;
  };
  num(f.nth, 'nth'); num(f.count, 'count'); num(f.prob, 'prob'); num(f.seed, 'seed'); num(f.afterBytes, 'afterBytes', 'after-bytes');
  if (f.range !== undefined) {
    const g = /^(\d+)-(\d+)$/.exec(f.range);
    if (!g) throw new UsageError(`bad --range: ${f.range} (START-END, bytes)`);
    rule.range = [Number(g[1]), Number(g[2])];
  }
  if (rule.crash !== undefined) Object.assign(rule, crashOpts(f));
  try {
    return checkRule(rule);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

function harnessOptions(opts: string[]): { state: string | null; model: Model; socket: string | null } {
  let state: string | null = null, model: Model = 'posix', socket: string | null = null;
  for (const list of opts) {
    for (const item of list.split(',').filter(Boolean)) {
      const eq = item.indexOf('=');
      const k = eq < 0 ? item : item.slice(0, eq), v = item.slice(eq + 1);
      if (k === 'state' && eq > 0) state = v;
      else if (k === 'socket' && eq > 0) socket = v;
      else if (k === 'model' && eq > 0) {
        if (!MODELS.includes(v as Model)) throw new UsageError(`unknown durability model '${v}' (${MODELS.join(', ')})`);
        model = v as Model;
      } else throw new UsageError(`unknown harness option '${item}' (state=DIR, model=posix|ext4, socket=PATH)`);
    }
  }
  return { state, model, socket };
}

function printDiff(changes: Change[], json: boolean): void {
  if (json) {
    process.stdout.write(JSON.stringify(changes) + '\n');
    return;
  }
  process.stdout.write(changes.map((c) => `${c.kind}\t${c.size}\t${c.path}`).join('\n') + (changes.length ? '\n' : ''));
}

function ctl(mnt: string, verb: string | undefined, args: string[], f: CtlFlags): void {
  const json = !!f.json;
  const need = (n: number): void => {
    if (args.length !== n) throw new UsageError(`usage: layerfs harness ctl MNT ${verb}${n === 1 ? ' NAME' : n === 3 ? ' OP GLOB ACTION' : ''}`);
  };
  if (!verb) throw new UsageError(`usage: layerfs harness ctl MNT VERB (${VERBS})`);
  const out = (v: unknown): void => {
    process.stdout.write(`${JSON.stringify(v)}\n`);
  };
  // each verb is a command of the protocol (protocol.ts), as the socket and the API send it
  switch (verb) {
    case 'diff': need(0); printDiff(execute(mnt, { cmd: 'diff', ...(f.since ? { since: f.since } : {}) }) as Change[], json); return;
    case 'checkpoints': {
      need(0);
      const names = execute(mnt, { cmd: 'checkpoints' }) as string[];
      process.stdout.write(json ? `${JSON.stringify(names)}\n` : names.map((c) => `${c}\n`).join(''));
      return;
    }
    case 'commit': {
      need(1);
      if (args[0] !== '-' || f.upper) {
        execute(mnt, { cmd: 'commit', file: args[0], format: f.upper ? 'upper' : 'tar' });
        return;
      }
      HarnessState.of(mnt).commitTar(1);   // to stdout: the CLI's own
      return;
    }
    case 'checkpoint': case 'restore': case 'mark': need(1); execute(mnt, { cmd: verb, name: args[0] }); return;
    case 'inject': need(3); execute(mnt, { cmd: 'inject', rule: ruleOf(args, f) }); return;
    case 'crash': need(0); execute(mnt, { cmd: 'crash', ...crashOpts(f) }); return;
    case 'trace': {
      need(0);
      const lines = execute(mnt, { cmd: 'trace', ...(f.since ? { since: f.since } : {}), ...(f.op ? { op: f.op } : {}), ...(f.path ? { path: f.path } : {}) }) as object[];
      process.stdout.write(lines.map((l) => `${JSON.stringify(l)}\n`).join(''));
      return;
    }
    case 'faults': case 'status': need(0); out(execute(mnt, { cmd: verb })); return;
    default:
      if (!COMMANDS.includes(verb)) throw new UsageError(`unknown harness verb '${verb}' (${VERBS})`);
      need(0);
      execute(mnt, { cmd: verb });
  }
}

/** `harness serve MNT --socket PATH`, detached: returns once it listens. */
function startServer(mnt: string, socket: string): void {
  const c = spawn(process.execPath, [process.argv[1], 'harness', 'serve', mnt, '--socket', socket], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  const r = spawnSync('sh', ['-c', 'for i in $(seq 100); do [ -S "$1" ] && exit 0; sleep 0.05; done; exit 1', 'sh', socket]);
  c.stdout?.destroy();
  c.stderr?.destroy();
  c.unref();
  if (r.status !== 0) throw new UsageError(`the harness's socket ${socket} did not come up`);
}

export function registerHarness(program: Command, fail: (msg: string) => never): void {
  program.command('harness')
    .description(`a throwaway copy-on-write view of BASE at MNT; 'harness ctl MNT VERB': ${VERBS}`)
    .argument('<base>', "BASE (or 'ctl', or 'serve')")
    .argument('<mnt>')
    .argument('[args...]')
    .option('-o, --options <opts>', 'state=DIR (where the upper lives), model=posix|ext4 (what a crash keeps), socket=PATH (harness serve on it)', (v: string, p: string[]) => [...p, v], [] as string[])
    .option('--json', 'diff and checkpoints as JSON')
    .option('--nth <n>', 'inject: the first matching call acted on (1 = the first)')
    .option('--count <n>', 'inject: how many calls from the nth on (default: all)')
    .option('--prob <p>', 'inject: each acts with this probability (0..1)')
    .option('--seed <s>', 'inject, crash: the seed of the draws')
    .option('--after-bytes <n>', 'inject (write): calls pass until N bytes went through, then a short write, then the errno (default ENOSPC)')
    .option('--range <a-b>', 'inject (read, write): only calls touching bytes [A, B) of the file')
    .option('--keep-last <n>', 'crash: the N most recent unsynced writes persist')
    .option('--keep-prob <p>', 'crash: each unsynced write persists with probability P')
    .option('--torn <unit>', 'crash: writes persist in parts (sector: 512 bytes, page: 4 KiB)')
    .option('--since <mark>', 'trace: from the last mark of this name; diff: since this checkpoint')
    .option('--upper', 'commit: as an overlay upper dir (default: an image-layer tar)')
    .option('--op <op>', 'trace: only this operation')
    .option('--path <glob>', 'trace: only these paths')
    .option('--socket <path>', "serve: the unix socket (one JSON command a line, each answered)")
    .action((first: string, second: string, rest: string[], f: CtlFlags & { options: string[] }) => {
      try {
        if (first === 'ctl') ctl(second, rest[0], rest.slice(1), f);
        else if (first === 'serve') {
          if (rest.length || !f.socket) throw new UsageError('usage: layerfs harness serve MNT --socket PATH');
          serve(second, path.resolve(f.socket), () => undefined);
        } else {
          if (rest.length) throw new UsageError('usage: layerfs harness BASE MNT [-o state=DIR,model=posix|ext4,socket=PATH]');
          const o = harnessOptions(f.options);
          const h = HarnessState.create(first, second, o.state, o.model);
          if (o.socket) {
            try {
              startServer(h.mnt, path.resolve(o.socket));
            } catch (e) {
              h.destroy();
              throw e;
            }
          }
        }
      } catch (e) {
        fail((e as Error).message);
      }
    });
}
