// Overlay mode: validates the layers (nothing is touched before every check passed), prepares
// the work dir as the kernel does (workdir/work, emptied at mount), picks the whiteout format
// the daemon may write, and builds the union.
import { stackDepth } from '../fuse/passthrough-mode';
import { native } from '../sys/native';
import { check, errnoName } from '../sys/errors';
import { MOUNT_ATTR_NOATIME, MOUNT_ATTR_RDONLY, MOUNT_ATTR__ATIME, O_DIRECTORY, O_PATH, S_IFCHR } from '../sys/constants';
import { identity } from '../sys/identity';
import type { Mountable } from '../mount/lifecycle';
import { parseOptions } from '../mount/options';
import { checkFuseDevice, UsageError } from '../mount/validate';
import { checkMountpoint, closeDirs, devOf, openLocal, within, type Dir, type Want } from '../mount/dirs';
import { assignFsIndexes, layerFromFd, useClone, type Layer } from '../union/layers';
import { Union, removeTree, type UnionOptions } from '../union/union';
import type { Placement } from '../union/core';
import type { Filesystem } from '../fuse/filesystem';
import { HarnessFs } from '../harness/fs';
import { Ids } from '../union/ids';
import type { WhiteoutCodec, WhiteoutFormat } from '../union/whiteout';
import { overlayConfig, type OverlayConfig } from './options';

function config(optionLists: string[]): OverlayConfig {
  try {
    return overlayConfig(parseOptions(optionLists));
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError((e as Error).message);
  }
}

/** A harness mount's state dir, from its source (fsname=harness:STATE, set by layerfs harness). */
function harnessStateDir(fsname: string | null): string {
  if (!fsname?.startsWith('harness:/')) throw new UsageError('option harness needs fsname=harness:STATE (mount it with layerfs harness)');
  return fsname.slice('harness:'.length);
}

/** The dirs a mount needs opened, mountpoint first: the caller opens them (dirs.ts). */
export function wanted(cfg: OverlayConfig, mnt: string): Want[] {
  return [
    { what: 'mountpoint', path: mnt, mode: 'p' },
    ...cfg.lowers.map((l): Want => ({ what: 'lowerdir', path: l, mode: 'r' })),
    ...(cfg.upper ? [{ what: 'upperdir', path: cfg.upper, mode: 'r' } as Want] : []),
    ...(cfg.work ? [{ what: 'workdir', path: cfg.work, mode: 'r' } as Want] : []),
  ];
}

interface Dirs { mountpoint: Dir; lowers: Dir[]; upper: Dir | null; work: Dir | null }

function sorted(cfg: OverlayConfig, d: Dir[]): Dirs {
  const n = cfg.lowers.length;
  return { mountpoint: d[0], lowers: d.slice(1, 1 + n), upper: cfg.upper ? d[1 + n] : null, work: cfg.work ? d[d.length - 1] : null };
}

/**
 * What a mode changes in the engine: overlay mode is the default; aufs mode writes aufs's
 * whiteouts, keeps its work dirs inside the rw branch, limits names (mount.ts of src/aufs).
 */
export interface ModePolicy {
  /** The work dir is the upper itself (its work subdirs are hidden `.wh..wh.` names). */
  workInUpper?: boolean;
  /** The work and index subdirs of the work dir. */
  workName?: string;
  indexName?: string;
  /** Branch-level checks on the opened dirs (aufs: no branch inside another). */
  validate?(v: { lowers: Dir[]; upper: Dir | null }): void;
  /** Prepares the upper (its format's own entries) once every check passed. */
  prepareUpper?(upperFd: number): void;
  codec?(upperFd: number): WhiteoutCodec;
  nameMax?: number;
  reservedWh?: boolean;
  followRedirects?: boolean;
  showWhiteouts?: boolean;
  introspect?: UnionOptions['introspect'];
  alwaysOpaque?: boolean;
  statfsSum?: boolean;
  /** Per lowerdir: written in place (aufs rw branches below the first), its work dir inside it. */
  writableLowers?: boolean[];
  /** Where new objects and copy-ups go among the writable layers (default: the upper). */
  placement?(layers: Layer[]): Placement;
}

/** A writable layer's work dir, `name` inside `dirFd`, emptied at mount: leftovers of an
 * interrupted copy-up never show. */
export function freshWork(dirFd: number, name: string): number {
  removeTree(dirFd, name);
  check(native.mkdirat(dirFd, name, 0o700));
  return check(native.openat(dirFd, name, O_PATH | O_DIRECTORY, 0));
}

