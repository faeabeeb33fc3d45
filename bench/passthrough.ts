// The binding suite: layerfs passthrough against fuse-overlayfs (one lower + an upper over the
// same tree) and the bare directory, on the same fixture.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  dropCaches, fio, mountLayerfs, runSuite, sh, timed, umount, waitMounted, type SuiteResult, type Target, type Workload,
} from './lib';

export const TARGETS_TEXT: Record<string, string> = {
  'round trip 4k O_DIRECT qd1': '≤ fuse-overlayfs',
  'seq read 1 GiB': '≥ 0.75× bare',
  'rand read 4k O_DIRECT qd16': '≥ fuse-overlayfs',
  'find warm': '≤ 1.5× bare',
  'stat all warm': '≤ 1.5× bare',
  'seq write 1 GiB': '≥ 0.5× bare',
};

/** ~50k entries: 30 dirs of 1,000 small files, one dir of 20,000, a 1 GiB file, a tarball. */
export function buildFixture(base: string): string {
  const tree = path.join(base, 'tree');
  const stamp = path.join(base, '.fixture-v1');
  if (fs.existsSync(stamp)) return tree;
  fs.rmSync(base, { recursive: true, force: true });
  fs.mkdirSync(tree, { recursive: true });
  process.stderr.write(`building fixture in ${base} ...\n`);
  const buf = Buffer.alloc(1024, 'x');
  for (let d = 0; d < 30; d++) {
    const dir = path.join(tree, `d${d}`);
    fs.mkdirSync(dir);
    for (let f = 0; f < 1000; f++) fs.writeFileSync(path.join(dir, `f${f}`), buf.subarray(0, (f * 37) % 1024));
  }
  const big = path.join(tree, 'bigdir');
  fs.mkdirSync(big);
  for (let f = 0; f < 20000; f++) fs.writeFileSync(path.join(big, `entry-${f}`), '');
  sh(`dd if=/dev/urandom of=${tree}/big1g bs=1M count=1024 status=none`);
  sh(`tar cf ${base}/small.tar -C ${tree} d0 d1 d2 d3 d4`);
  fs.writeFileSync(stamp, '');
  return tree;
}

// Each target writes in its own scratch dir: the bare dir and layerfs share one backing tree.
function scratch(t: Target): string {
  return path.join(t.dir, `scratch-${t.name.replace(/[^a-z]/gi, '')}`);
}

const python = (code: string): string => `python3 -c '${code}'`;

export interface FixtureNames {
  tarball: string;   // absolute path of the tarball extracted by 'tar x'
  bigFile: string;   // relative: the 1 GiB file
  bigDir: string;    // relative: the directory listed by 'readdir'
  exclude: string[]; // relative: left out of 'tar c'
}

