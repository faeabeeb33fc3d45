// The harness suite: reset of a 50,000-file fixture after a test changed 10,000 of them (the
// issue's ≤ 50 ms), timed in the caller's process (what the TypeScript API costs) and through
// the CLI (`layerfs harness ctl MNT reset`, a Node start included).
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { median } from './lib';
import { HarnessState } from '../src/harness/harness';

const CLI = path.resolve(__dirname, '../src/cli/layerfs.js');

export interface HarnessResult { files: number; changed: number; resetMs: number[]; resetCliMs: number[]; changeS: number[] }

function fixture(base: string): void {
  if (fs.existsSync(path.join(base, '.v1'))) return;
  fs.rmSync(base, { recursive: true, force: true });
  for (let d = 0; d < 500; d++) {
    fs.mkdirSync(path.join(base, `d${d}`), { recursive: true });
    for (let f = 0; f < 100; f++) fs.writeFileSync(path.join(base, `d${d}`, `f${f}`), 'x');
  }
  fs.writeFileSync(path.join(base, '.v1'), '');
}

export function harnessSuite(dir: string, rounds: number): HarnessResult {
  const base = path.join(dir, 'base'), mnt = path.join(dir, 'mnt'), state = path.join(dir, 'state');
  fixture(base);
  fs.mkdirSync(mnt, { recursive: true });
  try { execFileSync(process.execPath, [CLI, 'harness', 'ctl', mnt, 'umount'], { stdio: 'ignore' }); } catch { /* not mounted */ }
  fs.rmSync(state, { recursive: true, force: true });
  execFileSync(process.execPath, [CLI, 'harness', base, mnt, '-o', `state=${state}`]);
  const r: HarnessResult = { files: 50000, changed: 10000, resetMs: [], resetCliMs: [], changeS: [] };
  const change = (): void => {
    const t = Date.now();
    execFileSync('python3', ['-c', `for d in range(100):\n  for f in range(100): open("${mnt}/d%d/f%d" % (d, f), "w").write("y")`]);
    r.changeS.push((Date.now() - t) / 1000);
  };
  try {
    for (let i = 0; i < rounds; i++) {
      change();
      let t = process.hrtime.bigint();
      HarnessState.of(mnt).reset();
      r.resetMs.push(Number(process.hrtime.bigint() - t) / 1e6);
      change();
      t = process.hrtime.bigint();
      execFileSync(process.execPath, [CLI, 'harness', 'ctl', mnt, 'reset']);
      r.resetCliMs.push(Number(process.hrtime.bigint() - t) / 1e6);
      if (fs.readFileSync(path.join(mnt, 'd0/f0'), 'utf8') !== 'x') throw new Error('reset did not bring the fixture back');
      process.stderr.write(`  [harness] round ${i + 1}: reset ${r.resetMs[i].toFixed(1)} ms in process, ${r.resetCliMs[i].toFixed(1)} ms via the CLI\n`);
    }
  } finally {
    execFileSync(process.execPath, [CLI, 'harness', 'ctl', mnt, 'umount']);
  }
  return r;
}

export function harnessTable(r: HarnessResult): string {
  return [
    '| what | median | target |', '|---|---|---|',
    `| reset after ${r.changed} of ${r.files} files changed, in process (TypeScript API) | ${median(r.resetMs).toFixed(1)} ms | ≤ 50 ms |`,
    `| the same through \`layerfs harness ctl MNT reset\` (Node start included) | ${median(r.resetCliMs).toFixed(1)} ms | |`,
    `| (changing the ${r.changed} files through the mount) | ${median(r.changeS).toFixed(2)} s | |`,
  ].join('\n');
}
