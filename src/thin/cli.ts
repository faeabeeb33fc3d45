// `layerfs thin ...`: create, message, mount, status, check, dump, restore, resize.
// A command on a mounted pool goes to its daemon (control socket); otherwise it opens the pool.
import * as fs from 'node:fs';
import type { Command } from 'commander';
import { E } from '../sys/constants';
import { DAEMON_FLAG, type Mountable } from '../mount/lifecycle';
import { parseOptions, numberOption } from '../mount/options';
import { checkFuseDevice, checkMountpoint, requireDir, UsageError } from '../mount/validate';
import { Pool, ThinError } from './pool';
import { ThinFs } from './thinfs';
import { progress, type OnProgress } from './progress';
import { ask, claimOwnership, hungOwner, owner, serveControl, stopServing, type Request } from './control';
import { check, dumpXml, metadataSnapAfter, metadataSnapXml, restoreXml, status, statusLine, statusText } from './report';

export function parseSize(s: string, what = 'size'): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?$/i.exec(s.trim());
  if (!m) throw new UsageError(`bad ${what}: ${s} (e.g. 10G, 64k, 1048576)`);
  const mult = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50 }[m[2].toLowerCase()] ?? 1;
  return Math.floor(Number(m[1]) * mult);
}

/** fn with a progress line on the terminal (after a second), cleared at the end. */
function withProgress<T>(label: string, fn: (on: OnProgress) => T): T {
  const pr = progress(label);
  try {
    return fn(pr.tick);
  } finally {
    pr.end();
  }
}

/** Runs a request on the daemon of a mounted pool, or on the pool opened here. */
async function run(dir: string, r: Request, offline: (p: Pool) => unknown, readOnly = false): Promise<unknown> {
  // a mounted pool's daemon answers once done: meanwhile the terminal hears how long it has been
  const wait = r.cmd === 'check' || r.cmd === 'dump' ? progress(`${r.cmd} ${dir}`) : null;
  const t0 = Date.now();
  const timer = wait ? setInterval(() => wait.note(`the daemon is at it (${Math.floor((Date.now() - t0) / 1000)} s)`), 250) : null;
  let a;
  try {
    a = await ask(dir, r);
  } finally {
    if (timer) clearInterval(timer);
    wait?.end();
  }
  if (a) {
    if (!a.ok) throw new ThinError(a.errno ?? E.EIO, a.error ?? 'failed');
    return a.out;
  }
  // never two writers: a live daemon that does not answer keeps the pool to itself
  const o = owner(dir);
  if (o) throw new ThinError(E.EBUSY, hungOwner(dir, o));
  const p = Pool.open(dir, readOnly);
  try {
    const out = offline(p);
    if (!readOnly) p.checkpoint();
    return out;
  } finally {
    p.close();
  }
}

/** check --repair on a mounted pool: with the metadata writable again and nothing else wrong, the needs_check flag goes. */
function repairLive(p: Pool): string {
  p.commit();
  if (p.metaFull) throw new ThinError(E.EIO, 'repair failed: the metadata space is still exhausted (thin resize --metadata-size first)');
  // the needs_check flag is cleared by a checkpoint of the (recounted) state; anything else is offline work
  const others = check(p).problems.filter((x) => x !== p.needsCheck);
  if (others.length) throw new ThinError(E.EIO, `repair failed: ${others.join('; ')} (unmount, then thin check --repair)`);
  if (!p.needsCheck) return 'ok';
  p.clearNeedsCheck();
  return 'repaired: needs_check cleared';
}

/** What the daemon answers on the control socket. */
function controlHandler(p: Pool, tfs: ThinFs): (r: Request) => unknown {
  // status, check and dump change no table of the C data path: it goes on while they run (a
  // dump of a big pool takes seconds); the others change the pool with the tables held
  const change = (r: Request): unknown => {
    switch (r.cmd) {
      case 'message': {
        const out = p.message(String(r.arg));
        p.commit();
        metadataSnapAfter(p, p.dir, String(r.arg));
        tfs.volumesChanged();
        return out;
      }
      case 'resize': p.resize(Number(r.arg)); return '';
      case 'resize-metadata': p.resizeMetadata(Number(r.arg)); return '';
      case 'repair': return repairLive(p);
      case 'checkpoint': p.checkpoint(); return '';
      default: throw new ThinError(E.EINVAL, `unknown request ${String(r.cmd)}`);
    }
  };
  return (r) => {
    if (r.cmd !== 'status' && r.cmd !== 'check' && r.cmd !== 'dump') return tfs.settled(() => change(r));
    tfs.drain();
    if (r.cmd === 'status') return status(p);
    p.commit();
    return r.cmd === 'check' ? check(p) : dumpXml(p);
  };
}

