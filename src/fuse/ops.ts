// Operation codes shared with native/src/session.c, and the numeric argument slots of a job.
export const OP = {
  INIT: 1, ENDED: 3,
  LOOKUP: 10, FORGET: 11, GETATTR: 12, SETATTR: 13, READLINK: 14, MKNOD: 15, MKDIR: 16,
  UNLINK: 17, RMDIR: 18, SYMLINK: 19, RENAME: 20, LINK: 21, OPEN: 22, CREATE: 23, OPENDIR: 24,
  READDIR: 25, READDIRPLUS: 26, RELEASEDIR: 27, FSYNCDIR: 28, STATFS: 29, SETXATTR: 30,
  GETXATTR: 31, LISTXATTR: 32, REMOVEXATTR: 33, ACCESS: 34,
  READ: 40, WRITE: 41, FLUSH: 42, RELEASE: 43, FSYNC: 44, FALLOCATE: 45,
} as const;

// jobArgs slots: A_INO is the node (or parent); A_UID/A_GID/A_PID the caller; A_1.. per op.
export const A_INO = 0, A_UID = 1, A_GID = 2, A_PID = 3, A_1 = 4, A_2 = 5, A_3 = 6, A_4 = 7;
export const A_UMASK = 14, A_SID = 15;

export const SETATTR = {
  MODE: 1 << 0, UID: 1 << 1, GID: 1 << 2, SIZE: 1 << 3, ATIME: 1 << 4, MTIME: 1 << 5,
  ATIME_NOW: 1 << 7, MTIME_NOW: 1 << 8, CTIME: 1 << 10,
} as const;

export const ROOT_ID = 1;
