// The aufs suite: layerfs aufs mode (1 rw + 3 ro branches) vs layerfs overlay mode over the same
// layers (the overlay suite's fixture), and mergerfs and unionfs-fuse (Debian packages, installed
// by `make bench`) over the same branches; then aufs mode with 100 branches (the 3 fixture
// layers and 97 small ones) for a cold find against the 4-branch figure; then 3 rw branches
// over the fixture with create=mfs against create=tdp (the cost of a free-space policy).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { dropCaches, median, mountLayerfs, runSuite, timed, umount, waitMounted, type SuiteResult, type Target, type Workload } from './lib';
import { buildOverlayFixture, overlayWorkloads } from './overlay';

const WORKLOADS = ['find cold', 'find warm', 'stat all warm', 'readdir big dir', 'create 10k', 'unlink 10k', 'tar x 5k files'];

function target(base: string, name: string, slug: string, mount: (rw: string, mnt: string) => void): Target {
  const [rw, mnt] = ['rw', 'mnt'].map((d) => path.join(base, `aufs-${slug}-${d}`));
  return {
    name, dir: mnt,
    setup() {
      umount(mnt);
      fs.rmSync(rw, { recursive: true, force: true });
      fs.mkdirSync(rw, { recursive: true });
      fs.mkdirSync(mnt, { recursive: true });
      mount(rw, mnt);
    },
    teardown() { umount(mnt); },
  };
}

function fuseProgram(argv: string[], mnt: string): void {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${argv[0]}: ${r.stderr}`);
  waitMounted(mnt);
}

export function aufsSuite(base: string, rounds: number): SuiteResult & { find100: { branches4: number; branches100: number }; policies: SuiteResult } {
  for (const p of ['mergerfs', 'unionfs']) {
    if (spawnSync('which', [p]).status !== 0) throw new Error(`${p} is not installed (make bench installs mergerfs and unionfs-fuse)`);
  }
  const lowers = buildOverlayFixture(path.join(base, '..', 'overlay'));
  const ro = lowers.map((l) => `${l}=ro`).join(':');
  const targets = [
    target(base, 'layerfs aufs', 'a', (rw, mnt) => mountLayerfs(['-t', 'aufs', '-o', `br=${rw}=rw:${ro}`, mnt])),
    target(base, 'layerfs overlay', 'o', (rw, mnt) => {
      const work = `${rw}-work`;
      fs.rmSync(work, { recursive: true, force: true });
      fs.mkdirSync(work);
      mountLayerfs(['-o', `lowerdir=${lowers.join(':')},upperdir=${rw},workdir=${work},redirect_dir=off`, mnt]);
    }),
    target(base, 'mergerfs', 'm', (rw, mnt) => fuseProgram(['mergerfs', '-o', 'allow_other,category.create=ff,cache.files=partial,dropcacheonclose=false',
      [`${rw}=RW`, ...lowers.map((l) => `${l}=RO`)].join(':'), mnt], mnt)),
    target(base, 'unionfs-fuse', 'u', (rw, mnt) => fuseProgram(['unionfs', '-o', 'cow,allow_other', [`${rw}=RW`, ...lowers.map((l) => `${l}=RO`)].join(':'), mnt], mnt)),
  ];
  const workloads: Workload[] = overlayWorkloads(path.join(base, '..', 'overlay')).filter((w) => WORKLOADS.includes(w.name));
  const r = runSuite('aufs', targets, workloads, rounds);
  return { ...r, find100: find100(base, lowers, rounds), policies: createPolicies(base, lowers, workloads, rounds) };
}

/** 3 rw branches (the first two empty, the third holding a copy of the fixture's top dirs as
 * empty dirs, so tdp and pmfs have parents to find) over the fixture: create= tdp vs mfs vs rr. */
function createPolicies(base: string, lowers: string[], all: Workload[], rounds: number): SuiteResult {
  const ro = lowers.map((l) => `${l}=ro`).join(':');
  const targets = ['tdp', 'mfs', 'rr'].map((p) => target(base, `create=${p}`, `p${p}`, (rw, mnt) => {
    const more = [`${rw}-2`, `${rw}-3`];
    for (const m of more) {
      fs.rmSync(m, { recursive: true, force: true });
      fs.mkdirSync(m);
    }
    mountLayerfs(['-t', 'aufs', '-o', `br=${rw}=rw:${more.map((m) => `${m}=rw`).join(':')}:${ro},create=${p}`, mnt]);
  }));
  return runSuite('aufs-create', targets, all.filter((w) => w.name === 'create 10k' || w.name === 'unlink 10k'), rounds);
}

/** Cold find over 4 branches and over 100 (97 more small branches, each adding a few entries). */
function find100(base: string, lowers: string[], rounds: number): { branches4: number; branches100: number } {
  const extra = path.join(base, 'extra-branches');
  if (!fs.existsSync(path.join(extra, '.v1'))) {
    fs.rmSync(extra, { recursive: true, force: true });
    for (let i = 0; i < 97; i++) {
      const b = path.join(extra, `b${i}`, 'share', `extra${i}`);
      fs.mkdirSync(b, { recursive: true });
      for (let j = 0; j < 10; j++) fs.writeFileSync(path.join(b, `f${j}`), `${i}.${j}`);
    }
    fs.writeFileSync(path.join(extra, '.v1'), '');
  }
  const many = Array.from({ length: 97 }, (_, i) => path.join(extra, `b${i}`));
  const out = { branches4: 0, branches100: 0 };
  for (const [key, brs] of [['branches4', lowers], ['branches100', [...lowers, ...many]]] as const) {
    const rw = path.join(base, `f${brs.length}-rw`), mnt = path.join(base, `f${brs.length}-mnt`);
    umount(mnt);
    fs.rmSync(rw, { recursive: true, force: true });
    fs.mkdirSync(rw, { recursive: true });
    fs.mkdirSync(mnt, { recursive: true });
    mountLayerfs(['-t', 'aufs', '-o', `br=${[`${rw}=rw`, ...brs.map((b) => `${b}=ro`)].join(':')}`, mnt]);
    try {
      const xs: number[] = [];
      for (let i = 0; i < rounds; i++) {
        dropCaches();
        xs.push(timed(`find ${mnt} | wc -l`));
      }
      out[key] = median(xs);
      process.stderr.write(`  [aufs] find cold, ${brs.length + 1} branches: ${out[key].toFixed(3)} s\n`);
    } finally {
      umount(mnt);
    }
  }
  return out;
}