/** Checks the opened layer dirs and the mountpoint against each other, by their fds. */
function validate(v: Dirs, local: boolean, policy: ModePolicy = {}): void {
  if (local) checkFuseDevice();   // otherwise the mount helper opens it (or fusermount3 does)
  checkMountpoint(v.mountpoint);
  policy.validate?.(v);
  const { upper, work } = v;
  if (upper) {
    for (const l of v.lowers) {
      if (within(upper, l)) throw new UsageError(`upperdir ${upper.path} is inside lowerdir ${l.path}`);
      if (within(l, upper)) throw new UsageError(`lowerdir ${l.path} is inside upperdir ${upper.path}`);
    }
    if (work && !policy.workInUpper) {
      if (within(work, upper) || within(upper, work)) throw new UsageError(`workdir ${work.path} and upperdir ${upper.path} must not contain each other`);
      if (devOf(work) !== devOf(upper)) throw new UsageError(`workdir ${work.path} is not on the upper's filesystem`);
    }
  }
  for (const d of [...v.lowers, ...(upper ? [upper] : []), ...(work ? [work] : [])]) {
    if (within(v.mountpoint, d)) throw new UsageError(`mountpoint ${v.mountpoint.path} is inside layer ${d.path}`);
  }
}

/** The formats this daemon may write: the kernel's when it can make a 0/0 device and trusted xattrs. */
function probeFormat(workFd: number, root: boolean): WhiteoutFormat {
  const name = `#lfs-probe-${process.pid}`;
  const charDevice = native.mknodat(workFd, name, S_IFCHR, 0) === 0;
  native.unlinkat(workFd, name, 0);
  let ns: 'trusted' | 'user' = 'user';
  if (root && native.setxattr(`/proc/self/fd/${workFd}`, 'trusted.overlay.layerfs.probe', Buffer.from('1'), 0, 1) === 0) {
    native.removexattr(`/proc/self/fd/${workFd}`, 'trusted.overlay.layerfs.probe', 1);
    ns = 'trusted';
  }
  return { charDevice, ns };
}

/**
 * With passthrough the kernel reads lower files itself, through a file it opens with the
 * caller's flags (no O_NOATIME): so, as kernel overlayfs does with its layers, each lower layer
 * is reached through a private clone of its mount that is read-only and noatime — lower files
 * never change, not even their atime. False (passthrough off) where clones cannot be made.
 */
function privateLowerMounts(layers: Layer[], required: boolean): boolean {
  const clones: number[] = [];
  for (const l of layers) {
    if (l.writable) continue;
    const fd = native.cloneMount(l.fd, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOATIME, MOUNT_ATTR__ATIME);
    if (fd < 0) {
      for (const c of clones) native.close(c);
      if (required) throw new UsageError(`passthrough=on: cannot make a private read-only mount of lower layer ${l.path}: ${errnoName(-fd)}`);
      return false;
    }
    clones.push(fd);
  }
  let i = 0;
  for (const l of layers) if (!l.writable) useClone(l, clones[i++]);
  return true;
}

/** What a mount of these options needs opened; throws on bad options. */
export function overlayPrepare(mnt: string, optionLists: string[]): { cfg: OverlayConfig; wants: Want[] } {
  const cfg = config(optionLists);
  return { cfg, wants: wanted(cfg, mnt) };
}

/** The checks of a build, on dirs opened here (nothing is touched). */
export function checkOpened(cfg: OverlayConfig, dirs: Dir[], policy: ModePolicy = {}): void {
  validate(sorted(cfg, dirs), true, policy);
}

/** Parses and checks everything a mount needs, touching nothing; prints option warnings. */
export function overlayCheck(mnt: string, optionLists: string[]): void {
  const { cfg, wants } = overlayPrepare(mnt, optionLists);
  const dirs = openLocal(wants);
  try {
    validate(sorted(cfg, dirs), true);
  } finally {
    closeDirs(dirs);
  }
  for (const w of cfg.warnings) process.stderr.write(`layerfs: warning: ${w}\n`);
}

export interface MountName {
  source: string;    // fsname: the SOURCE argument (what /proc/mounts shows first)
  subtype: string;   // fuse.<subtype> in /proc/mounts
}

/** A mount served by this process, its dirs opened here. */
export function overlayMount(mnt: string, optionLists: string[], debug: boolean,
  name: MountName = { source: 'layerfs', subtype: 'layerfs' }): Mountable {
  const { cfg, wants } = overlayPrepare(mnt, optionLists);
  const dirs = openLocal(wants);
  try {
    return overlayBuild(cfg, dirs, debug, name, true);
  } finally {
    closeDirs(dirs);
  }
}

