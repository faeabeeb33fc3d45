// Overlay mount options, with fuse-overlayfs's names and meanings. Unknown options are ignored
// with a warning (podman passes options it does not know we lack); a bad value of a known
// option is an error.
import { atimePolicy, type AtimePolicy } from '../fuse/atime';
import { passthroughOption, type PassthroughWanted } from '../fuse/passthrough-mode';
import { uringOption, type UringWanted } from '../fuse/uring-mode';
import { boolOption, numberOption, type OptionMap } from '../mount/options';
import { UsageError } from '../mount/validate';

import type { IdMapping } from '../union/ids';

export interface OverlayConfig {
  lowers: string[];
  upper: string | null;
  work: string | null;
  uidMap: IdMapping[];
  gidMap: IdMapping[];
  squashUid: number | null;
  squashGid: number | null;
  staticNlink: boolean;
  noAcl: boolean;
  fsync: boolean;
  threads: number;
  /** Lower files read without FUSE passthrough: 'shared' serves them direct (one copy, the lower
   * file's own page cache, for every mount); 'private' caches them per mount; 'auto' shares big
   * data files only (union.ts sharedLowerOpen). */
  pageCache: PageCache;
  timeout: number;
  writeback: boolean;
  noXattrs: boolean;
  xattrPermissions: 0 | 1 | 2;
  redirectDir: boolean;
  watch: boolean;
  ro: boolean;
  atime: AtimePolicy;
  passthrough: PassthroughWanted;
  uring: UringWanted;
  kernelOptions: string[];   // passed on to the kernel mount (allow_other, nodev, ...)
  fsname: string | null;
  /** A harness mount (layerfs harness): traced, fault rules, JS-served files; fsname=harness:STATE. */
  harness: boolean;
  warnings: string[];
}

export const MAX_LOWERS = 500;

/** Splits lowerdir on ':' honouring '\:' (and '\\') escapes. */
export function splitLowerdir(v: string): string[] {
  const out: string[] = [];
  let cur = '';
  for (let i = 0; i < v.length; i++) {
    const c = v[i];
    if (c === '\\' && i + 1 < v.length) cur += v[++i];
    else if (c === ':') {
      out.push(cur);
      cur = '';
    } else cur += c;
  }
  out.push(cur);
  return out.filter((s) => s.length > 0);
}

export function parseIdMapping(key: string, v: string): IdMapping[] {
  // empty fields are skipped, as fuse-overlayfs's strtok does: podman sends a leading colon
  const parts = v.split(':').filter((p) => p !== '');
  if (parts.length === 0 || parts.length % 3 !== 0 || parts.some((p) => !/^\d+$/.test(p))) {
    throw new UsageError(`bad value for option ${key}: ${v} (want STORED:SHOWN:LENGTH[:...])`);
  }
  const out: IdMapping[] = [];
  for (let i = 0; i < parts.length; i += 3) {
    // fuse-overlayfs's order: the id on disk, then the id the mount shows (containers-storage sends
    // CONTAINER:HOST:SIZE — layers store container ids, the container's userns maps the shown host ids back)
    const m = { outside: Number(parts[i]), inside: Number(parts[i + 1]), len: Number(parts[i + 2]) };
    if (m.len === 0) throw new UsageError(`bad value for option ${key}: ${v} (length 0)`);
    out.push(m);
  }
  return out;
}

const KERNEL_FLAGS = new Set(['allow_other', 'allow_root', 'default_permissions', 'suid', 'nosuid', 'dev', 'nodev',
  'exec', 'noexec', 'atime', 'noatime', 'relatime', 'norelatime', 'strictatime', 'diratime', 'nodiratime',
  'sync', 'async', 'dirsync', 'lazytime', 'nolazytime', 'auto', 'noauto', 'user', 'nouser', 'users', '_netdev',
  'nofail', 'defaults']);
// (relatime, strictatime, nodiratime: the daemon's own policy, fuse/atime.ts; libfuse refuses them)
const PASSED_ON = new Set(['nodev', 'nosuid', 'noexec', 'noatime', 'dirsync', 'sync']);
const KNOWN_IGNORED = new Set(['context', 'fscontext', 'defcontext', 'rootcontext', 'threaded', 'index', 'xino',
  'metacopy', 'userxattr', 'uuid', 'nfs_export', 'subtype', 'max_read', 'max_write', 'rw', 'plugins', 'fast_ino',
  'x-systemd.automount']);

