// The FUSE connection itself: mount, INIT, replies, notifications, backing ids. See conn.h.
#define _GNU_SOURCE
#include "conn.h"
#include "uring.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <spawn.h>
#include <pthread.h>
#include <unistd.h>

int conn_mount(struct conn *c, const char *mnt, char *err, size_t errlen) {
  snprintf(c->mountpoint, sizeof c->mountpoint, "%s", mnt);
  c->fd = fm_mount(&c->opts, mnt, &c->by_fusermount, err, errlen);
  return c->fd < 0 ? -1 : 0;
}

void conn_unmount(struct conn *c) {
  if (!c->mountpoint[0]) return;
  fm_unmount(c->mountpoint, c->by_fusermount);
  c->mountpoint[0] = 0;
}

int conn_clone_fd(struct conn *c) {
  int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (fd < 0) return -1;
  uint32_t master = (uint32_t)c->fd;
  if (ioctl(fd, FUSE_DEV_IOC_CLONE, &master) < 0) { close(fd); return -1; }
  return fd;
}

// ---- INIT ----
int conn_init(struct conn *c, struct req *r, const struct fuse_init_in *in, char *err, size_t errlen) {
  struct fuse_init_out out;
  memset(&out, 0, sizeof out);
  out.major = FUSE_KERNEL_VERSION;
  if (in->major != FUSE_KERNEL_VERSION || in->minor < LFS_MIN_MINOR) {
    snprintf(err, errlen, "the kernel speaks FUSE %u.%u; layerfs needs 7.%d or later", in->major, in->minor, LFS_MIN_MINOR);
    out.minor = LFS_MAX_MINOR;
    reply_buf(r, &out, sizeof out);   // a major mismatch: the kernel tries again or gives up
    return -EPROTO;
  }
  unsigned cap = c->want.max_minor && c->want.max_minor < LFS_MAX_MINOR ? c->want.max_minor : LFS_MAX_MINOR;
  c->minor = in->minor < cap ? in->minor : cap;
  uint64_t offered = in->flags | ((in->flags & FUSE_INIT_EXT) && c->minor >= 36 ? (uint64_t)in->flags2 << 32 : 0);
  if (c->minor < 39) offered &= ~FUSE_DIRECT_IO_ALLOW_MMAP;
  if (c->minor < 40) offered &= ~FUSE_PASSTHROUGH;
  uint64_t want = c->want.flags | FUSE_BIG_WRITES | FUSE_MAX_PAGES | (c->minor >= 36 ? FUSE_INIT_EXT : 0);
  int pt = c->want.passthrough && (offered & FUSE_PASSTHROUGH) && !(want & FUSE_WRITEBACK_CACHE);
  if (c->want.passthrough == 2 && !pt) {
    snprintf(err, errlen, "passthrough=on: the kernel does not offer FUSE passthrough (protocol 7.%u; it needs 7.40, Linux 6.9)", c->minor);
    reply_err(r, EPROTO);
    return -EPROTO;
  }
  if (pt) want |= FUSE_PASSTHROUGH;
  if (c->minor < 42) offered &= ~FUSE_OVER_IO_URING;
  int ur = c->want.uring && (offered & FUSE_OVER_IO_URING);
  if (c->want.uring == 2 && !ur) {
    snprintf(err, errlen, "uring=on: the kernel does not offer FUSE over io_uring (protocol 7.%u; it needs 7.42, Linux 6.14, and the fuse module's enable_uring parameter)", c->minor);
    reply_err(r, EPROTO);
    return -EPROTO;
  }
  if (ur) want |= FUSE_OVER_IO_URING;
  c->flags = want & offered;
  c->passthrough = pt;
  c->uring = ur;
  unsigned page = (unsigned)sysconf(_SC_PAGESIZE);
  unsigned max_write = c->want.max_write;   // the session sized its buffers for it
  out.minor = c->minor;
  out.max_readahead = c->want.max_readahead && c->want.max_readahead < in->max_readahead ? c->want.max_readahead : in->max_readahead;
  out.flags = (uint32_t)c->flags;
  out.flags2 = (uint32_t)(c->flags >> 32);
  out.max_background = 128;
  out.congestion_threshold = 96;
  out.max_write = max_write;
  out.time_gran = 1;
  out.max_pages = (uint16_t)((max_write + page - 1) / page);
  out.max_stack_depth = pt ? (uint32_t)(c->want.stack_depth > 0 ? c->want.stack_depth : 1) : 0;
  // a reply shorter than the kernel's struct is fine (the kernel zero-fills); minors before
  // 7.23 take 24 bytes
  return reply_buf(r, &out, c->minor < 23 ? 24 : sizeof out);
}

