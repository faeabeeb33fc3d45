#!/usr/bin/env node
// `layerfs-aufs`: the program mount(8) runs (through mount.fuse3) for `mount -t fuse.layerfs-aufs
// none MNT -o br=…` and its fstab line: `SOURCE MNT -o OPTS` (also `-o OPTS MNT`), as
// `layerfs mount -t aufs -o OPTS MNT`. It exits 0 only once the mount answers.
import { DAEMON_FLAG, runMount } from '../mount/lifecycle';
import { aufsCheck, aufsMount } from '../aufs/mount';
import { viaHelper } from '../service/client';

function fail(msg: string): never {
  process.stderr.write(`layerfs-aufs: ${msg}\n`);
  process.exit(1);
}

const USAGE = 'usage: layerfs-aufs [-f] [-d] [SOURCE] MNT -o br=/rw=rw:/ro=ro[,...]';

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
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
    } else if (a.startsWith('-')) fail(`unknown flag ${a}\n${USAGE}`);
    else positional.push(a);
  }
  if (positional.length < 1 || positional.length > 2) fail(USAGE);
  const mnt = positional[positional.length - 1];
  await runMount({
    daemon, argv, name: 'layerfs-aufs', foreground: foreground || debug,
    service: () => viaHelper('layerfs-aufs', argv),
    check: () => aufsCheck(mnt, options),
    build: () => aufsMount(mnt, options, debug, positional.length === 2 ? positional[0] : 'none'),
  });
}

main().catch((e) => fail((e as Error).message));
