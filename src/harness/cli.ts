// `layerfs harness BASE MNT [-o state=DIR,model=posix|ext4]`: a throwaway copy-on-write view of
// BASE at MNT. `layerfs harness ctl MNT VERB`: reset | diff [--json] | checkpoint NAME |
// restore NAME | checkpoints | commit FILE (an image-layer tar; - for stdout) | umount |
// inject OP GLOB ACTION [--nth N] [--count N] [--prob P] [--seed S] [--after-bytes N]
// [--range A-B] (ACTION: ERRNO, delay=MS, crash=before|after, joined by commas) | faults |
// clear | mark NAME | trace [--since MARK] [--op OP] [--path GLOB] (JSON lines) | sync |
// crash [--keep-last N | --keep-prob P] [--torn sector|page] [--seed S] | recover | status.
import * as fs from 'node:fs';
import type { Command } from 'commander';
import { UsageError } from '../mount/validate';
import { HarnessState } from './harness';
import type { Change } from './diff';
import { checkCrashOpts, checkRule, type Rule } from './faults';
import { MODELS, type Model } from './durable';
import { rooted } from './api';

const VERBS = 'reset, diff, checkpoint NAME, restore NAME, checkpoints, commit FILE, umount, inject OP GLOB ACTION, faults, clear, mark NAME, trace, sync, crash, recover, status';

interface CtlFlags {
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

function harnessOptions(opts: string[]): { state: string | null; model: Model } {
  let state: string | null = null, model: Model = 'posix';
  for (const list of opts) {
    for (const item of list.split(',').filter(Boolean)) {
      const eq = item.indexOf('=');
      const k = eq < 0 ? item : item.slice(0, eq), v = item.slice(eq + 1);
      if (k === 'state' && eq > 0) state = v;
      else if (k === 'model' && eq > 0) {
        if (!MODELS.includes(v as Model)) throw new UsageError(`unknown durability model '${v}' (${MODELS.join(', ')})`);
        model = v as Model;
      } else throw new UsageError(`unknown harness option '${item}' (state=DIR, model=posix|ext4)`);
    }
  }
  return { state, model };
}

function printDiff(changes: Change[], json: boolean): void {
  if (json) {
    process.stdout.write(JSON.stringify(changes.map(rooted)) + '\n');
    return;
  }
  process.stdout.write(changes.map((c) => `${c.kind}\t${c.size}\t/${c.path}`).join('\n') + (changes.length ? '\n' : ''));
}

function ctl(mnt: string, verb: string | undefined, args: string[], f: CtlFlags): void {
  const json = !!f.json;
  const need = (n: number): void => {
    if (args.length !== n) throw new UsageError(`usage: layerfs harness ctl MNT ${verb}${n === 1 ? ' NAME' : n === 3 ? ' OP GLOB ACTION' : ''}`);
  };
  if (!verb) throw new UsageError(`usage: layerfs harness ctl MNT VERB (${VERBS})`);
  const h = HarnessState.of(mnt);
  switch (verb) {
    case 'reset': need(0); h.reset(); return;
    case 'diff': need(0); printDiff(h.diff(), json); return;
    case 'checkpoint': need(1); h.checkpoint(args[0]); return;
    case 'restore': need(1); h.restore(args[0]); return;
    case 'checkpoints': need(0); process.stdout.write(json ? JSON.stringify(h.checkpoints()) + '\n' : h.checkpoints().map((c) => `${c}\n`).join('')); return;
    case 'commit': {
      need(1);
      const fd = args[0] === '-' ? 1 : fs.openSync(args[0], 'wx', 0o644);
      try {
        h.commitTar(fd);
      } finally {
        if (fd !== 1) fs.closeSync(fd);
      }
      return;
    }
    case 'umount': need(0); h.destroy(); return;
    case 'inject': need(3); h.inject(ruleOf(args, f)); return;
    case 'faults': need(0); process.stdout.write(JSON.stringify(h.rules()) + '\n'); return;
    case 'clear': need(0); h.clearFaults(); return;
    case 'mark': need(1); h.mark(args[0]); return;
    case 'sync': need(0); h.syncAll(); return;
    case 'crash': need(0); h.crash(crashOpts(f)); return;
    case 'recover': need(0); h.recover(); return;
    case 'status': need(0); process.stdout.write(JSON.stringify(h.status()) + '\n'); return;
    case 'trace': need(0); process.stdout.write(h.trace({ since: f.since, op: f.op, path: f.path }).map((l) => `${JSON.stringify(l)}\n`).join('')); return;
    default:
      throw new UsageError(`unknown harness verb '${verb}' (${VERBS})`);
  }
}

export function registerHarness(program: Command, fail: (msg: string) => never): void {
  program.command('harness')
    .description(`a throwaway copy-on-write view of BASE at MNT; 'harness ctl MNT VERB': ${VERBS}`)
    .argument('<base>', "BASE (or 'ctl')")
    .argument('<mnt>')
    .argument('[args...]')
    .option('-o, --options <opts>', 'state=DIR (where the upper lives), model=posix|ext4 (what a crash keeps)', (v: string, p: string[]) => [...p, v], [] as string[])
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
    .option('--since <mark>', 'trace: from the last mark of this name')
    .option('--op <op>', 'trace: only this operation')
    .option('--path <glob>', 'trace: only these paths')
    .action((first: string, second: string, rest: string[], f: CtlFlags & { options: string[] }) => {
      try {
        if (first === 'ctl') ctl(second, rest[0], rest.slice(1), f);
        else {
          if (rest.length) throw new UsageError('usage: layerfs harness BASE MNT [-o state=DIR,model=posix|ext4]');
          const o = harnessOptions(f.options);
          HarnessState.create(first, second, o.state, o.model);
        }
      } catch (e) {
        fail((e as Error).message);
      }
    });
}
