// Overlay mode: validates the layers (nothing is touched before every check passed), prepares
// the work dir as the kernel does (workdir/work, emptied at mount), picks the whiteout format
// the daemon may write, and builds the union.
import { stackDepth } from '../fuse/passthrough-mode';
import * as fs from 'node:fs';
import { native } from '../sys/native';
import { check, errnoName } from '../sys/errors';
import { AT_FDCWD, MOUNT_ATTR_NOATIME, MOUNT_ATTR_RDONLY, MOUNT_ATTR__ATIME, O_DIRECTORY, O_PATH, S_IFCHR } from '../sys/constants';
import { identity } from '../sys/identity';
import type { Mountable } from '../mount/lifecycle';
import { parseOptions } from '../mount/options';
import { checkFuseDevice, checkMountpoint, requireDir, UsageError, within } from '../mount/validate';
import { assignFsIndexes, openLayer, type Layer } from '../union/layers';
import { Union, removeTree } from '../union/union';
import { Ids } from '../union/ids';
import type { WhiteoutFormat } from '../union/whiteout';
import { overlayConfig, type OverlayConfig } from './options';

function config(optionLists: string[]): OverlayConfig {
  try {
    return overlayConfig(parseOptions(optionLists));
  } catch (e) {
    if (e instanceof UsageError) throw e;
    throw new UsageError((e as Error).message);
  }
}

/** Checks the layer dirs and the mountpoint; returns their real paths. */
export function validate(cfg: OverlayConfig, mnt: string): { lowers: string[]; upper: string | null; work: string | null; mountpoint: string } {
  const lowers = cfg.lowers.map((l) => requireDir('lowerdir', l));
  const upper = cfg.upper ? requireDir('upperdir', cfg.upper) : null;
  const work = cfg.work ? requireDir('workdir', cfg.work) : null;
  checkFuseDevice();
  const mountpoint = checkMountpoint(mnt);
  if (upper) {
    for (const l of lowers) {
      if (within(upper, l)) throw new UsageError(`upperdir ${upper} is inside lowerdir ${l}`);
      if (within(l, upper)) throw new UsageError(`lowerdir ${l} is inside upperdir ${upper}`);
    }
    if (work) {
      if (within(work, upper) || within(upper, work)) throw new UsageError(`workdir ${work} and upperdir ${upper} must not contain each other`);
      if (fs.statSync(work).dev !== fs.statSync(upper).dev) throw new UsageError(`workdir ${work} is not on the upper's filesystem`);
    }
  }
  for (const d of [...lowers, ...(upper ? [upper] : []), ...(work ? [work] : [])]) {
    if (within(mountpoint, d)) throw new UsageError(`mountpoint ${mountpoint} is inside layer ${d}`);
  }
  return { lowers, upper, work, mountpoint };
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
  for (const l of layers) {
    if (l.writable) continue;
    native.close(l.fd);
    l.fd = clones[i++];
  }
  return true;
}

/** Parses and checks everything a mount needs, touching nothing; prints option warnings. */
export function overlayCheck(mnt: string, optionLists: string[]): void {
  const cfg = config(optionLists);
  validate(cfg, mnt);
  for (const w of cfg.warnings) process.stderr.write(`layerfs: warning: ${w}\n`);
}

export interface MountName {
  source: string;    // fsname: the SOURCE argument (what /proc/mounts shows first)
  subtype: string;   // fuse.<subtype> in /proc/mounts
}

export function overlayMount(mnt: string, optionLists: string[], debug: boolean,
  name: MountName = { source: 'layerfs', subtype: 'layerfs' }): Mountable {
  const cfg = config(optionLists);
  const v = validate(cfg, mnt);
  const id = identity();
  const layers: Layer[] = [];
  let workFd = -1;
  let indexFd = -1;
  const writable = v.upper !== null && !cfg.ro;
  if (v.upper) layers.push(openLayer(0, v.upper, writable));
  for (const l of v.lowers) layers.push(openLayer(layers.length, l, false));
  assignFsIndexes(layers);
  const passthrough = cfg.passthrough > 0 && privateLowerMounts(layers, cfg.passthrough === 2);
  let format: WhiteoutFormat = { charDevice: id.root, ns: id.root ? 'trusted' : 'user' };
  if (v.work && writable) {
    // workdir/work, emptied at mount: leftovers of an interrupted copy-up never show
    const wfd = check(native.openat(AT_FDCWD, v.work, O_PATH | O_DIRECTORY, 0));
    removeTree(wfd, 'work');
    check(native.mkdirat(wfd, 'work', 0o700));
    workFd = check(native.openat(wfd, 'work', O_PATH | O_DIRECTORY, 0));
    // copied-up lower hard links, kept across mounts (the kernel's own index dir is 'index')
    native.mkdirat(wfd, 'layerfs-index', 0o700);
    indexFd = check(native.openat(wfd, 'layerfs-index', O_PATH | O_DIRECTORY, 0));
    native.close(wfd);
    format = probeFormat(workFd, id.root);
  }
  const union = new Union(layers, workFd, {
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
  }, id, native.raiseNofile(), indexFd);
  const fsname = (cfg.fsname ?? name.source).replace(/,/g, '_');
  const mountOptions = [`fsname=${fsname}`, `subtype=${name.subtype}`, 'default_permissions'];
  if (id.root) mountOptions.push('allow_other');
  if (!writable) mountOptions.push('ro');
  mountOptions.push(...cfg.kernelOptions);
  return {
    fs: union,
    mountpoint: v.mountpoint,
    session: {
      mountOptions, entryTimeout: cfg.timeout, attrTimeout: cfg.timeout, negativeTimeout: cfg.timeout,
      writeback: cfg.writeback, debug, readdirplus: 2, threads: cfg.threads, asyncDio: true,
      passthrough: passthrough ? cfg.passthrough : 0, uring: cfg.uring, stackDepth: stackDepth(layers.map((l) => l.path)),
      posixAcl: false, noOpendir: cfg.timeout >= 3600,
    },
  };
}

