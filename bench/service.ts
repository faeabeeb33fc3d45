// The service suite: what a mount costs. Mount → first stat answered (the resident service warm
// and cold, a daemon of its own per mount as before, fuse-overlayfs), and the memory of 100
// mounts of one 3-layer stack held at once, then after unmounting them all.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CLI, HELPER, median, umount, waitMounted } from './lib';

const ROUNDS = 20;
const MANY = 100;

function rssKiB(pid: number): number {
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
  } catch {
    return 0;
  }
}

/** Pids whose command line names arg. */
function pidsWith(arg: string): number[] {
  const out: number[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0').some((a) => a.includes(arg))) out.push(Number(d));
    } catch { /* gone */ }
  }
  return out;
}

function stack(base: string): string[] {
  const L = ['L1', 'L2', 'L3'].map((l) => path.join(base, l));
  for (const [i, l] of L.entries()) {
    fs.mkdirSync(path.join(l, 'etc'), { recursive: true });
    for (let f = 0; f < 50; f++) fs.writeFileSync(path.join(l, 'etc', `f${i}-${f}`), `${i} ${f}\n`);
    fs.writeFileSync(path.join(l, 'hello'), `layer ${i}\n`);
  }
  return L;
}

type Mounter = (lowers: string[], up: string, work: string, mnt: string) => void;

function run(cmd: string, args: string[], env?: NodeJS.ProcessEnv): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: env ?? process.env });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
}

export interface ServiceResult {
  latencyMs: Record<string, number>;   // median mount → first stat
  memory: { name: string; idleKiB: number; heldKiB: number; afterKiB: number }[];
}

export function serviceSuite(base: string): ServiceResult {
  fs.rmSync(base, { recursive: true, force: true });
  fs.mkdirSync(base, { recursive: true });
  const lowers = stack(base);
  const runDir = path.join(base, 'run');
  fs.mkdirSync(runDir, { mode: 0o700 });
  const env = { ...process.env, LAYERFS_RUNTIME_DIR: runDir };
  const killService = (): void => {
    for (const p of pidsWith(`${runDir}/`)) try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
    spawnSync('sleep', ['0.1']);
  };
  const layerfs: Mounter = (l, u, w, m) => run(HELPER, ['mount', '-o', `lowerdir=${l.join(':')},upperdir=${u},workdir=${w}`, m], env);
  const impls: [string, Mounter, (() => void) | null][] = [
    ['layerfs (service running)', layerfs, null],
    ['layerfs (cold service)', layerfs, killService],
    ['layerfs (a daemon per mount)', (l, u, w, m) => run(process.execPath, [CLI, 'mount', '-o', `lowerdir=${l.join(':')},upperdir=${u},workdir=${w}`, m],
      { ...env, LAYERFS_SERVICE: 'off' }), null],
    ['fuse-overlayfs', (l, u, w, m) => { run('fuse-overlayfs', ['-o', `lowerdir=${l.join(':')},upperdir=${u},workdir=${w}`, m]); waitMounted(m); }, null],
  ];
  const latencyMs: Record<string, number> = {};
  const warm = prep(path.join(base, 'warm'), 0);
  layerfs(lowers, ...warm);   // a running service for the first row
  umount(warm[2]);
  for (const [name, mount, before] of impls) {
    const d = path.join(base, name.replace(/\W+/g, '-'));
    const samples: number[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      const [u, w, m] = prep(d, i);
      before?.();
      const t = process.hrtime.bigint();
      mount(lowers, u, w, m);
      fs.statSync(path.join(m, 'hello'));
      samples.push(Number(process.hrtime.bigint() - t) / 1e6);
      umount(m);
    }
    latencyMs[name] = median(samples);
    process.stderr.write(`  [service] mount → first stat, ${name}: ${latencyMs[name].toFixed(1)} ms\n`);
  }
  // memory of MANY mounts held at once, each looked at once (root listing and one file)
  const memory: ServiceResult['memory'] = [];
  for (const [name, mount] of [impls[0], impls[3]]) {
    const d = path.join(base, `many-${name.replace(/\W+/g, '-')}`);
    const mnts: string[] = [];
    const svc = (): number[] => name.startsWith('layerfs') ? pidsWith(`${runDir}/`) : pidsWith(`${d}/`);
    const total = (): number => svc().reduce((a, p) => a + rssKiB(p), 0);
    if (name.startsWith('layerfs')) {   // the idle service: started by one mount, left with none
      const [u, w, m] = prep(d, -1);
      mount(lowers, u, w, m);
      umount(m);
      spawnSync('sleep', ['0.3']);
    }
    const idleKiB = total();
    try {
      for (let i = 0; i < MANY; i++) {
        const [u, w, m] = prep(d, i);
        mount(lowers, u, w, m);
        mnts.push(m);
        fs.readdirSync(m);
        fs.readFileSync(path.join(m, 'hello'));
      }
      const heldKiB = total();
      for (const m of mnts.splice(0)) umount(m);
      // the service gives memory back 1 s and 5 s after its last mount went: wait up to 10 s
      for (let k = 0; k < 20 && name.startsWith('layerfs') && total() > idleKiB + 10 * 1024; k++) spawnSync('sleep', ['0.5']);
      memory.push({ name, idleKiB, heldKiB, afterKiB: total() });
      process.stderr.write(`  [service] ${MANY} mounts, ${name}: idle ${idleKiB} KiB, held ${heldKiB} KiB, after ${memory[memory.length - 1].afterKiB} KiB\n`);
    } finally {
      for (const m of mnts) umount(m);
    }
  }
  killService();
  return { latencyMs, memory };
}

/** A fresh upper, work dir and mountpoint for round i below d. */
function prep(d: string, i: number): [string, string, string] {
  const out = ['u', 'w', 'm'].map((x) => path.join(d, `${x}${i}`)) as [string, string, string];
  for (const p of out) {
    fs.rmSync(p, { recursive: true, force: true });
    fs.mkdirSync(p, { recursive: true });
  }
  return out;
}

export function serviceTable(r: ServiceResult): string {
  const fo = r.latencyMs['fuse-overlayfs'];
  const lat = ['| mount → first stat answered | median (ms) | vs fuse-overlayfs | target |', '|---|---|---|---|',
    ...Object.entries(r.latencyMs).map(([n, v]) => `| ${n} | ${v.toFixed(1)} | ${(v / fo).toFixed(2)}× | ${
      n === 'layerfs (service running)' ? '≤ 10 ms' : n === 'layerfs (cold service)' ? '≤ 400 ms' : ''} |`)];
  const mem = [`| ${MANY} mounts of one 3-layer stack | idle (MiB) | held (MiB) | after unmounting all (MiB) | target |`, '|---|---|---|---|---|',
    ...r.memory.map((m) => `| ${m.name} | ${(m.idleKiB / 1024).toFixed(1)} | ${(m.heldKiB / 1024).toFixed(1)} | ${(m.afterKiB / 1024).toFixed(1)} | ${
      m.name.startsWith('layerfs') ? '≤ 150 held; after ≤ idle + 10' : ''} |`)];
  return [...lat, '', ...mem].join('\n');
}
