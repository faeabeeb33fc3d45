// `layerfs mount --passthrough DIR MNT`: options and validation for the passthrough mode.
import { Passthrough } from './passthrough';
import { atimePolicy } from '../fuse/atime';
import { passthroughOption, stackDepth } from '../fuse/passthrough-mode';
import { uringOption } from '../fuse/uring-mode';
import { native } from '../sys/native';
import { identity } from '../sys/identity';
import type { Mountable } from '../mount/lifecycle';
import { boolOption, numberOption, parseOptions } from '../mount/options';
import { checkFuseDevice, checkMountpoint, requireDir, UsageError, within } from '../mount/validate';

export function passthroughMount(dir: string, mnt: string, optionLists: string[], debug: boolean): Mountable {
  let o;
  try {
    o = parseOptions(optionLists);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const known = new Set(['ro', 'rw', 'allow_other', 'default_permissions', 'fsname', 'writeback', 'timeout',
    'direct_read', 'threads', 'passthrough', 'uring', 'noatime', 'relatime', 'strictatime', 'nodiratime', 'atime', 'diratime',
    'nodev', 'nosuid', 'noexec', 'dev', 'suid', 'exec']);
  for (const k of o.keys()) if (!known.has(k)) process.stderr.write(`layerfs: warning: unknown option ${k} ignored\n`);
  let writeback: boolean, timeout: number, directRead: boolean, threads: number;
  try {
    threads = numberOption(o, 'threads', 0);
    writeback = boolOption(o, 'writeback', false);  // exact mtimes: the kernel keeps its own under writeback
    directRead = boolOption(o, 'direct_read', false);
    // as fuse-overlayfs: the kernel caches entries and attributes until told otherwise
    timeout = numberOption(o, 'timeout', 1_000_000);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const passthrough = passthroughOption(o, writeback);
  const uring = uringOption(o);
  const root = requireDir('directory', dir);
  checkFuseDevice();
  const mountpoint = checkMountpoint(mnt);
  if (within(mountpoint, root)) throw new UsageError(`mountpoint ${mountpoint} is inside the mirrored directory ${root}`);
  const id = identity();
  const mountOptions = [`fsname=${String(o.get('fsname') ?? root)}`, 'subtype=layerfs', 'default_permissions'];
  if (id.root) mountOptions.push('allow_other');
  for (const k of ['ro', 'noatime', 'nodev', 'nosuid', 'noexec']) if (o.has(k)) mountOptions.push(k);
  return {
    fs: new Passthrough(root, { writeback, directRead, timeout, atime: atimePolicy(o.keys()), passthrough: passthrough > 0 }, id, native.raiseNofile()),
    mountpoint,
    session: {
      mountOptions, entryTimeout: timeout, attrTimeout: timeout, negativeTimeout: timeout,
      writeback, debug, readdirplus: 2, parallelDirops: false, threads, asyncDio: true, noOpendir: timeout >= 3600,
      passthrough, stackDepth: stackDepth([root]), uring,
    },
  };
}
