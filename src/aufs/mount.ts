// aufs mode: branches as the union engine's layers (the rw branch on top), with aufs's policy —
// its whiteouts (hard links to `.wh..wh.aufs`), its opaque marker, its reserved `.wh.` names and
// 242-byte names, its work dirs inside the rw branch (`.wh..wh.orph`, hidden as aufs's own), no
// branch inside another.
import { native } from '../sys/native';
import { check } from '../sys/errors';
import { E, O_CREAT, O_EXCL, O_NOFOLLOW, O_WRONLY } from '../sys/constants';
import type { Mountable } from '../mount/lifecycle';
import { UsageError } from '../mount/validate';
import { closeDirs, openLocal, within, type Dir, type Want } from '../mount/dirs';
import { checkOpened, overlayBuild, wanted, type ModePolicy } from '../overlay/mount';
import { AUFS_BASE, aufsCodec } from '../union/whiteout';
import { AUFS_NAME_MAX, aufsConfig, branchRow, type AufsConfig } from './options';
import { applyVerb } from './control';
import { aufsPlacement } from './placement';
import type { Union } from '../union/union';

const PLNK = '.wh..wh.plnk';

function branchesApart(v: { lowers: Dir[]; upper: Dir | null }): void {
  const all = [...(v.upper ? [v.upper] : []), ...v.lowers];
  for (let i = 0; i < all.length; i++) {
    for (let j = 0; j < all.length; j++) {
      if (i !== j && within(all[i], all[j])) {
        throw new UsageError(all[i].path === all[j].path ? `branch ${all[i].path} is given twice` : `branches overlap: ${all[i].path} is inside ${all[j].path}`);
      }
    }
  }
}

/** aufs's own entries in the rw branch: the whiteout base and the pseudo-link dir. */
export function prepareBranch(fd: number): void {
  const b = native.openat(fd, AUFS_BASE, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW, 0o444);
  if (b >= 0) native.close(b);
  else if (b !== -E.EEXIST) check(b);
  const r = native.mkdirat(fd, PLNK, 0o700);
  if (r < 0 && r !== -E.EEXIST) check(r);
}

export const AUFS_POLICY: ModePolicy = {
  workInUpper: true,
  workName: '.wh..wh.orph',
  indexName: '.wh..wh.layerfs-index',
  validate: branchesApart,
  prepareUpper: prepareBranch,
  codec: aufsCodec,
  nameMax: AUFS_NAME_MAX,
  reservedWh: true,
  followRedirects: false,
};

/** The dirs an aufs mount needs opened (branches, mountpoint): named "branch" in messages. */
export function aufsPrepare(mnt: string, optionLists: string[]): { cfg: AufsConfig; wants: Want[] } {
  const cfg = aufsConfig(optionLists);
  const wants = wanted(cfg.overlay, mnt).map((w) => (w.what === 'lowerdir' || w.what === 'upperdir' ? { ...w, what: 'branch' } : w));
  return { cfg, wants };
}

/** The xattr names that tell which branch holds a path (and the branch table, on the root). */
export const INTROSPECT_PREFIX = 'user.aufs.';
/** The control file in the mount's root (its xattrs are the root's: si, ctl, error, settled). */
export const CONTROL_FILE = '.layerfs';

/** Builds the union over dirs opened by whoever asked (this process, or the helper for the service). */
export function aufsBuild(cfg: AufsConfig, dirs: Dir[], debug: boolean, source: string, local: boolean): Mountable {
  const table = cfg.branches.map((b) => branchRow(b));
  // the opener's view of each branch path (the helper resolves them as the caller)
  // (opened in the overlay order: the lowers, then the rw branch)
  const opened = dirs.filter((d) => d.what === 'branch');
  const ordered = cfg.branches[0].perm === 'rw' ? [...opened.slice(-1), ...opened.slice(0, -1)] : opened;
  if (ordered.length === table.length) ordered.forEach((d, i) => { table[i].path = d.path; });
  const introspect: NonNullable<ModePolicy['introspect']> = { prefix: INTROSPECT_PREFIX, table, fileName: CONTROL_FILE };
  const m = overlayBuild(cfg.overlay, dirs, debug, { source, subtype: 'layerfs-aufs' }, local,
    { ...AUFS_POLICY, introspect, alwaysOpaque: cfg.alwaysOpaque, statfsSum: cfg.statfsSum, writableLowers: cfg.rwLowers, showWhiteouts: cfg.showWhiteouts,
      followRedirects: cfg.dirren,
      placement: (layers) => aufsPlacement(layers, cfg.create, cfg.cpup) });
  introspect.control = (verb) => applyVerb(m.fs as Union, table, m.mountpoint, verb);
  return m;
}

function withDirs<T>(mnt: string, optionLists: string[], fn: (cfg: AufsConfig, dirs: Dir[]) => T): T {
  const { cfg, wants } = aufsPrepare(mnt, optionLists);
  const dirs = openLocal(wants);
  try {
    return fn(cfg, dirs);
  } finally {
    closeDirs(dirs);
  }
}

/** Checks everything an aufs mount needs, touching nothing. */
export function aufsCheck(mnt: string, optionLists: string[]): void {
  const warnings = withDirs(mnt, optionLists, (cfg, dirs) => {
    checkOpened(cfg.overlay, dirs, AUFS_POLICY);
    return cfg.overlay.warnings;
  });
  for (const w of warnings) process.stderr.write(`layerfs: warning: ${w}\n`);
}

export function aufsMount(mnt: string, optionLists: string[], debug: boolean, source = 'none'): Mountable {
  return withDirs(mnt, optionLists, (cfg, dirs) => aufsBuild(cfg, dirs, debug, source, true));
}