function bool01(o: OptionMap, key: string, def: boolean): boolean {
  try {
    return boolOption(o, key, def);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

function num(o: OptionMap, key: string, def: number): number {
  try {
    return numberOption(o, key, def);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

export function overlayConfig(o: OptionMap): OverlayConfig {
  const warnings: string[] = [];
  const str = (k: string): string | null => {
    const v = o.get(k);
    if (v === undefined) return null;
    if (v === true) throw new UsageError(`option ${k} needs a value`);
    return v;
  };
  const lowerdir = str('lowerdir');
  if (!lowerdir) throw new UsageError('no lowerdir given (-o lowerdir=DIR[:DIR...])');
  const lowers = splitLowerdir(lowerdir);
  if (lowers.length === 0) throw new UsageError('lowerdir is empty');
  if (lowers.length > MAX_LOWERS) throw new UsageError(`too many lower layers: ${lowers.length} (at most ${MAX_LOWERS})`);
  const upper = str('upperdir');
  const work = str('workdir');
  if (upper && !work) throw new UsageError('upperdir given without workdir');
  const xp = num(o, 'xattr_permissions', 0);
  if (xp !== 0 && xp !== 1 && xp !== 2) throw new UsageError(`bad value for option xattr_permissions: ${xp}`);
  const rd = o.get('redirect_dir');
  let redirectDir = true;
  if (rd !== undefined) {
    if (rd === 'off' || rd === '0' || rd === 'nofollow') redirectDir = false;
    else if (rd === 'on' || rd === '1' || rd === 'follow' || rd === true) redirectDir = true;
    else throw new UsageError(`bad value for option redirect_dir: ${rd}`);
  }
  const volatile = o.has('volatile');
  const squashRoot = o.has('squash_to_root');
  const squashUid = o.has('squash_to_uid') ? num(o, 'squash_to_uid', 0) : squashRoot ? 0 : null;
  const squashGid = o.has('squash_to_gid') ? num(o, 'squash_to_gid', 0) : squashRoot ? 0 : null;
  const threaded = o.get('threaded');
  const cfg: OverlayConfig = {
    lowers, upper, work,
    uidMap: o.has('uidmapping') ? parseIdMapping('uidmapping', String(str('uidmapping'))) : [],
    gidMap: o.has('gidmapping') ? parseIdMapping('gidmapping', String(str('gidmapping'))) : [],
    squashUid, squashGid,
    staticNlink: o.has('static_nlink'),
    noAcl: o.has('noacl'),
    fsync: volatile ? false : bool01(o, 'fsync', true),
    threads: threaded === undefined || threaded === '0' ? 0 : 2,
    timeout: num(o, 'timeout', 1_000_000),
    writeback: bool01(o, 'writeback', false),
    noXattrs: o.has('noxattrs') ? bool01(o, 'noxattrs', true) : false,
    xattrPermissions: xp as 0 | 1 | 2,
    redirectDir,
    watch: bool01(o, 'watch', true),
    ro: o.has('ro'),
    atime: atimePolicy(o.keys()),
    passthrough: passthroughOption(o, bool01(o, 'writeback', false)),
    uring: uringOption(o),
    pageCache: pageCacheOption(o),
    kernelOptions: [],
    fsname: o.has('fsname') ? String(o.get('fsname')) : null,
    harness: o.has('harness'),
    warnings,
  };
  for (const [k] of o) {
    if (PASSED_ON.has(k)) cfg.kernelOptions.push(k);
    const known = ['lowerdir', 'upperdir', 'workdir', 'uidmapping', 'gidmapping', 'squash_to_root', 'squash_to_uid',
      'squash_to_gid', 'static_nlink', 'noacl', 'fsync', 'volatile', 'timeout', 'writeback', 'noxattrs',
      'xattr_permissions', 'redirect_dir', 'ro', 'fsname', 'watch', 'passthrough', 'uring', 'page_cache', 'harness'];
    if (!known.includes(k) && !KERNEL_FLAGS.has(k) && !KNOWN_IGNORED.has(k)) warnings.push(`unknown option ${k} ignored`);
  }
  return cfg;
}

export type PageCache = 'auto' | 'shared' | 'private';

function pageCacheOption(o: OptionMap): PageCache {
  const v = o.get('page_cache') ?? 'auto';
  if (v !== 'auto' && v !== 'shared' && v !== 'private') throw new UsageError(`bad value for option page_cache: ${String(v)} (auto, shared or private)`);
  return v;
}
