// `layerfs harness BASE MNT [-o state=DIR]`: a throwaway copy-on-write view of BASE at MNT.
// `layerfs harness ctl MNT VERB`: reset | diff [--json] | checkpoint NAME | restore NAME |
// checkpoints | commit FILE (an image-layer tar; - for stdout) | umount.
import * as fs from 'node:fs';
import type { Command } from 'commander';
import { UsageError } from '../mount/validate';
import { HarnessState } from './harness';
import type { Change } from './diff';
import { rooted } from './api';

const VERBS = 'reset, diff, checkpoint NAME, restore NAME, checkpoints, commit FILE, umount';

function stateOption(opts: string[]): string | null {
  let state: string | null = null;
  for (const list of opts) {
    for (const item of list.split(',').filter(Boolean)) {
      const eq = item.indexOf('=');
      const k = eq < 0 ? item : item.slice(0, eq);
      if (k !== 'state' || eq < 0) throw new UsageError(`unknown harness option '${item}' (state=DIR)`);
      state = item.slice(eq + 1);
    }
  }
  return state;
}

function printDiff(changes: Change[], json: boolean): void {
  if (json) {
    process.stdout.write(JSON.stringify(changes.map(rooted)) + '\n');
    return;
  }
  process.stdout.write(changes.map((c) => `${c.kind}\t${c.size}\t/${c.path}`).join('\n') + (changes.length ? '\n' : ''));
}

function ctl(mnt: string, verb: string | undefined, args: string[], json: boolean): void {
  const need = (n: number): void => {
    if (args.length !== n) throw new UsageError(`usage: layerfs harness ctl MNT ${verb}${n ? ' NAME' : ''}`);
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
    .option('-o, --options <opts>', 'state=DIR (where the upper lives)', (v: string, p: string[]) => [...p, v], [] as string[])
    .option('--json', 'diff and checkpoints as JSON')
    .action((first: string, second: string, rest: string[], f: { options: string[]; json?: boolean }) => {
      try {
        if (first === 'ctl') ctl(second, rest[0], rest.slice(1), !!f.json);
        else {
          if (rest.length) throw new UsageError('usage: layerfs harness BASE MNT [-o state=DIR]');
          HarnessState.create(first, second, stateOption(f.options));
        }
      } catch (e) {
        fail((e as Error).message);
      }
    });
}
