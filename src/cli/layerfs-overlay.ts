#!/usr/bin/env node
// `layerfs-overlay`: fuse-overlayfs's command line, so layerfs can replace it anywhere:
//   layerfs-overlay [-f] [-d] -o OPTS [SOURCE] MNT      (podman's mount_program)
//   layerfs-overlay SOURCE MNT -o OPTS                  (mount.fuse / fstab order)
// It exits 0 only once the mount answers, and never keeps the caller's stdout/stderr open.
import { runMount } from '../mount/lifecycle';
import { viaHelper } from '../service/client';
import { overlayCheck, overlayMount } from '../overlay/mount';
import { VERSION, parseMountArgv } from './mount-argv';

function fail(msg: string): never {
  process.stderr.write(`layerfs-overlay: ${msg}\n`);
  process.exit(1);
}

const USAGE = 'usage: layerfs-overlay [-f] [-d] -o lowerdir=L1:L2,upperdir=U,workdir=W[,...] [SOURCE] MNT';

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const a = parseMountArgv('layerfs-overlay', argv, USAGE, `layerfs-overlay: fuse-overlayfs-compatible layerfs ${VERSION}`);
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
