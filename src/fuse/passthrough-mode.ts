// FUSE passthrough (Linux 6.9, protocol 7.40): an open hands the kernel the backing file, and
// reads, writes, splice and mmap of it never reach the daemon — the backing file's page cache
// is the only copy, shared by every mount over the same files. The kernel allows it to
// CAP_SYS_ADMIN in the initial user namespace (root mounts) only; rootless mounts — also uid 0
// in a user namespace, as rootless podman runs its mount program — keep serving data in C.
import { env } from '../mount/env';
import { hostRoot } from '../sys/identity';
import * as fs from 'node:fs';
import { UsageError } from '../mount/validate';
import { autoOnOff, type OptionMap } from '../mount/options';

/** 0 off, 1 when the kernel and privileges allow (auto, the default), 2 required (on). */
export type PassthroughWanted = 0 | 1 | 2;

const OVERLAYFS_MAGIC = 0x794c7630, FUSE_MAGIC = 0x65735546;

export function passthroughOption(o: OptionMap, writeback: boolean): PassthroughWanted {
  // LAYERFS_PASSTHROUGH: the default when the option is not given (the test matrix runs off)
  const v = o.get('passthrough') ?? env('LAYERFS_PASSTHROUGH') ?? 'auto';
  const want = autoOnOff(v);
  if (want < 0) throw new UsageError(`bad value for option passthrough: ${String(v)} (auto, on or off)`);
  if (want === 2 && writeback) throw new UsageError('passthrough=on cannot be combined with writeback=1');
  const root = hostRoot();
  if (want === 2 && !root) throw new UsageError('passthrough=on needs root of the host (the kernel allows FUSE passthrough to CAP_SYS_ADMIN in the initial user namespace only)');
  if (writeback || !root) return 0;
  return want as PassthroughWanted;
}

/** max_stack_depth for backing files in these dirs: 2 when one is on overlayfs or FUSE. */
export function stackDepth(dirs: string[]): number {
  for (const d of dirs) {
    try {
      const t = fs.statfsSync(d).type;
      if (t === OVERLAYFS_MAGIC || t === FUSE_MAGIC) return 2;
    } catch {
      /* validated elsewhere */
    }
  }
  return 1;
}
