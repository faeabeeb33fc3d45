// The FUSE wire protocol as layerfs speaks it: request and reply layouts, opcodes, flags and
// device ioctls, after the kernel's include/uapi/linux/fuse.h. Each field or flag names the
// protocol minor (7.x) it came in; layerfs needs 7.31 at least and uses newer parts only when
// the kernel offers them in INIT.
#pragma once
#include <stdint.h>
#include <sys/ioctl.h>

#define FUSE_KERNEL_VERSION 7
#define LFS_MAX_MINOR 42        // what layerfs speaks: passthrough (7.40), FUSE over io_uring (7.42)
#define LFS_MIN_MINOR 31
#define FUSE_ROOT_ID 1
#define FUSE_MIN_READ_BUFFER 8192

enum fuse_opcode {
  FUSE_LOOKUP = 1, FUSE_FORGET = 2, FUSE_GETATTR = 3, FUSE_SETATTR = 4, FUSE_READLINK = 5,
  FUSE_SYMLINK = 6, FUSE_MKNOD = 8, FUSE_MKDIR = 9, FUSE_UNLINK = 10, FUSE_RMDIR = 11,
  FUSE_RENAME = 12, FUSE_LINK = 13, FUSE_OPEN = 14, FUSE_READ = 15, FUSE_WRITE = 16,
  FUSE_STATFS = 17, FUSE_RELEASE = 18, FUSE_FSYNC = 20, FUSE_SETXATTR = 21, FUSE_GETXATTR = 22,
  FUSE_LISTXATTR = 23, FUSE_REMOVEXATTR = 24, FUSE_FLUSH = 25, FUSE_INIT = 26, FUSE_OPENDIR = 27,
  FUSE_READDIR = 28, FUSE_RELEASEDIR = 29, FUSE_FSYNCDIR = 30, FUSE_GETLK = 31, FUSE_SETLK = 32,
  FUSE_SETLKW = 33, FUSE_ACCESS = 34, FUSE_CREATE = 35, FUSE_INTERRUPT = 36 /* 7.7 */,
  FUSE_BMAP = 37, FUSE_DESTROY = 38 /* 7.8 */, FUSE_IOCTL = 39, FUSE_POLL = 40,
  FUSE_NOTIFY_REPLY = 41, FUSE_BATCH_FORGET = 42 /* 7.16 */, FUSE_FALLOCATE = 43 /* 7.19 */,
  FUSE_READDIRPLUS = 44 /* 7.21 */, FUSE_RENAME2 = 45 /* 7.23 */, FUSE_LSEEK = 46 /* 7.24 */,
  FUSE_COPY_FILE_RANGE = 47 /* 7.28 */, FUSE_SYNCFS = 50 /* 7.34 */, FUSE_TMPFILE = 51 /* 7.37 */,
  FUSE_STATX = 52 /* 7.39 */,
};

enum fuse_notify_code {
  FUSE_NOTIFY_INVAL_INODE = 2 /* 7.12 */, FUSE_NOTIFY_INVAL_ENTRY = 3 /* 7.12 */,
  FUSE_NOTIFY_DELETE = 6 /* 7.18 */,
};

// INIT flags (flags: bits 0-31; flags2: bits 32-63, from 7.36 with FUSE_INIT_EXT)
#define FUSE_ASYNC_READ (1ULL << 0)
#define FUSE_ATOMIC_O_TRUNC (1ULL << 3)
#define FUSE_EXPORT_SUPPORT (1ULL << 4)
#define FUSE_BIG_WRITES (1ULL << 5)
#define FUSE_DONT_MASK (1ULL << 6)            // 7.12
#define FUSE_AUTO_INVAL_DATA (1ULL << 12)     // 7.20
#define FUSE_DO_READDIRPLUS (1ULL << 13)      // 7.21
#define FUSE_READDIRPLUS_AUTO (1ULL << 14)    // 7.21
#define FUSE_ASYNC_DIO (1ULL << 15)           // 7.22
#define FUSE_WRITEBACK_CACHE (1ULL << 16)     // 7.23
#define FUSE_PARALLEL_DIROPS (1ULL << 18)     // 7.25
#define FUSE_HANDLE_KILLPRIV (1ULL << 19)     // 7.26
#define FUSE_POSIX_ACL (1ULL << 20)           // 7.26
#define FUSE_ABORT_ERROR (1ULL << 21)         // 7.27
#define FUSE_MAX_PAGES (1ULL << 22)           // 7.28
#define FUSE_CACHE_SYMLINKS (1ULL << 23)      // 7.28
#define FUSE_INIT_EXT (1ULL << 30)            // 7.36
#define FUSE_DIRECT_IO_ALLOW_MMAP (1ULL << 36) // 7.39
#define FUSE_PASSTHROUGH (1ULL << 37)         // 7.40
#define FUSE_OVER_IO_URING (1ULL << 41)       // 7.42

