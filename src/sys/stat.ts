// A stat is a Float64Array in the layout the native addon reads and writes (native/src/sys.c
// stat_to, session.c stat_from): no object is built per stat on the hot path.
import { S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from './constants';

export const ST_INO = 0;
export const ST_MODE = 1;
export const ST_NLINK = 2;
export const ST_UID = 3;
export const ST_GID = 4;
export const ST_RDEV = 5;
export const ST_SIZE = 6;
export const ST_BLKSIZE = 7;
export const ST_BLOCKS = 8;
export const ST_ATIME = 9;
export const ST_ATIME_NS = 10;
export const ST_MTIME = 11;
export const ST_MTIME_NS = 12;
export const ST_CTIME = 13;
export const ST_CTIME_NS = 14;
export const ST_DEV = 15;
export const STAT_LEN = 16;

export type Stat = Float64Array;

export function newStat(): Stat {
  return new Float64Array(STAT_LEN);
}

export const isDir = (st: Stat): boolean => (st[ST_MODE] & S_IFMT) === S_IFDIR;
export const isReg = (st: Stat): boolean => (st[ST_MODE] & S_IFMT) === S_IFREG;
export const isLink = (st: Stat): boolean => (st[ST_MODE] & S_IFMT) === S_IFLNK;
export const fileType = (st: Stat): number => st[ST_MODE] & S_IFMT;

export const STATFS_LEN = 11;
