#!/usr/bin/env node
// `layerfs`: mount, umount (and later thin, diff, doctor).
import { Command } from 'commander';
import { DAEMON_FLAG, daemonChild, serve, startDaemon, type Mountable } from '../mount/lifecycle';
import { unmount } from '../mount/unmount';
import { passthroughMount } from '../passthrough/mount';
import { UsageError } from '../mount/validate';

function fail(msg: string): never {
  process.stderr.write(`layerfs: ${msg}\n`);
  process.exit(1);
}

const collect = (v: string, prev: string[]): string[] => [...prev, v];

interface MountFlags {
  passthrough?: boolean;
  options: string[];
  foreground?: boolean;
  debug?: boolean;
}

function buildMount(args: string[], f: MountFlags): Mountable {
  if (f.passthrough) {
    if (args.length !== 2) throw new UsageError('usage: layerfs mount --passthrough DIR MNT');
    return passthroughMount(args[0], args[1], f.options, !!f.debug);
  }
  throw new UsageError('layerfs mount: say which mode (--passthrough)');
}

async function main(argv: string[]): Promise<void> {
  const isDaemon = argv.includes(DAEMON_FLAG);
  const program = new Command('layerfs')
    .description('userspace union filesystem: overlay, aufs and thin modes over its own libfuse3 binding')
    .showHelpAfterError(false);
  program.command('mount')
    .description('mount a layerfs filesystem; returns once the mount answers')
    .argument('<args...>', 'DIR MNT (passthrough)')
    .option('--passthrough', 'mirror DIR at MNT (the binding test bed)')
    .option('-o, --options <opts>', 'mount options, comma-separated (repeatable)', collect, [])
    .option('-f, --foreground', 'serve in the foreground')
    .option('-d, --debug', 'print each request (implies -f)')
    .option(DAEMON_FLAG, '(internal)')
    .action(async (args: string[], f: MountFlags) => {
      let m: Mountable;
      if (isDaemon) return daemonChild(() => buildMount(args, f));
      try {
        m = buildMount(args, f);
      } catch (e) {
        fail((e as Error).message);
      }
      if (f.foreground || f.debug) {
        process.exitCode = await serve(m, (msg) => { if (msg !== 'ok') process.stderr.write(`layerfs: ${msg.replace(/^error /, '')}\n`); });
        return;
      }
      const err = await startDaemon(argv.slice(2));
      if (err) fail(err);
    });
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
