#!/usr/bin/env node
// `layerfs-aufs`: the program mount(8) runs (through mount.fuse3) for `mount -t fuse.layerfs-aufs
// none MNT -o br=…` and its fstab line: `SOURCE MNT -o OPTS` (also `-o OPTS MNT`), as
// `layerfs mount -t aufs -o OPTS MNT`. It exits 0 only once the mount answers.
import { runMount } from '../mount/lifecycle';
import { aufsCheck, aufsMount } from '../aufs/mount';
import { viaHelper } from '../service/client';
import { VERSION, parseMountArgv } from './mount-argv';

function fail(msg: string): never {
  process.stderr.write(`layerfs-aufs: ${msg}\n`);
  process.exit(1);
}

const USAGE = 'usage: layerfs-aufs [-f] [-d] [SOURCE] MNT -o br=/rw=rw:/ro=ro[,...]';

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const a = parseMountArgv('layerfs-aufs', argv, USAGE, `layerfs-aufs: layerfs ${VERSION}`);
  const mnt = a.positional[a.positional.length - 1];
  await runMount({
    daemon: a.daemon, argv, name: 'layerfs-aufs', foreground: a.foreground || a.debug,
    service: () => viaHelper('layerfs-aufs', argv),
    check: () => aufsCheck(mnt, a.options),
    build: () => aufsMount(mnt, a.options, a.debug, a.positional.length === 2 ? a.positional[0] : 'none'),
  });
}

main().catch((e) => fail((e as Error).message));
