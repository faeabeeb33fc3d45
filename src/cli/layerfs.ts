#!/usr/bin/env node
// `layerfs`: mount, umount (and later thin, diff, doctor).
import { Command } from 'commander';
import { VERSION } from './mount-argv';
import { DAEMON_FLAG, runMount, type Mountable } from '../mount/lifecycle';
import { unmount } from '../mount/unmount';
import { passthroughMount } from '../passthrough/mount';
import { overlayCheck, overlayMount } from '../overlay/mount';
import { aufsCheck, aufsMount } from '../aufs/mount';
import { UsageError } from '../mount/validate';
import { registerThin } from '../thin/cli';
import { registerLayer } from '../layer/cli';
import { registerAufs } from '../aufs/cli';
import { registerHarness } from '../harness/cli';
import { viaHelper } from '../service/client';
import { runService } from '../service/server';

function fail(msg: string): never {
  process.stderr.write(`layerfs: ${msg}\n`);
  process.exit(1);
}

const collect = (v: string, prev: string[]): string[] => [...prev, v];

interface MountFlags {
  passthrough?: boolean;
  type?: string;
  options: string[];
  foreground?: boolean;
  debug?: boolean;
}

/** -t: overlay (the default) or aufs. */
function mountType(f: MountFlags): 'overlay' | 'aufs' {
  const t = f.type ?? 'overlay';
  if (t !== 'overlay' && t !== 'aufs') throw new UsageError(`unknown mount type ${t} (overlay or aufs; thin volumes: layerfs thin mount)`);
  return t;
}

function checkMount(args: string[], f: MountFlags): void {
  if (mountType(f) === 'aufs') {
    if (args.length !== 1) throw new UsageError('usage: layerfs mount -t aufs -o br=/rw=rw:/ro=ro MNT');
    aufsCheck(args[0], f.options);
    return;
  }
  if (f.passthrough) {
    buildMount(args, f);  // opens the tree read-only; nothing is changed
    return;
  }
  if (args.length !== 1) throw new UsageError('usage: layerfs mount -o lowerdir=L1:L2,upperdir=U,workdir=W MNT');
  overlayCheck(args[0], f.options);
}

function buildMount(args: string[], f: MountFlags): Mountable {
  if (mountType(f) === 'aufs') return aufsMount(args[0], f.options, !!f.debug);
  if (f.passthrough) {
    if (args.length !== 2) throw new UsageError('usage: layerfs mount --passthrough DIR MNT');
    return passthroughMount(args[0], args[1], f.options, !!f.debug);
  }
  if (args.length !== 1) throw new UsageError('usage: layerfs mount -o lowerdir=L1:L2,upperdir=U,workdir=W MNT');
  return overlayMount(args[0], f.options, !!f.debug);
}

async function main(argv: string[]): Promise<void> {
  const isDaemon = argv.includes(DAEMON_FLAG);
  const program = new Command('layerfs')
    .description('userspace union filesystem: overlay, aufs and thin modes over its own libfuse3 binding')
    .showHelpAfterError(false)
    .version(`layerfs ${VERSION}`, '-V, --version');
  program.command('mount')
    .description('mount a layerfs filesystem; returns once the mount answers')
    .argument('<args...>', 'MNT (overlay: -o lowerdir=...,upperdir=...,workdir=...), or DIR MNT with --passthrough')
    .option('-t, --type <type>', 'overlay (default) or aufs (-o br=/rw=rw:/ro1=ro:/ro2=rr)')
    .option('--passthrough', 'mirror DIR at MNT (the binding test bed)')
    .option('-o, --options <opts>', 'mount options, comma-separated (repeatable)', collect, [])
    .option('-f, --foreground', 'serve in the foreground')
    .option('-d, --debug', 'print each request (implies -f)')
    .option(DAEMON_FLAG, '(internal)')
    .action((args: string[], f: MountFlags) => runMount({
      daemon: isDaemon, argv: argv.slice(2), name: 'layerfs', foreground: !!(f.foreground || f.debug),
      check: () => checkMount(args, f), build: () => buildMount(args, f),
      service: f.passthrough ? undefined : () => viaHelper('layerfs', argv.slice(2)),
    }));
  program.command('ps')
    .description("the resident service's mounts: mountpoint, mode, caller pid, open handles, requests, layers")
    .option('--json', 'one JSON object')
    .action((f: { json?: boolean }) => viaHelper('layerfs', ['ps', ...(f.json ? ['--json'] : [])]));
  program.command('service')
    .description('the resident service (started by the mount helper on first use)')
    .requiredOption('--socket <path>', 'the unix socket to listen on')
    .option('--ready-fd <n>', 'write "ok" or one error line there once listening', '-1')
    .action((f: { socket: string; readyFd: string }) => runService(f.socket, Number(f.readyFd)));
  registerThin(program, fail, (build, check, f) => runMount({
    daemon: isDaemon, argv: argv.slice(2), name: 'layerfs', foreground: !!(f.foreground || f.debug), check, build,
  }));
  registerLayer(program, fail);
  registerAufs(program, fail);
  registerHarness(program, fail);
  program.command('umount')
    .alias('unmount')
    .description('unmount a layerfs mount (also one whose daemon died)')
    .argument('<mnt>')
    .option('-l, --lazy', 'detach now even if busy')
    .action((mnt: string, f: { lazy?: boolean }) => {
      try {
        unmount(mnt, !!f.lazy);
      } catch (e) {
        fail((e as Error).message);
      }
    });
  await program.parseAsync(argv);
}

main(process.argv).catch((e) => fail((e as Error).message));
