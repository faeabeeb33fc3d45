#!/usr/bin/env node
// `layerfs-overlay`: fuse-overlayfs's command line, so layerfs can replace it anywhere:
//   layerfs-overlay [-f] [-d] -o OPTS [SOURCE] MNT      (podman's mount_program)
//   layerfs-overlay SOURCE MNT -o OPTS                  (mount.fuse / fstab order)
// It exits 0 only once the mount answers, and never keeps the caller's stdout/stderr open.
import { DAEMON_FLAG, runMount } from '../mount/lifecycle';
import { viaHelper } from '../service/client';
import { overlayCheck, overlayMount } from '../overlay/mount';

function fail(msg: string): never {
  process.stderr.write(`layerfs-overlay: ${msg}\n`);
  process.exit(1);
}

const USAGE = 'usage: layerfs-overlay [-f] [-d] -o lowerdir=L1:L2,upperdir=U,workdir=W[,...] [SOURCE] MNT';

function parse(argv: string[]): { options: string[]; positional: string[]; foreground: boolean; debug: boolean; daemon: boolean } {
  const options: string[] = [];
  const positional: string[] = [];
  let foreground = false, debug = false, daemon = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === DAEMON_FLAG) daemon = true;
    else if (a === '-f') foreground = true;
    else if (a === '-d' || a === '--debug') debug = true;
    else if (a === '-o') {
      if (i + 1 >= argv.length) fail('-o needs a value');
      options.push(argv[++i]);
    } else if (a.startsWith('-o')) options.push(a.slice(2));
    else if (a === '-h' || a === '--help') {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    } else if (a === '-V' || a === '--version') {
      process.stdout.write('layerfs-overlay: fuse-overlayfs-compatible layerfs 0.1.0\n');
      process.exit(0);
    } else if (a.startsWith('-') && a !== '-') process.stderr.write(`layerfs-overlay: warning: unknown flag ${a} ignored\n`);
    else positional.push(a);
  }
  return { options, positional, foreground, debug, daemon };
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const a = parse(argv);
  if (a.positional.length < 1 || a.positional.length > 2) fail(USAGE);
  const mnt = a.positional[a.positional.length - 1];
  const source = a.positional.length === 2 ? a.positional[0] : 'layerfs-overlay';
  await runMount({
    daemon: a.daemon, argv, name: 'layerfs-overlay', foreground: a.foreground || a.debug,
    service: () => viaHelper('layerfs-overlay', argv),
    check: () => overlayCheck(mnt, a.options),
    build: () => overlayMount(mnt, a.options, a.debug, { source, subtype: 'layerfs-overlay' }),
  });
}

main().catch((e) => fail((e as Error).message));
