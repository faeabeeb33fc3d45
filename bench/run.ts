// `make bench`: every suite in one run, printed as markdown tables and saved under bench/results/.
// Usage: node dist/bench/run.js [--rounds N] [--suite passthrough,...] [--dir DIR]
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT, sh, table, umount, type SuiteResult } from './lib';
import { pageCacheSuite, pageCacheTable } from './pagecache';
import { passthroughSuite, TARGETS_TEXT as PT_TARGETS, workloads as ptWorkloads } from './passthrough';
import { overlaySuite, overlayWorkloads, TARGETS_TEXT as OV_TARGETS, URING_WORKLOADS, uringSuite } from './overlay';
import { rows, snapLatency, thinMounts, thinScale, thinSuite, TARGETS_TEXT as TH_TARGETS, XFS_TARGETS_TEXT } from './thin';
import { serviceSuite, serviceTable } from './service';
import { containersSuite, containersTable } from './containers';
import { aufsSuite } from './aufs';
import { harnessOverhead, harnessSuite, harnessTable } from './harness';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(name);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1] : def;
}

async function main(): Promise<void> {
  if (process.geteuid?.() !== 0) throw new Error('the benchmark drops caches and mounts kernel overlayfs: run it as root');
  const rounds = Number(arg('--rounds', '3'));
  const base = arg('--dir', '/var/tmp/layerfs-bench');
  const suites = arg('--suite', 'service,containers,passthrough,overlay,aufs,harness,overlay-tmpfs,uring,pagecache,thin').split(',');
  const out: SuiteResult[] = [];
  const md: string[] = [`# layerfs benchmark ${new Date().toISOString()}`, '', `rounds: ${rounds}, medians; cost = time ratio (or inverse rate ratio): < 1 is faster.`, ''];
  if (suites.includes('service')) {
    const r = serviceSuite(path.join(base, 'service'));
    out.push({ suite: 'service', targets: Object.keys(r.latencyMs), rounds: 20, results: { 'mount → first stat (ms)': Object.fromEntries(Object.entries(r.latencyMs).map(([k, v]) => [k, [v]])) }, ...r } as SuiteResult);
    md.push('## What a mount costs: the resident service', '', serviceTable(r), '');
  }
  if (suites.includes('containers') || suites.includes('podman')) {
    const r = await containersSuite(path.join(base, 'containers'));
    out.push({ suite: 'containers', targets: r.rows.map((x) => `${x.engine} ${x.who} ${x.store}`), rounds: 10, results: {}, ...r } as SuiteResult);
    md.push('## Containers: podman and Docker Engine with each store', '', containersTable(r), '');
  }
  if (suites.includes('passthrough')) {
    const r = passthroughSuite(path.join(base, 'passthrough'), rounds);
    out.push(r);
    md.push('## Binding: layerfs passthrough vs fuse-overlayfs vs the bare directory', '',
      table(r, 'layerfs', ['bare dir', 'fuse-overlayfs'], ptWorkloads(base), PT_TARGETS), '');
  }
  if (suites.includes('overlay')) {
    const r = overlaySuite(path.join(base, 'overlay'), rounds);
    out.push(r);
    md.push('## Overlay: layerfs and fuse-overlayfs as a multiple of kernel overlayfs', '',
      table(r, 'layerfs', ['kernel overlayfs', 'fuse-overlayfs'], overlayWorkloads(path.join(base, 'overlay')), OV_TARGETS), '',
      'layerfs passthrough=off:', '', table(r, 'layerfs passthrough=off', ['kernel overlayfs', 'fuse-overlayfs'], overlayWorkloads(path.join(base, 'overlay'))), '',
      'fuse-overlayfs cost vs kernel overlayfs:', '', table(r, 'fuse-overlayfs', ['kernel overlayfs'], overlayWorkloads(path.join(base, 'overlay'))), '');
  }
  if (suites.includes('aufs')) {
    const r = aufsSuite(path.join(base, 'aufs'), rounds);
    out.push(r);
    md.push('## aufs mode (1 rw + 3 ro branches): vs overlay mode, mergerfs and unionfs-fuse over the same branches', '',
      table(r, 'layerfs aufs', ['layerfs overlay', 'mergerfs', 'unionfs-fuse'], overlayWorkloads(path.join(base, 'overlay')).filter((w) => r.results[w.name]),
        { 'find cold': 'within 10% of overlay mode; faster than mergerfs and unionfs-fuse' }), '',
      `aufs mode, find cold: ${r.find100.branches4.toFixed(3)} s with 4 branches, ${r.find100.branches100.toFixed(3)} s with 100 (${(r.find100.branches100 / r.find100.branches4).toFixed(2)}×; target ≤ 1.5×)`, '',
      '3 rw branches over the fixture: create policies as a multiple of create=tdp', '',
      table(r.policies, 'create=mfs', ['create=tdp'], overlayWorkloads(path.join(base, 'overlay')).filter((w) => r.policies.results[w.name]),
        { 'create 10k': '≤ 1.2× tdp' }), '',
      table(r.policies, 'create=rr', ['create=tdp'], overlayWorkloads(path.join(base, 'overlay')).filter((w) => r.policies.results[w.name])), '');
  }
  if (suites.includes('overlay-tmpfs') || suites.includes('uring')) {
    // the same suite with every layer on tmpfs: no device latency hides the protocol's cost
    const t = path.join(base, 'tmpfs');
    fs.mkdirSync(t, { recursive: true });
    if (!fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${t} `)) sh(`mount -t tmpfs -o size=8g tmpfs ${t}`);
    try {
      if (suites.includes('uring')) {
        const u = uringSuite(path.join(t, 'overlay'), rounds);
        out.push(u);
        md.push('## FUSE over io_uring vs the read loop (tmpfs fixture, passthrough off): cost vs fuse-overlayfs', '',
          table(u, 'layerfs io_uring', ['layerfs read loop', 'fuse-overlayfs'], overlayWorkloads(path.join(t, 'overlay')).filter((w) => URING_WORKLOADS.includes(w.name)),
            { 'round trip 4k O_DIRECT qd1': '≤ 0.8× fuse-overlayfs' }), '');
      }
      if (suites.includes('overlay-tmpfs')) {
        const r = overlaySuite(path.join(t, 'overlay'), rounds);
        r.suite = 'overlay-tmpfs';
        out.push(r);
        md.push('## Overlay on tmpfs: layerfs and fuse-overlayfs as a multiple of kernel overlayfs', '',
          table(r, 'layerfs', ['kernel overlayfs', 'fuse-overlayfs'], overlayWorkloads(path.join(t, 'overlay')), OV_TARGETS), '',
          'layerfs passthrough=off:', '', table(r, 'layerfs passthrough=off', ['kernel overlayfs', 'fuse-overlayfs'], overlayWorkloads(path.join(t, 'overlay'))), '');
      }
    } finally {
      umount(t);
    }
  }
  if (suites.includes('pagecache')) {
    const rows = pageCacheSuite(path.join(base, 'pagecache'));
    out.push({ suite: 'pagecache', targets: rows.map((r) => r.name), rounds: 1, results: { 'page cache growth': Object.fromEntries(rows.map((r) => [r.name, [r.growthMiB]])) } });
    md.push('## One page cache for every mount', '', pageCacheTable(rows), '');
  }
  if (suites.includes('harness')) {
    const r = harnessSuite(path.join(base, 'harness'), rounds);
    out.push({ suite: 'harness', targets: ['in process', 'cli'], rounds, results: { 'reset (ms)': { 'in process': r.resetMs, cli: r.resetCliMs } } });
    md.push('## Harness: reset of a 50,000-file fixture after 10,000 files changed', '', harnessTable(r), '');
    const { result: o, workloads: hw } = harnessOverhead(path.join(base, 'harness'), rounds);
    out.push(o);
    md.push('## Harness mode (traced, files served from JS) vs overlay mode over the same fixture', '',
      table(o, 'harness mode', ['overlay mode'], hw, { 'create 5k': '≤ 1.3×', 'write 256 MiB + fsync': '≤ 1.3×', 'read 256 MiB cold': '≤ 1.1×', 'stat all': '≤ 1.1×' }), '');
  }
  if (suites.includes('thin')) {
    const r = thinSuite(path.join(base, 'thin'), rounds);
    out.push(r);
    const lat = snapLatency(path.join(base, 'thin'));
    (r as SuiteResult & { snapMs?: unknown }).snapMs = lat;
    md.push('## Thin: ext4 on a loop device on a thin volume vs on a plain sparse file', '',
      table(r, 'thin volume', ['plain sparse file'], rows(Object.keys(TH_TARGETS)), TH_TARGETS), '',
      `create_snap: ${lat.full100G.toFixed(3)} ms on a fully mapped 100 GiB volume, ${lat.depth1000.toFixed(3)} ms at depth 1,000 (target ≤ 10 ms)`, '');
    const x = thinSuite(path.join(base, 'thin-xfs'), rounds, true);
    out.push(x);
    md.push('The same on a loop-mounted xfs with reflinks (the pool and the plain sparse file on it):', '',
      table(x, 'thin volume', ['plain sparse file'], rows(['seq write 1M', ...Object.keys(XFS_TARGETS_TEXT)]), XFS_TARGETS_TEXT), '');
    const many = thinMounts(path.join(base, 'thin'));
    (r as SuiteResult & { mounts?: unknown }).mounts = many;
    md.push(`A pool of ${many.volumes} volumes: mount ${many.mountMs.toFixed(0)} ms, status ${many.statusMs.toFixed(0)} ms (the CLI's Node start included); ` +
      `${many.mountedExt4} of them with ext4 on loop devices mounted at once (mkfs, mount, 16 MiB written each: ${many.ext4MountS.toFixed(1)} s): ` +
      `the daemon's RSS ${many.rssMiB.toFixed(0)} MiB (target ≤ 200 MB)`, '');
    const sc = thinScale(path.join(base, 'thin'));
    (r as SuiteResult & { scale?: unknown }).scale = sc;
    md.push(`Scale (the pool's own code, in process): ${sc.volumes} volumes and snapshots: check ${sc.status1000.toFixed(2)} s; ` +
      `a fully mapped 100 GiB volume (scattered blocks): check ${sc.check100G.toFixed(2)} s (target ≤ 5 s), dump ${sc.dump100G.toFixed(2)} s (${sc.dumpMiB.toFixed(0)} MiB of XML)`, '');
  }
  const text = md.join('\n');
  process.stdout.write(text + '\n');
  const dir = path.join(ROOT, 'bench/results');
  fs.mkdirSync(dir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  fs.writeFileSync(path.join(dir, `${stamp}.json`), JSON.stringify(out, null, 1));
  fs.writeFileSync(path.join(dir, `${stamp}.md`), text + '\n');
}

main().catch((e) => {
  process.stderr.write(`bench: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