// OPEN reply flags
#define FOPEN_DIRECT_IO (1 << 0)
#define FOPEN_KEEP_CACHE (1 << 1)
#define FOPEN_NONSEEKABLE (1 << 2)            // 7.10
#define FOPEN_CACHE_DIR (1 << 3)              // 7.28
#define FOPEN_NOFLUSH (1 << 5)                // 7.35
#define FOPEN_PASSTHROUGH (1 << 7)            // 7.40

#define FUSE_GETATTR_FH (1 << 0)              // 7.9
#define FUSE_FSYNC_FDATASYNC (1 << 0)
#define FATTR_FH (1 << 6)

struct fuse_attr {
  uint64_t ino, size, blocks, atime, mtime, ctime;
  uint32_t atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev;
  uint32_t blksize;                           // 7.9
  uint32_t flags;                             // 7.32
};

struct fuse_kstatfs {
  uint64_t blocks, bfree, bavail, files, ffree;
  uint32_t bsize, namelen, frsize /* 7.4 */, padding, spare[6];
};

struct fuse_in_header {
  uint32_t len, opcode;
  uint64_t unique, nodeid;
  uint32_t uid, gid, pid;
  uint16_t total_extlen;                      // 7.38
  uint16_t padding;
};

struct fuse_out_header {
  uint32_t len;
  int32_t error;
  uint64_t unique;
};

struct fuse_init_in {
  uint32_t major, minor, max_readahead, flags;
  uint32_t flags2;                            // 7.36
  uint32_t unused[11];
};

struct fuse_init_out {
  uint32_t major, minor, max_readahead, flags;
  uint16_t max_background, congestion_threshold;   // 7.13
  uint32_t max_write;
  uint32_t time_gran;                         // 7.23
  uint16_t max_pages;                         // 7.28
  uint16_t map_alignment;                     // 7.31
  uint32_t flags2;                            // 7.36
  uint32_t max_stack_depth;                   // 7.40
  uint32_t unused[6];
};

struct fuse_entry_out {
  uint64_t nodeid, generation, entry_valid, attr_valid;
  uint32_t entry_valid_nsec, attr_valid_nsec;
  struct fuse_attr attr;
};

struct fuse_forget_in { uint64_t nlookup; };
struct fuse_forget_one { uint64_t nodeid, nlookup; };
struct fuse_batch_forget_in { uint32_t count, dummy; };              // 7.16
struct fuse_getattr_in { uint32_t getattr_flags, dummy; uint64_t fh; };   // 7.9
struct fuse_attr_out { uint64_t attr_valid; uint32_t attr_valid_nsec, dummy; struct fuse_attr attr; };
struct fuse_mknod_in { uint32_t mode, rdev, umask /* 7.12 */, padding; };
struct fuse_mkdir_in { uint32_t mode, umask; };
struct fuse_rename_in { uint64_t newdir; };
struct fuse_rename2_in { uint64_t newdir; uint32_t flags, padding; };   // 7.23
struct fuse_link_in { uint64_t oldnodeid; };

struct fuse_setattr_in {
  uint32_t valid, padding;
  uint64_t fh, size, lock_owner, atime, mtime, ctime /* 7.23 */;
  uint32_t atimensec, mtimensec, ctimensec, mode, unused4, uid, gid, unused5;
};

