// Linux constants Node does not export (x86_64 / asm-generic values).
import { constants as fsc } from 'node:fs';
import { constants as osc } from 'node:os';

export const E = osc.errno;
export const O_RDONLY = fsc.O_RDONLY;
export const O_WRONLY = fsc.O_WRONLY;
export const O_RDWR = fsc.O_RDWR;
export const O_ACCMODE = 3;
export const O_CREAT = fsc.O_CREAT;
export const O_EXCL = fsc.O_EXCL;
export const O_TRUNC = fsc.O_TRUNC;
export const O_DSYNC = fsc.O_DSYNC;   // set by O_SYNC too
export const O_APPEND = fsc.O_APPEND;
export const O_DIRECTORY = fsc.O_DIRECTORY;
export const O_NOFOLLOW = fsc.O_NOFOLLOW;
export const O_NOCTTY = fsc.O_NOCTTY;
export const O_DIRECT = 0o40000;
export const O_PATH = 0o10000000;
export const O_NOATIME = 0o1000000;
export const O_CLOEXEC = 0o2000000;

export const AT_FDCWD = -100;
export const AT_SYMLINK_NOFOLLOW = 0x100;
export const AT_REMOVEDIR = 0x200;
export const AT_SYMLINK_FOLLOW = 0x400;
export const AT_EMPTY_PATH = 0x1000;

export const RESOLVE_NO_XDEV = 0x01;
export const RESOLVE_NO_MAGICLINKS = 0x02;
export const RESOLVE_NO_SYMLINKS = 0x04;
export const RESOLVE_BENEATH = 0x08;

export const RENAME_NOREPLACE = 1;
export const RENAME_EXCHANGE = 2;
export const RENAME_WHITEOUT = 4;

export const UTIME_NOW = (1 << 30) - 1;
export const UTIME_OMIT = (1 << 30) - 2;

export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;
export const S_ISUID = 0o4000;
export const S_ISGID = 0o2000;

export const XATTR_CREATE = 1;
export const XATTR_REPLACE = 2;

export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

export const MNT_FORCE = 1;
export const MNT_DETACH = 2;

export const FALLOC_FL_KEEP_SIZE = 1;
export const FALLOC_FL_PUNCH_HOLE = 2;

// flock(2)
export const LOCK_SH = 1, LOCK_EX = 2, LOCK_NB = 4;
// mount_setattr(2)
export const MOUNT_ATTR_RDONLY = 0x1, MOUNT_ATTR_NOATIME = 0x10, MOUNT_ATTR_STRICTATIME = 0x20, MOUNT_ATTR__ATIME = 0x70,
  MOUNT_ATTR_NODIRATIME = 0x80;