/** The union over opened (and checked) dirs: its layers, work dirs, index and options. */
function buildUnion(cfg: OverlayConfig, v: Dirs, policy: ModePolicy): { union: Union; layers: Layer[]; passthrough: boolean; root: boolean } {
  const id = identity();
  const layers: Layer[] = [];
  let indexFd = -1;
  const writable = v.upper !== null && !cfg.ro;
  let union: Union, passthrough: boolean;
  // a resident service outlives a failed build: what it opened is closed again
  try {
    if (v.upper) layers.push(layerFromFd(0, v.upper.path, v.upper.fd, writable));
    v.lowers.forEach((l, i) => layers.push(layerFromFd(layers.length, l.path, l.fd, !cfg.ro && !!policy.writableLowers?.[i])));
    assignFsIndexes(layers);
    // listings that show whiteouts are not those of other unions over the same layers
    if (policy.showWhiteouts) for (const l of layers) l.cacheKey += ':shwh';
    // a harness serves its files from JS (every read, write and fsync traced): no passthrough
    passthrough = !cfg.harness && cfg.passthrough > 0 && privateLowerMounts(layers, cfg.passthrough === 2);
    let format: WhiteoutFormat = { charDevice: id.root, ns: id.root ? 'trusted' : 'user' };
    const workName = policy.workName ?? 'work';
    for (const l of layers) {
      if (!l.writable) continue;
      // the upper's work dir is workdir/work; an aufs rw branch below it keeps its own inside it
      const inWorkdir = v.upper !== null && l === layers[0];
      if (inWorkdir && !v.work) continue;
      l.workFd = freshWork(inWorkdir ? v.work!.fd : l.fd, workName);
      policy.prepareUpper?.(l.fd);
    }
    if (v.work && writable) {
      // copied-up lower hard links, kept across mounts (the kernel's own index dir is 'index')
      const indexName = policy.indexName ?? 'layerfs-index';
      native.mkdirat(v.work.fd, indexName, 0o700);
      indexFd = check(native.openat(v.work.fd, indexName, O_PATH | O_DIRECTORY, 0));
    }
    const firstWork = layers.find((l) => l.workFd >= 0);
    if (firstWork) format = probeFormat(firstWork.workFd, id.root);
    union = new Union(layers, {
      timeout: cfg.timeout,
      watch: cfg.watch,
      format,
      ids: new Ids({ uidMap: cfg.uidMap, gidMap: cfg.gidMap, squashUid: cfg.squashUid, squashGid: cfg.squashGid, xattrPermissions: cfg.xattrPermissions }),
      redirectDir: cfg.redirectDir,
      fsync: cfg.fsync,
      writeback: cfg.writeback,
      noXattrs: cfg.noXattrs,
      staticNlink: cfg.staticNlink,
      atime: cfg.atime,
      passthrough,
      sharedLowerCache: cfg.pageCache,
      codecFor: policy.codec,
      nameMax: policy.nameMax,
      reservedWh: policy.reservedWh,
      followRedirects: policy.followRedirects,
      showWhiteouts: policy.showWhiteouts,
      introspect: policy.introspect,
      alwaysOpaque: policy.alwaysOpaque,
      statfsSum: policy.statfsSum,
      placement: policy.placement?.(layers),
    }, id, indexFd);
  } catch (e) {
    for (const fd of [...layers.flatMap((l) => [l.fd, l.workFd]), indexFd]) if (fd >= 0) native.close(fd);
    throw e;
  }
  return { union, layers, passthrough, root: id.root };
}

/**
 * A union of these options served by no mount (a harness's durable view): lowers, upper and
 * work opened here by path; no watches, no passthrough.
 */
export function offlineUnion(cfg: OverlayConfig, upper: string, work: string): Union {
  const c: OverlayConfig = { ...cfg, upper, work, watch: false, passthrough: 0, harness: false };
  const dirs = openLocal(wanted(c, '/').slice(1));
  try {
    return buildUnion(c, { mountpoint: { what: 'mountpoint', path: '/', fd: -1 }, lowers: dirs.slice(0, c.lowers.length), upper: dirs[c.lowers.length], work: dirs[c.lowers.length + 1] }, {}).union;
  } finally {
    closeDirs(dirs);
  }
}

/** Builds the union over dirs opened by whoever asked (this process, or the mount helper as the
 * caller): checks them first; the dir fds stay the caller's (the union reopens what it keeps). */
export function overlayBuild(cfg: OverlayConfig, opened: Dir[], debug: boolean, name: MountName, local = false,
  policy: ModePolicy = {}): Mountable {
  const v = sorted(cfg, opened);
  validate(v, local, policy);
  const harnessDir = cfg.harness ? harnessStateDir(cfg.fsname) : null;
  const { union, layers, passthrough, root } = buildUnion(cfg, v, policy);
  const fsname = (cfg.fsname ?? name.source).replace(/,/g, '_');
  let served: Filesystem = union;
  if (harnessDir) {
    try {
      served = new HarnessFs(union, harnessDir, { upper: cfg.upper!, work: cfg.work!, durable: (up, wk) => offlineUnion(cfg, up, wk) });
    } catch (e) {
      union.close();
      throw e instanceof UsageError ? e : new UsageError(`harness: ${(e as Error).message}`);
    }
  }
  const mountOptions = [`fsname=${fsname}`, `subtype=${name.subtype}`, 'default_permissions'];
  if (root) mountOptions.push('allow_other');
  if (!layers.some((l) => l.writable)) mountOptions.push('ro');
  mountOptions.push(...cfg.kernelOptions);
  return {
    fs: served,
    mountpoint: v.mountpoint.path,
    session: {
      mountOptions, entryTimeout: cfg.timeout, attrTimeout: cfg.timeout, negativeTimeout: cfg.timeout,
      writeback: cfg.writeback, debug, readdirplus: 2, threads: cfg.threads, asyncDio: true,
      passthrough: passthrough ? cfg.passthrough : 0, uring: cfg.uring, stackDepth: stackDepth(layers.map((l) => `/proc/self/fd/${l.fd}`)),
      posixAcl: false, noOpendir: cfg.timeout >= 3600,
    },
    onEnd: () => served.close?.(),
  };
}