// ---- replies ----
static int send_iov(int fd, struct iovec *iov, int n) {
  ssize_t total = 0;
  for (int i = 0; i < n; i++) total += (ssize_t)iov[i].iov_len;
  ssize_t w;
  do w = writev(fd, iov, n); while (w < 0 && errno == EINTR);
  if (w < 0) return -errno;
  return w == total ? 0 : -EIO;
}

// A reply through io_uring: the arguments are copied into the entry's payload buffer.
static int ring_reply(struct req *r, struct iovec *iov, int n) {
  size_t len = 0;
  for (int i = 1; i < n; i++) {
    if (len + iov[i].iov_len > r->ent->payload_sz) { len = (size_t)-1; break; }
    memcpy(r->ent->payload + len, iov[i].iov_base, iov[i].iov_len);
    len += iov[i].iov_len;
  }
  int res = len == (size_t)-1 ? uring_commit(r->ent, r->unique, -EIO, 0) : uring_commit(r->ent, r->unique, 0, len);
  free(r);
  return res;
}

void *reply_space(struct req *r, size_t n) { return r->ent && n <= r->ent->payload_sz ? r->ent->payload : NULL; }

int reply_filled(struct req *r, size_t n) {
  int res = uring_commit(r->ent, r->unique, 0, n);
  free(r);
  return res;
}

int reply_iov(struct req *r, struct iovec *iov, int n) {
  if (r->ent) return ring_reply(r, iov, n);
  struct fuse_out_header h = { 0, 0, r->unique };
  size_t len = sizeof h;
  for (int i = 1; i < n; i++) len += iov[i].iov_len;
  h.len = (uint32_t)len;
  iov[0].iov_base = &h;
  iov[0].iov_len = sizeof h;
  int res = send_iov(r->fd, iov, n);
  free(r);
  return res;
}

int reply_err(struct req *r, int err) {
  if (r->ent) {
    int res = uring_commit(r->ent, r->unique, -err, 0);
    free(r);
    return res;
  }
  struct fuse_out_header h = { sizeof h, -err, r->unique };
  struct iovec iov = { &h, sizeof h };
  int res = send_iov(r->fd, &iov, 1);
  free(r);
  return res;
}

void reply_none(struct req *r) {
  if (r->ent) uring_commit(r->ent, r->unique, -EIO, 0);   // a ring entry must come back
  free(r);
}

int reply_buf(struct req *r, const void *data, size_t len) {
  struct iovec iov[2] = { { NULL, 0 }, { (void *)data, len } };
  return reply_iov(r, iov, len ? 2 : 1);
}

static void timeout_split(double t, uint64_t *sec, uint32_t *nsec) {
  if (t < 0) t = 0;
  if (t > 1e18) t = 1e18;
  *sec = (uint64_t)t;
  *nsec = (uint32_t)((t - (double)*sec) * 1e9);
}

static void fill_attr(struct fuse_attr *a, const struct stat *st) {
  memset(a, 0, sizeof *a);
  a->ino = st->st_ino; a->mode = st->st_mode; a->nlink = (uint32_t)st->st_nlink;
  a->uid = st->st_uid; a->gid = st->st_gid; a->rdev = (uint32_t)st->st_rdev;
  a->size = (uint64_t)st->st_size; a->blksize = (uint32_t)st->st_blksize; a->blocks = (uint64_t)st->st_blocks;
  a->atime = (uint64_t)st->st_atim.tv_sec; a->atimensec = (uint32_t)st->st_atim.tv_nsec;
  a->mtime = (uint64_t)st->st_mtim.tv_sec; a->mtimensec = (uint32_t)st->st_mtim.tv_nsec;
  a->ctime = (uint64_t)st->st_ctim.tv_sec; a->ctimensec = (uint32_t)st->st_ctim.tv_nsec;
}

static void fill_entry(struct fuse_entry_out *e, uint64_t nodeid, uint64_t gen, double eto, double ato, const struct stat *st) {
  memset(e, 0, sizeof *e);
  e->nodeid = nodeid;
  e->generation = gen;
  timeout_split(eto, &e->entry_valid, &e->entry_valid_nsec);
  timeout_split(ato, &e->attr_valid, &e->attr_valid_nsec);
  if (nodeid) fill_attr(&e->attr, st);   // nodeid 0: a negative entry, cached for entry_valid
}