export function workloads(base: string, names: FixtureNames = {
  tarball: `${base}/small.tar`, bigFile: 'big1g', bigDir: 'bigdir', exclude: ['big1g'],
}): Workload[] {
  const big = (t: Target): string => `${t.dir}/${names.bigFile}`;
  const excl = names.exclude.map((e) => `--exclude=./${e}`).join(' ');
  return [
    { name: 'find cold', unit: 's', prepare: () => dropCaches(), run: (t) => timed(`find ${t.dir} -path '*/scratch-*' -prune -o -print | wc -l`) },
    { name: 'find warm', unit: 's', prepare: (t) => void sh(`find ${t.dir} >/dev/null`), run: (t) => timed(`find ${t.dir} -path '*/scratch-*' -prune -o -print >/dev/null`) },
    { name: 'stat all warm', unit: 's', prepare: (t) => void sh(`find ${t.dir} -printf '%s\\n' >/dev/null`), run: (t) => timed(`find ${t.dir} -path '*/scratch-*' -prune -o -printf '%s %m %U\\n' >/dev/null`) },
    // one process listing the dir 20 times: readdir itself, not process start-up
    { name: 'readdir big dir', unit: 's', prepare: (t) => void sh(`ls -f ${t.dir}/${names.bigDir} >/dev/null`), run: (t) => timed(python(`import os\nfor i in range(20): os.listdir("${t.dir}/${names.bigDir}")`)) },
    {
      name: 'create 10k', unit: 's',
      prepare: (t) => { fs.rmSync(scratch(t), { recursive: true, force: true }); fs.mkdirSync(scratch(t)); },
      run: (t) => timed(python(`import os\nfor i in range(10000): os.close(os.open("${scratch(t)}/c%d" % i, os.O_CREAT|os.O_WRONLY, 0o644))`)),
    },
    { name: 'unlink 10k', unit: 's', run: (t) => timed(python(`import os\nfor i in range(10000): os.unlink("${scratch(t)}/c%d" % i)`)) },
    {
      name: 'tar x 5k files', unit: 's',
      prepare: (t) => { fs.rmSync(scratch(t), { recursive: true, force: true }); fs.mkdirSync(scratch(t)); },
      run: (t) => timed(`tar xf ${names.tarball} -C ${scratch(t)}`),
    },
    { name: 'tar c tree', unit: 's', prepare: (t) => void sh(`find ${t.dir} >/dev/null`), run: (t) => timed(`tar cf - -C ${t.dir} --exclude='./scratch-*' ${excl} . | cat >/dev/null`) },
    {
      name: 'seq read 1 GiB', unit: 'MiB/s', prepare: (t) => void sh(`cat ${big(t)} >/dev/null`),
      run: (t) => fio(['--name=sr', `--filename=${big(t)}`, '--rw=read', '--bs=1M', '--size=1G', '--ioengine=psync', '--invalidate=0']).bw,
    },
    {
      // every page of the big file through a shared read-only mapping, page cache warm
      name: 'mmap read 1 GiB', unit: 's', prepare: (t) => void sh(`cat ${big(t)} >/dev/null`),
      run: (t) => timed(python(`import mmap\nf = open("${big(t)}", "rb")\nm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\nsum(m[i] for i in range(0, len(m), 4096))`)),
    },
    {
      name: 'seq write 1 GiB', unit: 'MiB/s',
      prepare: (t) => { fs.rmSync(path.join(scratch(t), 'w1g'), { force: true }); fs.mkdirSync(scratch(t), { recursive: true }); },
      run: (t) => fio(['--name=sw', `--filename=${scratch(t)}/w1g`, '--rw=write', '--bs=1M', '--size=1G', '--ioengine=psync']).bw,
    },
    {
      name: 'round trip 4k O_DIRECT qd1', unit: 'µs', prepare: (t) => void sh(`cat ${big(t)} >/dev/null`),
      run: (t) => fio(['--name=rt', `--filename=${big(t)}`, '--rw=randread', '--bs=4k', '--size=256M', '--direct=1',
        '--ioengine=psync', '--iodepth=1', '--runtime=4', '--time_based', '--invalidate=0']).latUs,
    },
    {
      name: 'rand read 4k O_DIRECT qd16', unit: 'IOPS',
      run: (t) => fio(['--name=rr', `--filename=${big(t)}`, '--rw=randread', '--bs=4k', '--size=256M', '--direct=1',
        '--ioengine=libaio', '--iodepth=16', '--runtime=4', '--time_based', '--invalidate=0']).iops,
    },
  ];
}

export function passthroughSuite(base: string, rounds: number): SuiteResult {
  const tree = buildFixture(base);
  const bare: Target = { name: 'bare dir', dir: tree, setup() {}, teardown() {} };
  const lmnt = path.join(base, 'mnt-layerfs');
  const layerfs: Target = {
    name: 'layerfs', dir: lmnt,
    setup() {
      fs.mkdirSync(lmnt, { recursive: true });
      umount(lmnt);
      mountLayerfs(['--passthrough', tree, lmnt]);
    },
    teardown() { umount(lmnt); },
  };
  const fmnt = path.join(base, 'mnt-fuseovl');
  const fuseOverlayfs: Target = {
    name: 'fuse-overlayfs', dir: fmnt,
    setup() {
      for (const d of ['fo-upper', 'fo-work']) {
        fs.rmSync(path.join(base, d), { recursive: true, force: true });
        fs.mkdirSync(path.join(base, d));
      }
      fs.mkdirSync(fmnt, { recursive: true });
      umount(fmnt);
      const r = spawnSync('fuse-overlayfs', ['-o', `lowerdir=${tree},upperdir=${base}/fo-upper,workdir=${base}/fo-work`, fmnt], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`fuse-overlayfs: ${r.stderr}`);
      waitMounted(fmnt);
    },
    teardown() { umount(fmnt); },
  };
  return runSuite('passthrough', [bare, layerfs, fuseOverlayfs], workloads(base), rounds);
}
