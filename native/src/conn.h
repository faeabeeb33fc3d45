// One FUSE connection spoken by layerfs itself (no libfuse): the mount (mount(2) as root,
// fusermount3's fd hand-over otherwise), INIT negotiation, replies, notifications, passthrough
// backing ids and cloned fds for worker threads. Protocol layouts are in proto.h.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include "proto.h"
#include "fusemount.h"

struct ring_ent;

struct conn_want {             // what the filesystem would like; INIT keeps what the kernel offers
  uint64_t flags;
  unsigned max_write, max_readahead;
  int passthrough;             // 0 off, 1 when offered, 2 required
  int stack_depth;             // max_stack_depth for passthrough (1, or 2 over overlayfs/FUSE)
  unsigned max_minor;          // 0: LFS_MAX_MINOR; lower: behave as with an older kernel (tests)
  int uring;                   // FUSE over io_uring: 0 off, 1 when offered, 2 required
};

struct inode_io;                // the io mode of one FUSE inode (conn.c)

struct conn {
  int fd;                      // /dev/fuse of the JS thread's reader
  char mountpoint[4096];
  int by_fusermount;           // unmount through fusermount3
  struct conn_opts opts;
  struct conn_want want;
  unsigned minor;              // negotiated protocol minor
  uint64_t flags;              // negotiated flags (flags2 << 32 included)
  int passthrough;             // negotiated: opens may hand the kernel a backing file
  int uring;                   // negotiated: requests may come through io_uring (uring.h)
  size_t bufsize;              // a read buffer large enough for any request (set by the session)
  struct inode_io *io[256];    // io modes of open inodes, by node id
};

struct req {                   // one request in flight; freed by its reply
  struct conn *c;
  int fd;                      // the fd it came on: its reply goes there
  uint64_t unique, nodeid;
  uint32_t opcode, uid, gid, pid, umask;
  struct ring_ent *ent;        // came through io_uring: the reply goes in this entry
  uint32_t tag;                // the session's note on what the reply means (session.c)
};

// Opens /dev/fuse and mounts it at mnt; 0, or -1 with a message in err.
int conn_mount(struct conn *c, const char *mnt, char *err, size_t errlen);
void conn_unmount(struct conn *c);
// A new fd on the same connection for a worker thread (FUSE_DEV_IOC_CLONE), or -1.
int conn_clone_fd(struct conn *c);
// Answers INIT; 0, or -errno (the kernel refused the reply, or a required feature is missing).
int conn_init(struct conn *c, struct req *r, const struct fuse_init_in *in, char *err, size_t errlen);

// Replies: each frees r and returns 0, or -errno of the write (-ENOENT: the request was
// interrupted and the reply dropped).
int reply_err(struct req *r, int err);
int reply_iov(struct req *r, struct iovec *iov, int n);   // iov[0] is left for the header
int reply_buf(struct req *r, const void *data, size_t len);
int reply_entry(struct req *r, uint64_t nodeid, uint64_t gen, double entry_to, double attr_to, const struct stat *st);
int reply_attr(struct req *r, const struct stat *st, double timeout);
int reply_open(struct req *r, uint64_t fh, uint32_t open_flags, int32_t backing_id);
int reply_create(struct req *r, uint64_t nodeid, uint64_t gen, double entry_to, double attr_to,
                 const struct stat *st, uint64_t fh, uint32_t open_flags, int32_t backing_id);
int reply_write(struct req *r, size_t n);
int reply_xattr_size(struct req *r, size_t n);
int reply_statfs(struct req *r, const struct statvfs *s);
int reply_lseek(struct req *r, uint64_t off);
// The reply buffer of a request that came through io_uring (NULL otherwise, or when n bytes do
// not fit): the caller fills it and answers with reply_filled, saving a copy.
void *reply_space(struct req *r, size_t n);
int reply_filled(struct req *r, size_t n);
// Replies to a READ with size bytes of fd at off moved through a pipe (splice), without copying
// them through user space; 1 when it could not (a short read, a pipe too small): nothing was
// sent and r is still owned by the caller.
int reply_splice(struct req *r, int fd, size_t size, off_t off);
void reply_none(struct req *r);

// Notifications: 0, or -errno (-ENOENT: the kernel had nothing cached).
int notify_inval_entry(struct conn *c, uint64_t parent, const char *name);
int notify_inval_inode(struct conn *c, uint64_t ino, int64_t off, int64_t len);
int notify_delete(struct conn *c, uint64_t parent, uint64_t child, const char *name);

// Passthrough. The kernel keeps one io mode per inode: every open of an inode in passthrough
// mode must name the same backing file, and an inode with cached opens takes no passthrough
// open (the kernel fails it with EIO otherwise). io_open decides for one fd-backed open of
// nodeid: IO_PASSTHROUGH (id set; only when wanted), IO_CACHED, or IO_CONFLICT: the inode
// passes through a file this open cannot use (another file after a copy-up, or passthrough not
// wanted) — the open is answered ESTALE and the filesystem gives the name a new inode, which the
// VFS finds when it retries the open with LOOKUP_REVAL.
enum io_mode { IO_CONFLICT = 0, IO_PASSTHROUGH = 1, IO_CACHED = 2 };
enum io_mode io_open(struct conn *c, uint64_t nodeid, int fd, int want_passthrough, int32_t *backing_id);
// At release of a handle opened in mode m.
void io_release(struct conn *c, uint64_t nodeid, enum io_mode m);