int reply_entry(struct req *r, uint64_t nodeid, uint64_t gen, double eto, double ato, const struct stat *st) {
  struct fuse_entry_out e;
  fill_entry(&e, nodeid, gen, eto, ato, st);
  return reply_buf(r, &e, sizeof e);
}

int reply_attr(struct req *r, const struct stat *st, double timeout) {
  struct fuse_attr_out a;
  memset(&a, 0, sizeof a);
  timeout_split(timeout, &a.attr_valid, &a.attr_valid_nsec);
  fill_attr(&a.attr, st);
  return reply_buf(r, &a, sizeof a);
}

int reply_open(struct req *r, uint64_t fh, uint32_t open_flags, int32_t backing_id) {
  struct fuse_open_out o = { fh, open_flags, backing_id };
  return reply_buf(r, &o, sizeof o);
}

int reply_create(struct req *r, uint64_t nodeid, uint64_t gen, double eto, double ato, const struct stat *st,
                 uint64_t fh, uint32_t open_flags, int32_t backing_id) {
  struct { struct fuse_entry_out e; struct fuse_open_out o; } out;
  fill_entry(&out.e, nodeid, gen, eto, ato, st);
  out.o = (struct fuse_open_out){ fh, open_flags, backing_id };
  return reply_buf(r, &out, sizeof out);
}

int reply_write(struct req *r, size_t n) {
  struct fuse_write_out w = { (uint32_t)n, 0 };
  return reply_buf(r, &w, sizeof w);
}

int reply_xattr_size(struct req *r, size_t n) {
  struct fuse_getxattr_out g = { (uint32_t)n, 0 };
  return reply_buf(r, &g, sizeof g);
}

int reply_statfs(struct req *r, const struct statvfs *s) {
  struct fuse_statfs_out o;
  memset(&o, 0, sizeof o);
  o.st.blocks = s->f_blocks; o.st.bfree = s->f_bfree; o.st.bavail = s->f_bavail;
  o.st.files = s->f_files; o.st.ffree = s->f_ffree; o.st.bsize = (uint32_t)s->f_bsize;
  o.st.namelen = (uint32_t)s->f_namemax; o.st.frsize = (uint32_t)s->f_frsize;
  return reply_buf(r, &o, sizeof o);
}

int reply_lseek(struct req *r, uint64_t off) {
  struct fuse_lseek_out o = { off };
  return reply_buf(r, &o, sizeof o);
}

// One pipe per thread for spliced replies, as large as a request can be.
static __thread int spipe[2] = { -1, -1 };
static __thread size_t spipe_size;

static int splice_pipe(size_t need) {
  if (spipe[0] < 0) {
    if (pipe2(spipe, O_CLOEXEC | O_NONBLOCK) < 0) return -1;
    int sz = fcntl(spipe[0], F_SETPIPE_SZ, 1 << 21);   // 2 MiB: a 1 MiB read and its header
    spipe_size = sz > 0 ? (size_t)sz : 65536;
  }
  return need <= spipe_size ? 0 : -1;
}

static void splice_drain(void) {
  char buf[65536];
  while (read(spipe[0], buf, sizeof buf) > 0) {}
}

int reply_splice(struct req *r, int fd, size_t size, off_t off) {
  if (r->ent) return 1;   // io_uring: the caller reads straight into the entry's buffer
  struct stat st;
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) return 1;
  size_t len = off >= st.st_size ? 0 : (size_t)(st.st_size - off) < size ? (size_t)(st.st_size - off) : size;
  struct fuse_out_header h = { (uint32_t)(sizeof h + len), 0, r->unique };
  if (len < 65536 || splice_pipe(sizeof h + len) < 0) return 1;   // small reads: one copy is cheaper
  struct iovec iov = { &h, sizeof h };
  if (vmsplice(spipe[1], &iov, 1, 0) != (ssize_t)sizeof h) { splice_drain(); return 1; }
  loff_t pos = off;
  size_t got = 0;
  while (got < len) {
    ssize_t n = splice(fd, &pos, spipe[1], NULL, len - got, SPLICE_F_MOVE);
    if (n <= 0) break;
    got += (size_t)n;
  }
  if (got != len) { splice_drain(); return 1; }   // the file changed size: the caller copies
  ssize_t w = splice(spipe[0], NULL, r->fd, NULL, sizeof h + len, SPLICE_F_MOVE);
  if (w != (ssize_t)(sizeof h + len)) {
    int e = w < 0 ? errno : EIO;   // ENOENT: the request was interrupted
    splice_drain();
    free(r);
    return -e;
  }
  free(r);
  return 0;
}

