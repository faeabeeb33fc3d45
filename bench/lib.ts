// Benchmark plumbing: timing shell commands, fio, interleaved rounds, medians and tables.
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

// dist/bench when built, bench/ when the tests import it from source
export const ROOT = path.resolve(__dirname, path.basename(path.dirname(__dirname)) === 'dist' ? '../..' : '..');
export const CLI = path.join(ROOT, 'dist/src/cli/layerfs.js');
export const HELPER = path.join(ROOT, 'native/build/Release/layerfs-helper');

export function sh(cmd: string, opts: { cwd?: string } = {}): string {
  return execFileSync('bash', ['-c', cmd], { encoding: 'utf8', cwd: opts.cwd, maxBuffer: 1 << 28 });
}

/** Seconds taken by a shell command. */
export function timed(cmd: string): number {
  const t = process.hrtime.bigint();
  sh(cmd);
  return Number(process.hrtime.bigint() - t) / 1e9;
}

export function dropCaches(): void {
  sh('sync; echo 3 > /proc/sys/vm/drop_caches');
}

export interface FioResult {
  bw: number;      // MiB/s
  iops: number;
  latUs: number;   // mean completion latency
}

export function fio(args: string[]): FioResult {
  const out = execFileSync('fio', ['--output-format=json', ...args], { encoding: 'utf8', maxBuffer: 1 << 26 });
  const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
  const side = job.read.io_bytes > 0 ? job.read : job.write;
  return { bw: side.bw / 1024, iops: side.iops, latUs: side.clat_ns.mean / 1000 };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export interface Target {
  name: string;
  /** Directory where the workload runs. */
  dir: string;
  setup(): void;
  teardown(): void;
}

export interface Workload {
  name: string;
  /** Unit of the measurement; 's' means lower is better. */
  unit: 's' | 'MiB/s' | 'IOPS' | 'µs';
  run(t: Target): number;
  /** Optional per-round preparation not timed (e.g. dropping caches). */
  prepare?(t: Target): void;
}

export const lowerIsBetter = (w: Workload): boolean => w.unit === 's' || w.unit === 'µs';

export interface SuiteResult {
  suite: string;
  targets: string[];
  rounds: number;
  results: Record<string, Record<string, number[]>>;  // workload -> target -> samples
}

/** Runs every workload on every target, rotating the target order each round. */
export function runSuite(suite: string, targets: Target[], workloads: Workload[], rounds: number): SuiteResult {
  const results: SuiteResult['results'] = {};
  for (const w of workloads) results[w.name] = Object.fromEntries(targets.map((t) => [t.name, []]));
  try {
    for (const t of targets) t.setup();
    for (let r = 0; r < rounds; r++) {
      const order = targets.map((_, i) => targets[(i + r) % targets.length]);
      for (const w of workloads) {
        for (const t of order) {
          w.prepare?.(t);
          const v = w.run(t);
          results[w.name][t.name].push(v);
          process.stderr.write(`  [${suite}] round ${r + 1} ${w.name} ${t.name}: ${v.toFixed(3)} ${w.unit}\n`);
        }
      }
    }
  } finally {
    for (const t of [...targets].reverse()) {
      try {
        t.teardown();
      } catch (e) {
        process.stderr.write(`teardown ${t.name}: ${(e as Error).message}\n`);
      }
    }
  }
  return { suite, targets: targets.map((t) => t.name), rounds, results };
}

/** Markdown table of medians, plus "cost" ratios: time-like values as A/B, rates as B/A. */
export function table(r: SuiteResult, subject: string, refs: string[], workloads: Workload[],
  targets: Record<string, string> = {}): string {
  const head = ['workload', ...r.targets.map((t) => `${t}`), ...refs.map((x) => `${subject} cost vs ${x}`), 'target'];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const w of workloads) {
    const med = Object.fromEntries(r.targets.map((t) => [t, median(r.results[w.name][t])]));
    const fmt = (v: number): string => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(3));
    const cost = (ref: string): string => {
      const c = lowerIsBetter(w) ? med[subject] / med[ref] : med[ref] / med[subject];
      return `${c.toFixed(2)}×`;
    };
    lines.push(`| ${w.name} (${w.unit}) | ${r.targets.map((t) => fmt(med[t])).join(' | ')} | ${refs.map(cost).join(' | ')} | ${targets[w.name] ?? ''} |`);
  }
  return lines.join('\n');
}

/** A layerfs mount as users make it: the C helper, served by the resident service. */
export function mountLayerfs(args: string[]): void {
  const r = spawnSync(HELPER, ['mount', ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`layerfs mount failed: ${r.stderr}`);
}

export function umount(p: string): void {
  spawnSync('umount', [p]);
  if (fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${p} `)) spawnSync('umount', ['-l', p]);
}

export function waitMounted(p: string, ms = 10_000): void {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${p} `)) return;
    spawnSync('sleep', ['0.05']);
  }
  throw new Error(`${p} did not get mounted`);
}
