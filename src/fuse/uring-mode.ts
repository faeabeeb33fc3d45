// FUSE over io_uring (Linux 6.14, protocol 7.42): requests come in ring entries and replies go
// back with the next fetch, one io_uring_enter per batch instead of a read and a write per
// request. The kernel offers it only while the fuse module's enable_uring parameter is on;
// layerfs never changes that parameter itself.
import { env } from '../mount/env';
import { UsageError } from '../mount/validate';
import { autoOnOff, type OptionMap } from '../mount/options';

// off unless asked for: measured here it does not beat the read loop (see README, Benchmark)
const URING_DEFAULT = 'off';

/** 0 off, 1 when the kernel offers it, 2 required (the mount fails otherwise). */
export type UringWanted = 0 | 1 | 2;

/** The uring option's value; LAYERFS_URING sets the default (the test matrix runs "on"). */
export function uringOption(o: OptionMap | null): UringWanted {
  const v = o?.get('uring') ?? env('LAYERFS_URING') ?? URING_DEFAULT;
  const want = autoOnOff(v);
  if (want < 0) throw new UsageError(`bad value for option uring: ${String(v)} (auto, on or off)`);
  return want as UringWanted;
}