// ---- notifications ----
static int notify(struct conn *c, int code, const void *arg, size_t len, const char *name) {
  struct fuse_out_header h = { 0, code, 0 };
  struct iovec iov[3] = { { &h, sizeof h }, { (void *)arg, len }, { (void *)name, name ? strlen(name) + 1 : 0 } };
  int n = name ? 3 : 2;
  h.len = (uint32_t)(sizeof h + len + iov[2].iov_len);
  return send_iov(c->fd, iov, n);
}

int notify_inval_entry(struct conn *c, uint64_t parent, const char *name) {
  struct fuse_notify_inval_entry_out o = { parent, (uint32_t)strlen(name), 0 };
  return notify(c, FUSE_NOTIFY_INVAL_ENTRY, &o, sizeof o, name);
}

int notify_inval_inode(struct conn *c, uint64_t ino, int64_t off, int64_t len) {
  struct fuse_notify_inval_inode_out o = { ino, off, len };
  return notify(c, FUSE_NOTIFY_INVAL_INODE, &o, sizeof o, NULL);
}

int notify_delete(struct conn *c, uint64_t parent, uint64_t child, const char *name) {
  struct fuse_notify_delete_out o = { parent, child, (uint32_t)strlen(name), 0 };
  return notify(c, FUSE_NOTIFY_DELETE, &o, sizeof o, name);
}

// ---- passthrough: one io mode per inode ----
struct inode_io {
  struct inode_io *next;
  uint64_t nodeid;
  enum io_mode mode;           // IO_PASSTHROUGH or IO_CACHED
  int32_t backing_id;
  dev_t dev;                   // the backing file
  ino_t ino;
  unsigned refs;               // open handles in this mode
};
static pthread_mutex_t io_lock = PTHREAD_MUTEX_INITIALIZER;

static struct inode_io **io_slot(struct conn *c, uint64_t nodeid) {
  struct inode_io **p = &c->io[nodeid & 255];
  while (*p && (*p)->nodeid != nodeid) p = &(*p)->next;
  return p;
}

enum io_mode io_open(struct conn *c, uint64_t nodeid, int fd, int want_passthrough, int32_t *backing_id) {
  *backing_id = 0;
  struct stat st;
  if (fstat(fd, &st) < 0) return IO_CACHED;
  pthread_mutex_lock(&io_lock);
  struct inode_io **p = io_slot(c, nodeid), *e = *p;
  enum io_mode m;
  if (e) {
    if (e->mode == IO_CACHED) m = IO_CACHED;
    else if (want_passthrough && e->dev == st.st_dev && e->ino == st.st_ino) { m = IO_PASSTHROUGH; *backing_id = e->backing_id; }
    else m = IO_CONFLICT;
  } else {
    struct fuse_backing_map map = { fd, 0, 0 };
    int id = want_passthrough ? ioctl(c->fd, FUSE_DEV_IOC_BACKING_OPEN, &map) : -1;
    e = calloc(1, sizeof *e);
    if (!e) { pthread_mutex_unlock(&io_lock); if (id > 0) { uint32_t v = (uint32_t)id; ioctl(c->fd, FUSE_DEV_IOC_BACKING_CLOSE, &v); } return IO_CONFLICT; }
    e->nodeid = nodeid;
    e->mode = id > 0 ? IO_PASSTHROUGH : IO_CACHED;   // not wanted, or refused (ELOOP, EPERM...)
    e->backing_id = id > 0 ? id : 0;
    e->dev = st.st_dev;
    e->ino = st.st_ino;
    *p = e;
    m = e->mode;
    *backing_id = e->backing_id;
  }
  if (m != IO_CONFLICT) e->refs++;
  pthread_mutex_unlock(&io_lock);
  return m;
}

void io_release(struct conn *c, uint64_t nodeid, enum io_mode m) {
  if (m == IO_CONFLICT) return;
  pthread_mutex_lock(&io_lock);
  struct inode_io **p = io_slot(c, nodeid), *e = *p;
  if (e && e->mode == m && --e->refs == 0) {
    *p = e->next;
    if (e->backing_id > 0) {
      uint32_t v = (uint32_t)e->backing_id;
      ioctl(c->fd, FUSE_DEV_IOC_BACKING_CLOSE, &v);
    }
    free(e);
  }
  pthread_mutex_unlock(&io_lock);
}