export function thinCheckMount(dir: string, mnt: string): void {
  requireDir('pool', dir);
  const o = owner(dir);
  if (o) throw new UsageError(`${dir} is already mounted${o.mnt ? ` on ${o.mnt}` : ''} (daemon pid ${o.pid})`);
  const p = Pool.open(dir, true);
  p.close();
  checkFuseDevice();
  checkMountpoint(mnt);
}

export function thinMount(dir: string, mnt: string, options: string[], debug: boolean): Mountable {
  const o = parseOptions(options);
  const timeout = numberOption(o, 'no_space_timeout', 60);
  const threads = numberOption(o, 'threads', 2);   // worker threads of the C data path besides the JS thread
  if (!Number.isInteger(threads) || threads > 16) throw new UsageError(`bad value for option threads: ${threads} (0 to 16)`);
  requireDir('pool', dir);
  checkFuseDevice();
  const mountpoint = checkMountpoint(mnt);
  claimOwnership(dir, mountpoint);  // before anything is opened or mounted: one owner per pool
  const pool = Pool.open(dir);
  pool.onEvent = (msg) => process.stderr.write(`layerfs thin: ${msg}\n`);
  const tfs = new ThinFs(pool, { noSpaceTimeoutMs: timeout * 1000 });
  const root = process.geteuid?.() === 0;
  let srv: ReturnType<typeof serveControl> | null = null;
  return {
    fs: tfs,
    mountpoint,
    session: {
      mountOptions: [`fsname=${dir.replace(/,/g, '_')}`, 'subtype=layerfs-thin', 'default_permissions', ...(root ? ['allow_other'] : [])],
      entryTimeout: 0, attrTimeout: 0, negativeTimeout: 0, debug, readdirplus: 0, threads, writeback: false,
    },
    onSession() {
      srv = serveControl(dir, controlHandler(pool, tfs));
    },
    onEnd() {
      stopServing(dir, srv);
      tfs.shutdown();
      pool.close();
    },
  };
}

type Fail = (msg: string) => never;

