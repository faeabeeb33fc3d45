// The harness suite: reset of a 50,000-file fixture after a test changed 10,000 of them (the
// issue's ≤ 50 ms), timed in the caller's process (what the TypeScript API costs) and through
// the CLI (`layerfs harness ctl MNT reset`, a Node start included); then harness mode (every
// operation traced, files served from JS) against overlay mode over the same fixture.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { dropCaches, median, mountLayerfs, runSuite, timed, umount, type SuiteResult, type Target, type Workload } from './lib';
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

/** Harness mode vs overlay mode over the fixture: create-, write- and read-heavy workloads. */
export function harnessOverhead(dir: string, rounds: number): { result: SuiteResult; workloads: Workload[] } {
  const base = path.join(dir, 'base');
  fixture(base);
  const target = (name: string, slug: string, mount: (mnt: string, own: string) => void, end: (mnt: string) => void): Target => {
    const mnt = path.join(dir, `${slug}-mnt`), own = path.join(dir, `${slug}-own`);
    return {
      name, dir: mnt,
      setup() {
        umount(mnt);
        fs.rmSync(own, { recursive: true, force: true });
        fs.mkdirSync(own, { recursive: true });
        fs.mkdirSync(mnt, { recursive: true });
        mount(mnt, own);
      },
      teardown() { end(mnt); },
    };
  };
  const targets = [
    target('overlay mode', 'ov', (mnt, own) => {
      for (const d of ['up', 'work']) fs.mkdirSync(path.join(own, d));
      mountLayerfs(['-o', `lowerdir=${base},upperdir=${own}/up,workdir=${own}/work`, mnt]);
    }, umount),
    target('harness mode', 'ha', (mnt, own) => execFileSync(process.execPath, [CLI, 'harness', base, mnt, '-o', `state=${own}/state`]),
      (mnt) => execFileSync(process.execPath, [CLI, 'harness', 'ctl', mnt, 'umount'])),
  ];
  let round = 0;
  const py = (code: string): string => `python3 -c '${code}'`;
  const workloads: Workload[] = [
    { name: 'create 5k', unit: 's', prepare: () => { round++; }, run: (t) => timed(py(`import os\nos.makedirs("${t.dir}/new${round}")\nfor i in range(5000): os.close(os.open("${t.dir}/new${round}/c%d" % i, os.O_CREAT|os.O_WRONLY, 0o644))`)) },
    { name: 'append to 5k lower files (copy-up)', unit: 's', run: (t) => timed(py(`for d in range(100):\n  for f in range(50): open("${t.dir}/d%d/f%d" % (d, f), "a").write("z")`)) },
    { name: 'stat all', unit: 's', run: (t) => timed(`find ${t.dir} -printf '%s\n' >/dev/null`) },
    { name: 'write 256 MiB + fsync', unit: 's', run: (t) => timed(`dd if=/dev/zero of=${t.dir}/big bs=1M count=256 conv=fsync status=none`) },
    { name: 'read 256 MiB cold', unit: 's', prepare: () => dropCaches(), run: (t) => timed(`dd if=${t.dir}/big of=/dev/null bs=1M status=none`) },
  ];
  return { result: runSuite('harness-overhead', targets, workloads, rounds), workloads };
}