struct fuse_open_in { uint32_t flags, open_flags /* 7.33 */; };
struct fuse_create_in { uint32_t flags, mode, umask /* 7.12 */, open_flags /* 7.33 */; };
struct fuse_open_out { uint64_t fh; uint32_t open_flags; int32_t backing_id /* 7.40 */; };
struct fuse_release_in { uint64_t fh; uint32_t flags, release_flags; uint64_t lock_owner; };
struct fuse_flush_in { uint64_t fh; uint32_t unused, padding; uint64_t lock_owner; };
struct fuse_read_in { uint64_t fh, offset; uint32_t size, read_flags; uint64_t lock_owner; uint32_t flags, padding; };
struct fuse_write_in { uint64_t fh, offset; uint32_t size, write_flags; uint64_t lock_owner; uint32_t flags, padding; };
struct fuse_write_out { uint32_t size, padding; };
struct fuse_statfs_out { struct fuse_kstatfs st; };
struct fuse_fsync_in { uint64_t fh; uint32_t fsync_flags, padding; };
struct fuse_setxattr_in { uint32_t size, flags; };   // (7.33's longer form only with FUSE_SETXATTR_EXT)
struct fuse_getxattr_in { uint32_t size, padding; };
struct fuse_getxattr_out { uint32_t size, padding; };
struct fuse_access_in { uint32_t mask, padding; };
struct fuse_interrupt_in { uint64_t unique; };
struct fuse_fallocate_in { uint64_t fh, offset, length; uint32_t mode, padding; };
struct fuse_lseek_in { uint64_t fh, offset; uint32_t whence, padding; };
struct fuse_lseek_out { uint64_t offset; };
struct fuse_copy_file_range_in { uint64_t fh_in, off_in, nodeid_out, fh_out, off_out, len, flags; };

struct fuse_notify_inval_inode_out { uint64_t ino; int64_t off, len; };
struct fuse_notify_inval_entry_out { uint64_t parent; uint32_t namelen, flags /* 7.38 */; };
struct fuse_notify_delete_out { uint64_t parent, child; uint32_t namelen, padding; };

// /dev/fuse ioctls
#define FUSE_DEV_IOC_MAGIC 229
#define FUSE_DEV_IOC_CLONE _IOR(FUSE_DEV_IOC_MAGIC, 0, uint32_t)
struct fuse_backing_map { int32_t fd; uint32_t flags; uint64_t padding; };   // 7.40
#define FUSE_DEV_IOC_BACKING_OPEN _IOW(FUSE_DEV_IOC_MAGIC, 1, struct fuse_backing_map)
#define FUSE_DEV_IOC_BACKING_CLOSE _IOW(FUSE_DEV_IOC_MAGIC, 2, uint32_t)

// FUSE over io_uring (7.42): IORING_OP_URING_CMD on the /dev/fuse fd, 128-byte SQEs whose command
// area holds a fuse_uring_cmd_req. Each ring entry is a header buffer (fuse_uring_req_header)
// and a payload buffer of at least max_write bytes. A request's fuse_in_header arrives in in_out,
// its first (fixed-size) argument in op_in, the rest (names, write data) in the payload; a reply
// puts its fuse_out_header in in_out and its arguments in the payload.
#define FUSE_URING_IN_OUT_HEADER_SZ 128
#define FUSE_URING_OP_IN_OUT_SZ 128
enum fuse_uring_cmd { FUSE_IO_URING_CMD_REGISTER = 1, FUSE_IO_URING_CMD_COMMIT_AND_FETCH = 2 };
struct fuse_uring_ent_in_out { uint64_t flags, commit_id; uint32_t payload_sz, padding; uint64_t reserved; };
struct fuse_uring_req_header {
  char in_out[FUSE_URING_IN_OUT_HEADER_SZ];
  char op_in[FUSE_URING_OP_IN_OUT_SZ];
  struct fuse_uring_ent_in_out ring_ent_in_out;
};
struct fuse_uring_cmd_req { uint64_t flags, commit_id; uint16_t qid; uint8_t padding[6]; };