export function registerThin(program: Command, fail: Fail, mountCmd: (build: () => Mountable, check: () => void, f: { foreground?: boolean; debug?: boolean }) => Promise<void>): void {
  const thin = program.command('thin').description('thin pools: volumes and snapshots kept in two files');
  const guard = async (fn: () => Promise<void> | void): Promise<void> => {
    try {
      await fn();
    } catch (e) {
      fail((e as Error).message);
    }
  };
  thin.command('create')
    .argument('<pool>')
    .requiredOption('--data-size <size>', 'size of the data file (e.g. 10G)')
    .option('--block-size <size>', 'block size, 64k..1G in multiples of 64k', '64k')
    .option('--metadata-size <size>', 'metadata space (status reports against it)')
    .option('--skip-block-zeroing', 'do not zero the rest of a newly provisioned block')
    .option('--error-if-no-space', 'fail writes that need a block at once when full (else queue them)')
    .option('--low-water-mark <blocks>', 'log an event when free blocks drop to this', '0')
    .option('--auto-extend <threshold:step:cap>', 'grow the data file by STEP% when THRESHOLD% is used, up to CAP bytes')
    .action((dir: string, f: Record<string, string | boolean | undefined>) => guard(() => {
      let autoExtend = null;
      if (typeof f.autoExtend === 'string') {
        const [t, s, c] = f.autoExtend.split(':');
        autoExtend = { threshold: Number(t), step: Number(s), cap: parseSize(c ?? '0', 'auto-extend cap') };
        if (!(autoExtend.threshold > 0 && autoExtend.threshold <= 100 && autoExtend.step > 0)) throw new UsageError(`bad --auto-extend ${f.autoExtend}`);
      }
      const lwm = Number(f.lowWaterMark);
      if (!Number.isInteger(lwm) || lwm < 0) throw new UsageError(`bad --low-water-mark ${String(f.lowWaterMark)}`);
      const p = Pool.create(dir, parseSize(String(f.dataSize), 'data size'), {
        blockSize: parseSize(String(f.blockSize), 'block size'),
        metadataSize: f.metadataSize ? parseSize(String(f.metadataSize), 'metadata size') : 0,
        skipBlockZeroing: !!f.skipBlockZeroing,
        errorIfNoSpace: !!f.errorIfNoSpace,
        lowWaterMark: lwm,
        autoExtend,
      });
      p.close();
    }));
  thin.command('message')
    .argument('<pool>')
    .argument('<message>', "dm-thin pool message, e.g. 'create_thin 0', 'create_snap 1 0', 'delete 1'")
    .action((dir: string, msg: string) => guard(async () => {
      const out = await run(dir, { cmd: 'message', arg: msg }, (p) => {
        const o = p.message(msg);
        metadataSnapAfter(p, dir, msg);
        return o;
      });
      if (out) process.stdout.write(`${String(out)}\n`);
    }));
  thin.command('mount')
    .argument('<pool>')
    .argument('<mnt>')
    .option('-o, --options <opts>', 'no_space_timeout=SECS', (v: string, prev: string[]) => [...prev, v], [])
    .option('-f, --foreground')
    .option('-d, --debug')
    .option(DAEMON_FLAG, '(internal)')
    .action((dir: string, mnt: string, f: { options: string[]; foreground?: boolean; debug?: boolean }) =>
      mountCmd(() => thinMount(dir, mnt, f.options, !!f.debug), () => thinCheckMount(dir, mnt), f));
  thin.command('status')
    .argument('<pool>')
    .option('--json')
    .action((dir: string, f: { json?: boolean }) => guard(async () => {
      const s = (await run(dir, { cmd: 'status' }, status, true)) as ReturnType<typeof status>;
      process.stdout.write(f.json ? `${JSON.stringify({ ...s, line: statusLine(s) }, null, 1)}\n` : `${statusText(s)}\n`);
    }));
  thin.command('check')
    .argument('<pool>')
    .option('--repair', 'give leaked blocks back')
    .action((dir: string, f: { repair?: boolean }) => guard(async () => {
      // mounted: the daemon repairs what it can (its needs_check flag); never a second writer
      const live = f.repair ? await ask(dir, { cmd: 'repair' }) : null;
      if (live) {
        if (!live.ok) throw new ThinError(live.errno ?? E.EIO, live.error ?? 'repair failed');
        process.stdout.write(`${String(live.out)}\n`);
        return;
      }
      const r = (await run(dir, { cmd: 'check' }, (p) => withProgress(`check ${dir}`, (on) => check(p, on)), !f.repair)) as ReturnType<typeof check>;
      if (f.repair && !r.ok) {
        // loading recounted the space map; a checkpoint stores the recount
        const p = Pool.open(dir);
        let again;
        try {
          p.clearNeedsCheck();
          again = check(p);
        } finally {
          p.close();
        }
        if (!again.ok) fail(`repair failed: ${again.problems.join('; ')}`);
        process.stdout.write(`repaired: ${r.problems.join('; ')}\n`);
        return;
      }
      if (!r.ok) fail(r.problems.join('; '));
      process.stdout.write('ok\n');
    }));
  thin.command('dump')
    .argument('<pool>')
    .option('--metadata-snap', 'the metadata snapshot held by reserve_metadata_snap (thin_dump --metadata-snap)')
    .action((dir: string, f: { metadataSnap?: boolean }) => guard(async () => {
      if (f.metadataSnap) {
        requireDir('pool', dir);
        process.stdout.write(metadataSnapXml(dir));
        return;
      }
      process.stdout.write(String(await run(dir, { cmd: 'dump' }, (p) => withProgress(`dump ${dir}`, (on) => dumpXml(p, on)), true)));
    }));
  thin.command('restore')
    .argument('<xml>')
    .argument('<pool>')
    .action((xml: string, dir: string) => guard(() => {
      restoreXml(fs.readFileSync(xml, 'utf8'), dir).close();
    }));
  thin.command('resize')
    .argument('<pool>')
    .option('--data-size <size>', 'grow the data file')
    .option('--metadata-size <size>', 'grow the metadata space (a pool read-only for lack of it is writable again)')
    .action((dir: string, f: { dataSize?: string; metadataSize?: string }) => guard(async () => {
      if (!f.dataSize && !f.metadataSize) throw new UsageError('resize needs --data-size and/or --metadata-size');
      if (f.metadataSize) {
        const m = parseSize(f.metadataSize, 'metadata size');
        await run(dir, { cmd: 'resize-metadata', arg: m }, (p) => p.resizeMetadata(m));
      }
      if (f.dataSize) {
        const size = parseSize(f.dataSize, 'data size');
        await run(dir, { cmd: 'resize', arg: size }, (p) => p.resize(size));
      }
    }));
}
