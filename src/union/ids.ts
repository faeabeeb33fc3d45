// How owners and modes are shown and stored: uid/gid mappings (fuse-overlayfs's uidmapping /
// gidmapping: STORED:SHOWN:LEN — `outside` on disk, `inside` in the mount; unmapped ids show as the
// overflow id), squash_to_uid/gid, and with xattr_permissions the override_stat xattr
// containers-storage writes for rootless layers ("uid:gid:0mode[:type]").
import { FsError } from '../sys/errors';
import { E, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK } from '../sys/constants';
import { ST_GID, ST_MODE, ST_RDEV, ST_UID, type Stat } from '../sys/stat';
import { native } from '../sys/native';

export interface IdMapping {
  inside: number;
  outside: number;
  len: number;
}

export const OVERFLOW_ID = 65534;

/** The override xattrs read, in order; the first is what xattr_permissions=2 writes. */
export const OVERRIDE_XATTRS = ['user.containers.override_stat', 'user.fuseoverlayfs.override_stat', 'security.fuseoverlayfs.override_stat'];

export function isOverrideXattr(name: string): boolean {
  return OVERRIDE_XATTRS.includes(name);
}

export interface IdPolicy {
  uidMap: IdMapping[];
  gidMap: IdMapping[];
  squashUid: number | null;
  squashGid: number | null;
  xattrPermissions: 0 | 1 | 2;
}

function toInside(map: IdMapping[], id: number): number {
  if (!map.length) return id;
  for (const m of map) if (id >= m.outside && id < m.outside + m.len) return m.inside + (id - m.outside);
  return OVERFLOW_ID;
}

function toOutside(map: IdMapping[], id: number): number {
  if (!map.length) return id;
  for (const m of map) if (id >= m.inside && id < m.inside + m.len) return m.outside + (id - m.inside);
  throw new FsError(E.EINVAL);
}

const TYPES: Record<string, number> = { file: S_IFREG, dir: S_IFDIR, symlink: S_IFLNK, pipe: S_IFIFO, socket: S_IFSOCK };

export function parseOverride(v: string): { uid: number; gid: number; mode: number; type: number | null; rdev: number } | null {
  const f = v.split(':');
  if (f.length < 3) return null;
  const uid = Number(f[0]), gid = Number(f[1]), mode = parseInt(f[2], 8);
  if (![uid, gid, mode].every(Number.isFinite)) return null;
  let type: number | null = (mode & S_IFMT) || null, rdev = 0;
  if (f[3]) {
    const m = /^(char|block)-(\d+)-(\d+)$/.exec(f[3]);
    if (m) {
      type = m[1] === 'char' ? S_IFCHR : S_IFBLK;
      rdev = native.makedev(Number(m[2]), Number(m[3]));
    } else type = TYPES[f[3]] ?? type;
  }
  return { uid, gid, mode: mode & 0o7777, type, rdev };
}

export function formatOverride(uid: number, gid: number, mode: number): string {
  return `${uid}:${gid}:0${(mode & 0o7777).toString(8)}`;
}

export class Ids {
  constructor(readonly p: IdPolicy) {}

  get active(): boolean {
    const p = this.p;
    return p.uidMap.length > 0 || p.gidMap.length > 0 || p.squashUid !== null || p.squashGid !== null || p.xattrPermissions !== 0;
  }

  get overrideXattr(): string {
    return this.p.xattrPermissions === 1 ? OVERRIDE_XATTRS[2] : OVERRIDE_XATTRS[0];
  }

  /** Applies an override value read from the object, then the mapping and squash, to a stat. */
  present(st: Stat, override: string | null): void {
    if (override !== null && this.p.xattrPermissions) {
      const o = parseOverride(override);
      if (o) {
        st[ST_UID] = o.uid;
        st[ST_GID] = o.gid;
        const type = o.type ?? (st[ST_MODE] & S_IFMT);
        st[ST_MODE] = type | o.mode;
        if (o.rdev) st[ST_RDEV] = o.rdev;
      }
    }
    st[ST_UID] = this.p.squashUid ?? toInside(this.p.uidMap, st[ST_UID]);
    st[ST_GID] = this.p.squashGid ?? toInside(this.p.gidMap, st[ST_GID]);
  }

  storeUid(uid: number): number {
    return toOutside(this.p.uidMap, uid);
  }

  storeGid(gid: number): number {
    return toOutside(this.p.gidMap, gid);
  }
}
