// FUSE sessions. Worker threads (libfuse's multi-threaded loop, one cloned /dev/fuse fd
// each) read requests. The data path of open files (read, write, flush, release, fsync,
// fallocate, copy_file_range, lseek) is served right there in C. Every other request is
// queued for the JS thread, woken by one uv_async per batch; JS replies by request id.
#include "common.h"
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

// Operation codes shared with src/fuse/ops.ts.
enum {
  OP_INIT = 1, OP_ENDED = 3,
  OP_LOOKUP = 10, OP_FORGET, OP_GETATTR, OP_SETATTR, OP_READLINK, OP_MKNOD, OP_MKDIR,
  OP_UNLINK, OP_RMDIR, OP_SYMLINK, OP_RENAME, OP_LINK, OP_OPEN, OP_CREATE, OP_OPENDIR,
  OP_READDIR, OP_READDIRPLUS, OP_RELEASEDIR, OP_FSYNCDIR, OP_STATFS, OP_SETXATTR,
  OP_GETXATTR, OP_LISTXATTR, OP_REMOVEXATTR, OP_ACCESS,
  OP_READ = 40, OP_WRITE, OP_FLUSH, OP_RELEASE, OP_FSYNC, OP_FALLOCATE,
};

#define NARGS 16
#define MAX_SESSIONS 64

struct job {
  struct job *next;
  int op, sid;
  fuse_req_t req;
  double a[NARGS];
  char *s1, *s2;
  void *buf;
  size_t buflen;
};

struct session_cfg {
  int writeback, splice, readdirplus, cache_symlinks, parallel_dirops, async_dio;
  int posix_acl, killpriv, debug, threads, splice_read;
  unsigned max_write, max_readahead;
};

struct session {
  struct fuse_session *se;
  pthread_t thread;
  int has_thread;          // worker threads (libfuse mt loop on cloned fds) were started
  int running;
  uv_poll_t *poll;         // the JS thread's own reader of the session fd
  struct fuse_buf fbuf;    // request buffer of the JS-thread reader
  struct session_cfg cfg;
};

static struct session sessions[MAX_SESSIONS];

// ---- the queue to the JS thread ----
static pthread_mutex_t q_lock = PTHREAD_MUTEX_INITIALIZER;
static struct job *q_head, *q_tail;
static uv_async_t wake;
static int wake_ready;
static napi_env js_env;
static napi_ref js_dispatch, js_resource;
static napi_async_context js_async;
static double *job_args;      // Float64Array shared with JS: numeric args of the current job
static napi_ref job_args_ref;
static int live_sessions;

// Request ids are handed out on the JS thread only, so this table needs no lock.
static fuse_req_t *reqs;
static uint32_t *req_free;
static size_t req_cap, req_free_len, req_next;

static int32_t req_put(fuse_req_t r) {
  size_t id;
  if (req_free_len) id = req_free[--req_free_len];
  else {
    if (req_next == req_cap) {
      size_t cap = req_cap ? req_cap * 2 : 1024;
      fuse_req_t *n = realloc(reqs, cap * sizeof(*n));
      uint32_t *f = realloc(req_free, cap * sizeof(*f));
      if (!n || !f) return -1;
      reqs = n; req_free = f; req_cap = cap;
    }
    id = req_next++;
  }
  reqs[id] = r;
  return (int32_t)id;
}

static fuse_req_t req_take(napi_env env, napi_value v) {
  int32_t id;
  if (napi_get_value_int32(env, v, &id) != napi_ok || id < 0 || (size_t)id >= req_next || !reqs[id])
    return NULL;
  fuse_req_t r = reqs[id];
  reqs[id] = NULL;
  req_free[req_free_len++] = id;
  return r;
}

// While the JS thread processes requests it read itself, jobs run at once (no queue, no wake).
static pthread_t js_thread;
static int inline_mode;
static napi_value inline_fn, inline_global;
static void run_job(napi_env env, napi_value fn, napi_value global, struct job *j);
static void job_free(struct job *j);
static void open_inline_scopes(void);
static int inline_scopes;

static void enqueue(struct job *j) {
  if (inline_mode && pthread_equal(pthread_self(), js_thread)) {
    if (!inline_scopes) open_inline_scopes();
    run_job(js_env, inline_fn, inline_global, j);
    job_free(j);
    return;
  }
  pthread_mutex_lock(&q_lock);
  int was_empty = q_head == NULL;
  if (q_tail) q_tail->next = j; else q_head = j;
  q_tail = j;
  pthread_mutex_unlock(&q_lock);
  if (was_empty) uv_async_send(&wake);  // a non-empty queue already has a wake-up pending
}

static struct job *job_new(int op, fuse_req_t req, fuse_ino_t ino) {
  struct job *j = calloc(1, sizeof(*j));
  if (!j) { if (req) fuse_reply_err(req, ENOMEM); return NULL; }
  j->op = op;
  j->req = req;
  j->a[0] = (double)ino;
  if (req) {
    const struct fuse_ctx *c = fuse_req_ctx(req);
    j->a[1] = c->uid; j->a[2] = c->gid; j->a[3] = c->pid;
    j->a[14] = c->umask;  // with FUSE_DONT_MASK the daemon applies it (src/fuse/modes.ts)
    struct session *s = fuse_req_userdata(req);
    j->sid = (int)(s - sessions);
  }
  return j;
}

static void job_free(struct job *j) {
  free(j->s1); free(j->s2); free(j->buf); free(j);
}

static void run_job(napi_env env, napi_value fn, napi_value global, struct job *j) {
  napi_handle_scope hs;
  napi_open_handle_scope(env, &hs);
  int32_t id = -1;
  if (j->req) {
    id = req_put(j->req);
    if (id < 0) { fuse_reply_err(j->req, ENOMEM); goto out; }
  }
  j->a[15] = j->sid;
  memcpy(job_args, j->a, sizeof(j->a));
  napi_value argv[5];
  napi_create_int32(env, j->op, &argv[0]);
  napi_create_int32(env, id, &argv[1]);
  if (j->s1) napi_create_string_utf8(env, j->s1, NAPI_AUTO_LENGTH, &argv[2]);
  else napi_get_undefined(env, &argv[2]);
  if (j->s2) napi_create_string_utf8(env, j->s2, NAPI_AUTO_LENGTH, &argv[3]);
  else napi_get_undefined(env, &argv[3]);
  if (j->buf) {
    void *data;
    napi_create_buffer_copy(env, j->buflen, j->buf, &data, &argv[4]);
  } else napi_get_undefined(env, &argv[4]);
  napi_value res;
  if (napi_call_function(env, global, fn, 5, argv, &res) == napi_pending_exception) {
    napi_value err;
    napi_get_and_clear_last_exception(env, &err);
    napi_fatal_exception(env, err);
  }
out:
  napi_close_handle_scope(env, hs);
}

static void on_wake(uv_async_t *h) {
  (void)h;
  pthread_mutex_lock(&q_lock);
  struct job *j = q_head;
  q_head = q_tail = NULL;
  pthread_mutex_unlock(&q_lock);
  if (!j) return;
  napi_env env = js_env;
  napi_handle_scope hs;
  napi_open_handle_scope(env, &hs);
  napi_value fn, global, resource;
  napi_get_reference_value(env, js_dispatch, &fn);
  napi_get_reference_value(env, js_resource, &resource);
  napi_get_global(env, &global);
  napi_callback_scope cs;  // so promises queued by the handlers run after the batch
  napi_open_callback_scope(env, resource, js_async, &cs);
  while (j) {
    struct job *next = j->next;
    run_job(env, fn, global, j);
    job_free(j);
    j = next;
  }
  napi_close_callback_scope(env, cs);
  napi_close_handle_scope(env, hs);
}

// ---- FUSE operations handed to JS ----
#define STR(x) ((x) ? strdup(x) : NULL)

static void op_init(void *userdata, struct fuse_conn_info *conn) {
  struct session *s = userdata;
  struct session_cfg *c = &s->cfg;
  // DONT_MASK: creation modes arrive unmasked with the caller's umask, so a parent's default
  // ACL can decide instead of the umask, as on the kernel's own filesystems
  unsigned want = FUSE_CAP_ASYNC_READ | FUSE_CAP_ATOMIC_O_TRUNC | FUSE_CAP_EXPORT_SUPPORT |
                  FUSE_CAP_AUTO_INVAL_DATA | FUSE_CAP_DONT_MASK;
  if (c->splice) want |= FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE;
  if (c->splice_read) want |= FUSE_CAP_SPLICE_READ;
  if (c->writeback) want |= FUSE_CAP_WRITEBACK_CACHE;
  if (c->readdirplus) want |= FUSE_CAP_READDIRPLUS;
  if (c->readdirplus == 2) want |= FUSE_CAP_READDIRPLUS_AUTO;
  if (c->cache_symlinks) want |= FUSE_CAP_CACHE_SYMLINKS;
  if (c->parallel_dirops) want |= FUSE_CAP_PARALLEL_DIROPS;
  if (c->async_dio) want |= FUSE_CAP_ASYNC_DIO;
  if (c->posix_acl) want |= FUSE_CAP_POSIX_ACL;
  if (c->killpriv) want |= FUSE_CAP_HANDLE_KILLPRIV;
  conn->want = (conn->want & ~(FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO |
                               FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_SPLICE_WRITE |
                               FUSE_CAP_SPLICE_MOVE | FUSE_CAP_SPLICE_READ)) |
               (want & conn->capable);
  if (c->max_write) conn->max_write = c->max_write;
  if (c->max_readahead) conn->max_readahead = c->max_readahead;
  conn->max_background = 128;
  conn->congestion_threshold = 96;
  conn->time_gran = 1;
  struct job *j = job_new(OP_INIT, NULL, 0);
  if (!j) return;
  j->sid = (int)(s - sessions);
  j->a[4] = conn->proto_major; j->a[5] = conn->proto_minor;
  j->a[6] = conn->want; j->a[7] = conn->max_write;
  enqueue(j);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  struct job *j = job_new(OP_LOOKUP, req, parent);
  if (!j) return;
  j->s1 = STR(name);
  enqueue(j);
}

static void forget_one(struct session *s, fuse_ino_t ino, uint64_t n) {
  struct job *j = job_new(OP_FORGET, NULL, ino);
  if (!j) return;
  j->sid = (int)(s - sessions);
  j->a[4] = (double)n;
  enqueue(j);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t n) {
  forget_one(fuse_req_userdata(req), ino, n);
  fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *f) {
  struct session *s = fuse_req_userdata(req);
  for (size_t i = 0; i < count; i++) forget_one(s, f[i].ino, f[i].nlookup);
  fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  struct job *j = job_new(OP_GETATTR, req, ino);
  if (!j) return;
  j->a[4] = fi ? (double)fi->fh : 0;
  enqueue(j);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *a, int valid,
                       struct fuse_file_info *fi) {
  struct job *j = job_new(OP_SETATTR, req, ino);
  if (!j) return;
  j->a[4] = valid; j->a[5] = a->st_mode; j->a[6] = a->st_uid; j->a[7] = a->st_gid;
  j->a[8] = (double)a->st_size;
  j->a[9] = (double)a->st_atim.tv_sec; j->a[10] = (double)a->st_atim.tv_nsec;
  j->a[11] = (double)a->st_mtim.tv_sec; j->a[12] = (double)a->st_mtim.tv_nsec;
  j->a[13] = fi ? (double)fi->fh : 0;
  enqueue(j);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino) {
  struct job *j = job_new(OP_READLINK, req, ino);
  if (j) enqueue(j);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev) {
  struct job *j = job_new(OP_MKNOD, req, parent);
  if (!j) return;
  j->s1 = STR(name); j->a[4] = mode; j->a[5] = (double)rdev;
  enqueue(j);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode) {
  struct job *j = job_new(OP_MKDIR, req, parent);
  if (!j) return;
  j->s1 = STR(name); j->a[4] = mode;
  enqueue(j);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name) {
  struct job *j = job_new(OP_UNLINK, req, parent);
  if (!j) return;
  j->s1 = STR(name);
  enqueue(j);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name) {
  struct job *j = job_new(OP_RMDIR, req, parent);
  if (!j) return;
  j->s1 = STR(name);
  enqueue(j);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name) {
  struct job *j = job_new(OP_SYMLINK, req, parent);
  if (!j) return;
  j->s1 = STR(name); j->s2 = STR(link);
  enqueue(j);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags) {
  struct job *j = job_new(OP_RENAME, req, parent);
  if (!j) return;
  j->s1 = STR(name); j->s2 = STR(newname); j->a[4] = (double)newparent; j->a[5] = flags;
  enqueue(j);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname) {
  struct job *j = job_new(OP_LINK, req, ino);
  if (!j) return;
  j->s1 = STR(newname); j->a[4] = (double)newparent;
  enqueue(j);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  struct job *j = job_new(OP_OPEN, req, ino);
  if (!j) return;
  j->a[4] = fi->flags;
  enqueue(j);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi) {
  struct job *j = job_new(OP_CREATE, req, parent);
  if (!j) return;
  j->s1 = STR(name); j->a[4] = mode; j->a[5] = fi->flags;
  enqueue(j);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  struct job *j = job_new(OP_OPENDIR, req, ino);
  if (!j) return;
  j->a[4] = fi->flags;
  enqueue(j);
}

static void readdir_common(int op, fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi) {
  struct job *j = job_new(op, req, ino);
  if (!j) return;
  j->a[4] = (double)fi->fh; j->a[5] = (double)size; j->a[6] = (double)off;
  enqueue(j);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi) {
  readdir_common(OP_READDIR, req, ino, size, off, fi);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi) {
  readdir_common(OP_READDIRPLUS, req, ino, size, off, fi);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  struct job *j = job_new(OP_RELEASEDIR, req, ino);
  if (!j) return;
  j->a[4] = (double)fi->fh;
  enqueue(j);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
  struct job *j = job_new(OP_FSYNCDIR, req, ino);
  if (!j) return;
  j->a[4] = (double)fi->fh; j->a[5] = datasync;
  enqueue(j);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino) {
  struct job *j = job_new(OP_STATFS, req, ino);
  if (j) enqueue(j);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                        size_t size, int flags) {
  struct job *j = job_new(OP_SETXATTR, req, ino);
  if (!j) return;
  j->s1 = STR(name); j->a[4] = flags; j->a[5] = (double)size;
  j->buf = malloc(size ? size : 1);
  if (size) memcpy(j->buf, value, size);
  j->buflen = size;
  enqueue(j);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
  struct job *j = job_new(OP_GETXATTR, req, ino);
  if (!j) return;
  j->s1 = STR(name); j->a[4] = (double)size;
  enqueue(j);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  struct job *j = job_new(OP_LISTXATTR, req, ino);
  if (!j) return;
  j->a[4] = (double)size;
  enqueue(j);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name) {
  struct job *j = job_new(OP_REMOVEXATTR, req, ino);
  if (!j) return;
  j->s1 = STR(name);
  enqueue(j);
}

static void op_access(fuse_req_t req, fuse_ino_t ino, int mask) {
  struct job *j = job_new(OP_ACCESS, req, ino);
  if (!j) return;
  j->a[4] = mask;
  enqueue(j);
}

// ---- the C data path of open files ----
static struct handle *fh_of(struct fuse_file_info *fi) { return handle_get(fi->fh); }

static void js_handle_op(int op, fuse_req_t req, fuse_ino_t ino, struct handle *h, double a5,
                         double a6, double a7) {
  struct job *j = job_new(op, req, ino);
  if (!j) return;
  j->a[4] = (double)h->js_id; j->a[5] = a5; j->a[6] = a6; j->a[7] = a7;
  enqueue(j);
}

// Thin volumes: reads map each block through the JS-owned table; unmapped blocks are zeros.
static void thin_read(fuse_req_t req, struct handle *h, size_t size, off_t off) {
  if ((uint64_t)off >= h->thin_size) { fuse_reply_buf(req, NULL, 0); return; }
  if ((uint64_t)off + size > h->thin_size) size = h->thin_size - (uint64_t)off;
  char *buf = malloc(size ? size : 1);
  if (!buf) { fuse_reply_err(req, ENOMEM); return; }
  size_t done = 0;
  while (done < size) {
    uint64_t pos = (uint64_t)off + done, vb = pos / h->thin_bs, in = pos % h->thin_bs;
    size_t n = h->thin_bs - in;
    if (n > size - done) n = size - done;
    int32_t b = vb < h->thin_n ? h->thin_blocks[vb] : -1;
    if (b < 0) memset(buf + done, 0, n);
    else {
      ssize_t r = pread(h->thin_fd, buf + done, n, (off_t)b * h->thin_bs + (off_t)in);
      if (r < 0) { int e = errno; free(buf); fuse_reply_err(req, e); return; }
      if ((size_t)r < n) memset(buf + done + r, 0, n - (size_t)r);
    }
    done += n;
  }
  fuse_reply_buf(req, buf, size);
  free(buf);
}

// Thin volumes: a write that lands only on exclusive mapped blocks is done here; anything that
// needs a block (allocation, copy-on-write) goes to JS. Returns 0 when it was not handled.
static int thin_write(fuse_req_t req, struct handle *h, const char *data, size_t size, off_t off) {
  if ((uint64_t)off + size > h->thin_size) return 0;
  for (uint64_t vb = (uint64_t)off / h->thin_bs; vb * h->thin_bs < (uint64_t)off + size; vb++) {
    if (vb >= h->thin_n || h->thin_blocks[vb] < 0 || !h->thin_excl[vb]) return 0;
  }
  size_t done = 0;
  while (done < size) {
    uint64_t pos = (uint64_t)off + done, vb = pos / h->thin_bs, in = pos % h->thin_bs;
    size_t n = h->thin_bs - in;
    if (n > size - done) n = size - done;
    ssize_t r = pwrite(h->thin_fd, data + done, n, (off_t)h->thin_blocks[vb] * h->thin_bs + (off_t)in);
    if (r < 0) { fuse_reply_err(req, errno); return 1; }
    done += (size_t)r;
  }
  fuse_reply_write(req, size);
  return 1;
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi) {
  struct handle *h = fh_of(fi);
  if (!h) { fuse_reply_err(req, EBADF); return; }
  if (h->kind == HANDLE_JS && h->thin_blocks) { thin_read(req, h, size, off); return; }
  if (h->kind == HANDLE_JS) { js_handle_op(OP_READ, req, ino, h, (double)size, (double)off, 0); return; }
  struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);
  pthread_rwlock_rdlock(&h->lock);
  buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
  buf.buf[0].fd = h->fd;
  buf.buf[0].pos = off;
  fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
  pthread_rwlock_unlock(&h->lock);
}

static void op_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *in, off_t off,
                         struct fuse_file_info *fi) {
  struct handle *h = fh_of(fi);
  if (!h) { fuse_reply_err(req, EBADF); return; }
  size_t size = fuse_buf_size(in);
  if (h->kind == HANDLE_JS) {
    struct job *j = job_new(OP_WRITE, req, ino);
    if (!j) return;
    j->buf = malloc(size ? size : 1);
    struct fuse_bufvec mem = FUSE_BUFVEC_INIT(size);
    mem.buf[0].mem = j->buf;
    ssize_t n = fuse_buf_copy(&mem, in, 0);
    if (n < 0) { fuse_reply_err(req, (int)-n); job_free(j); return; }
    if (h->thin_blocks && thin_write(req, h, j->buf, (size_t)n, off)) { job_free(j); return; }
    j->buflen = (size_t)n;
    j->a[4] = (double)h->js_id; j->a[6] = (double)off;
    enqueue(j);
    return;
  }
  struct fuse_bufvec out = FUSE_BUFVEC_INIT(size);
  pthread_rwlock_rdlock(&h->lock);
  out.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
  out.buf[0].fd = h->fd;
  out.buf[0].pos = off;
  ssize_t res = fuse_buf_copy(&out, in, 0);
  pthread_rwlock_unlock(&h->lock);
  if (res < 0) fuse_reply_err(req, (int)-res);
  else fuse_reply_write(req, (size_t)res);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  struct handle *h = fh_of(fi);
  if (!h) { fuse_reply_err(req, EBADF); return; }
  if (h->kind == HANDLE_JS) { js_handle_op(OP_FLUSH, req, ino, h, 0, 0, 0); return; }
  pthread_rwlock_rdlock(&h->lock);
  int res = close(dup(h->fd));  // the backing fs sees a close, as the caller's close(2) would
  pthread_rwlock_unlock(&h->lock);
  fuse_reply_err(req, res == -1 ? errno : 0);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  struct handle *h = handle_take(fi->fh);
  if (!h) { fuse_reply_err(req, EBADF); return; }
  if (h->kind == HANDLE_JS) {
    js_handle_op(OP_RELEASE, req, ino, h, 0, 0, 0);
  } else {
    close(h->fd);
    fuse_reply_err(req, 0);
  }
  handle_free(h);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
  struct handle *h = fh_of(fi);
  if (!h) { fuse_reply_err(req, EBADF); return; }
  if (h->kind == HANDLE_JS) { js_handle_op(OP_FSYNC, req, ino, h, datasync, 0, 0); return; }
  if (h->flags & HF_NOSYNC) { fuse_reply_err(req, 0); return; }
  pthread_rwlock_rdlock(&h->lock);
  int res = datasync ? fdatasync(h->fd) : fsync(h->fd);
  pthread_rwlock_unlock(&h->lock);
  fuse_reply_err(req, res == -1 ? errno : 0);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
                         struct fuse_file_info *fi) {
  struct handle *h = fh_of(fi);
  if (!h) { fuse_reply_err(req, EBADF); return; }
  if (h->kind == HANDLE_JS) {
    struct job *j = job_new(OP_FALLOCATE, req, ino);
    if (!j) return;
    j->a[4] = (double)h->js_id; j->a[5] = mode; j->a[6] = (double)off; j->a[7] = (double)len;
    enqueue(j);
    return;
  }
  pthread_rwlock_rdlock(&h->lock);
  int res = fallocate(h->fd, mode, off, len);
  pthread_rwlock_unlock(&h->lock);
  fuse_reply_err(req, res == -1 ? errno : 0);
}

static void op_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
                               struct fuse_file_info *fi_in, fuse_ino_t ino_out, off_t off_out,
                               struct fuse_file_info *fi_out, size_t len, int flags) {
  (void)ino_in; (void)ino_out;
  struct handle *a = fh_of(fi_in), *b = fh_of(fi_out);
  if (!a || !b) { fuse_reply_err(req, EBADF); return; }
  if (a->kind != HANDLE_FD || b->kind != HANDLE_FD) { fuse_reply_err(req, EOPNOTSUPP); return; }
  pthread_rwlock_rdlock(&a->lock);
  if (b != a) pthread_rwlock_rdlock(&b->lock);
  ssize_t res = copy_file_range(a->fd, &off_in, b->fd, &off_out, len, (unsigned)flags);
  if (b != a) pthread_rwlock_unlock(&b->lock);
  pthread_rwlock_unlock(&a->lock);
  if (res < 0) fuse_reply_err(req, errno);
  else fuse_reply_write(req, (size_t)res);
}

static void op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
                     struct fuse_file_info *fi) {
  (void)ino;
  struct handle *h = fh_of(fi);
  if (!h) { fuse_reply_err(req, EBADF); return; }
  if (h->kind != HANDLE_FD) { fuse_reply_err(req, EOPNOTSUPP); return; }
  pthread_rwlock_rdlock(&h->lock);
  off_t res = lseek(h->fd, off, whence);
  pthread_rwlock_unlock(&h->lock);
  if (res == -1) fuse_reply_err(req, errno);
  else fuse_reply_lseek(req, res);
}

static const struct fuse_lowlevel_ops ops = {
  .init = op_init,
  .lookup = op_lookup,
  .forget = op_forget,
  .forget_multi = op_forget_multi,
  .getattr = op_getattr,
  .setattr = op_setattr,
  .readlink = op_readlink,
  .mknod = op_mknod,
  .mkdir = op_mkdir,
  .unlink = op_unlink,
  .rmdir = op_rmdir,
  .symlink = op_symlink,
  .rename = op_rename,
  .link = op_link,
  .open = op_open,
  .create = op_create,
  .read = op_read,
  .write_buf = op_write_buf,
  .flush = op_flush,
  .release = op_release,
  .fsync = op_fsync,
  .opendir = op_opendir,
  .readdir = op_readdir,
  .readdirplus = op_readdirplus,
  .releasedir = op_releasedir,
  .fsyncdir = op_fsyncdir,
  .statfs = op_statfs,
  .setxattr = op_setxattr,
  .getxattr = op_getxattr,
  .listxattr = op_listxattr,
  .removexattr = op_removexattr,
  .access = op_access,
  .fallocate = op_fallocate,
  .copy_file_range = op_copy_file_range,
  .lseek = op_lseek,
};

// ---- libfuse log: keep the last message for error reports, print it only when debugging ----
static char last_log[512];
static int log_debug;
static void log_func(enum fuse_log_level level, const char *fmt, va_list ap) {
  char msg[512];
  vsnprintf(msg, sizeof msg, fmt, ap);
  if (level <= FUSE_LOG_ERR) {
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n') msg[--n] = 0;
    memcpy(last_log, msg, n + 1);
  }
  if (log_debug) fputs(msg, stderr);
}

// ---- the loop thread of one session ----
static void *loop_main(void *arg) {
  struct session *s = arg;
  struct fuse_loop_config *cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(cfg, 1);
  fuse_loop_cfg_set_idle_threads(cfg, (unsigned)s->cfg.threads);
  fuse_loop_cfg_set_max_threads(cfg, (unsigned)s->cfg.threads);
  int res = fuse_session_loop_mt(s->se, cfg);
  fuse_loop_cfg_destroy(cfg);
  struct job *j = job_new(OP_ENDED, NULL, 0);
  if (j) { j->sid = (int)(s - sessions); j->a[4] = res; enqueue(j); }
  return NULL;
}

// The JS thread's reader: reads what is pending on the session fd (non-blocking) and processes
// it right here: metadata calls JS directly, data requests are served in C.
static void poll_closed(uv_handle_t *h) { free(h); }

static void stop_poll(struct session *s) {
  if (!s->poll) return;
  uv_poll_stop(s->poll);
  uv_close((uv_handle_t *)s->poll, poll_closed);
  s->poll = NULL;
}

// Scopes for calling JS are opened only when a request needs JS: data requests served in C
// pay nothing for them.
static napi_handle_scope inline_hs;
static napi_callback_scope inline_cs;

static void open_inline_scopes(void) {
  napi_env env = js_env;
  napi_value resource;
  napi_open_handle_scope(env, &inline_hs);
  napi_get_reference_value(env, js_dispatch, &inline_fn);
  napi_get_reference_value(env, js_resource, &resource);
  napi_get_global(env, &inline_global);
  napi_open_callback_scope(env, resource, js_async, &inline_cs);
  inline_scopes = 1;
}

static void on_readable(uv_poll_t *h, int status, int events) {
  (void)status; (void)events;
  struct session *s = h->data;
  inline_mode = 1;
  for (int i = 0; i < 256 && s->poll; i++) {
    int res = fuse_session_receive_buf(s->se, &s->fbuf);
    if (res == -EAGAIN) break;
    if (res == -EINTR) continue;
    if (res <= 0) {  // the kernel ended the connection (unmounted or aborted)
      stop_poll(s);
      if (!s->has_thread) {
        struct job *j = job_new(OP_ENDED, NULL, 0);
        if (j) { j->sid = (int)(s - sessions); enqueue(j); }
      }
      break;
    }
    fuse_session_process_buf(s->se, &s->fbuf);
  }
  inline_mode = 0;
  if (inline_scopes) {
    napi_close_callback_scope(js_env, inline_cs);
    napi_close_handle_scope(js_env, inline_hs);
    inline_scopes = 0;
  }
}

// ---- notifications, sent from their own thread: a notify may block on a kernel lock
// that an in-flight request (waiting for the JS thread) holds ----
struct note { struct note *next; int kind, sid; uint64_t a, b; off_t off, len; char *name; };
static pthread_mutex_t n_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t n_cond = PTHREAD_COND_INITIALIZER;
static struct note *n_head, *n_tail;
static int n_started;

static void *notify_main(void *arg) {
  (void)arg;
  for (;;) {
    pthread_mutex_lock(&n_lock);
    while (!n_head) pthread_cond_wait(&n_cond, &n_lock);
    struct note *n = n_head;
    n_head = n->next;
    if (!n_head) n_tail = NULL;
    pthread_mutex_unlock(&n_lock);
    struct fuse_session *se = sessions[n->sid].se;
    if (se && sessions[n->sid].running) {
      if (n->kind == 1)
        fuse_lowlevel_notify_inval_entry(se, n->a, n->name, strlen(n->name));
      else if (n->kind == 2)
        fuse_lowlevel_notify_inval_inode(se, n->a, n->off, n->len);
      else if (n->kind == 3)
        fuse_lowlevel_notify_delete(se, n->a, n->b, n->name, strlen(n->name));
    }
    free(n->name);
    free(n);
  }
  return NULL;
}

static void notify_push(struct note *n) {
  pthread_mutex_lock(&n_lock);
  if (!n_started) {
    pthread_t t;
    pthread_create(&t, NULL, notify_main, NULL);
    pthread_detach(t);
    n_started = 1;
  }
  if (n_tail) n_tail->next = n; else n_head = n;
  n_tail = n;
  pthread_cond_signal(&n_cond);
  pthread_mutex_unlock(&n_lock);
}

// ---- N-API surface ----
static int get_int_prop(napi_env env, napi_value obj, const char *key, int def) {
  bool has = false;
  napi_has_named_property(env, obj, key, &has);
  if (!has) return def;
  napi_value v;
  napi_get_named_property(env, obj, key, &v);
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_boolean) { bool b; napi_get_value_bool(env, v, &b); return b; }
  if (t != napi_number) return def;
  return (int)arg_i64(env, v);
}

// setDispatcher(fn): fn(op, reqId, s1, s2, buf) receives every request for JS.
static napi_value js_set_dispatcher(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (js_dispatch) napi_delete_reference(env, js_dispatch);
  NAPI_CALL(env, napi_create_reference(env, argv[0], 1, &js_dispatch));
  js_env = env;
  if (!js_resource) {
    napi_value res, name;
    napi_create_object(env, &res);
    napi_create_string_utf8(env, "layerfs:fuse", NAPI_AUTO_LENGTH, &name);
    napi_create_reference(env, res, 1, &js_resource);
    napi_async_init(env, res, name, &js_async);
  }
  if (!wake_ready) {
    uv_loop_t *loop;
    NAPI_CALL(env, napi_get_uv_event_loop(env, &loop));
    uv_async_init(loop, &wake, on_wake);
    uv_unref((uv_handle_t *)&wake);  // only live sessions keep the process alive
    wake_ready = 1;
  }
  return NULL;
}

// mount(mountpoint, argv[], cfg) -> session id; throws with libfuse's message on failure.
static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char mnt[4096];
  if (arg_str(env, argv[0], mnt, sizeof mnt) < 0) { napi_throw_type_error(env, NULL, "mountpoint"); return NULL; }
  if (!wake_ready) { napi_throw_error(env, NULL, "setDispatcher first"); return NULL; }
  int sid = -1;
  for (int i = 0; i < MAX_SESSIONS; i++) if (!sessions[i].se && !sessions[i].running) { sid = i; break; }
  if (sid < 0) { napi_throw_error(env, NULL, "too many sessions"); return NULL; }
  struct session *s = &sessions[sid];
  memset(s, 0, sizeof *s);
  napi_value cfg = argv[2];
  s->cfg.writeback = get_int_prop(env, cfg, "writeback", 0);
  s->cfg.splice = get_int_prop(env, cfg, "splice", 1);
  s->cfg.readdirplus = get_int_prop(env, cfg, "readdirplus", 2);
  s->cfg.cache_symlinks = get_int_prop(env, cfg, "cacheSymlinks", 1);
  s->cfg.parallel_dirops = get_int_prop(env, cfg, "parallelDirops", 0);
  s->cfg.async_dio = get_int_prop(env, cfg, "asyncDio", 1);
  s->cfg.posix_acl = get_int_prop(env, cfg, "posixAcl", 0);
  s->cfg.killpriv = get_int_prop(env, cfg, "killpriv", 0);
  s->cfg.debug = get_int_prop(env, cfg, "debug", 0);
  s->cfg.threads = get_int_prop(env, cfg, "threads", 0);
  s->cfg.splice_read = get_int_prop(env, cfg, "spliceRead", 0);
  s->cfg.max_write = (unsigned)get_int_prop(env, cfg, "maxWrite", 1 << 20);
  s->cfg.max_readahead = (unsigned)get_int_prop(env, cfg, "maxReadahead", 1 << 20);
  log_debug = s->cfg.debug;

  uint32_t n = 0;
  NAPI_CALL(env, napi_get_array_length(env, argv[1], &n));
  char **av = calloc(n + 2, sizeof(char *));
  av[0] = strdup("layerfs");
  for (uint32_t i = 0; i < n; i++) {
    napi_value e;
    napi_get_element(env, argv[1], i, &e);
    char tmp[8192];
    if (arg_str(env, e, tmp, sizeof tmp) < 0) tmp[0] = 0;
    av[i + 1] = strdup(tmp);
  }
  struct fuse_args args = FUSE_ARGS_INIT((int)n + 1, av);
  last_log[0] = 0;
  fuse_set_log_func(log_func);
  s->se = fuse_session_new(&args, &ops, sizeof ops, s);
  fuse_opt_free_args(&args);
  for (uint32_t i = 0; i < n + 1; i++) free(av[i]);
  free(av);
  if (!s->se) {
    napi_throw_error(env, NULL, last_log[0] ? last_log : "fuse_session_new failed");
    return NULL;
  }
  if (fuse_session_mount(s->se, mnt) != 0) {
    fuse_session_destroy(s->se);
    s->se = NULL;
    napi_throw_error(env, NULL, last_log[0] ? last_log : "mount failed");
    return NULL;
  }
  s->running = 1;
  if (live_sessions++ == 0) uv_ref((uv_handle_t *)&wake);
  js_thread = pthread_self();
  int fd = fuse_session_fd(s->se);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  s->poll = malloc(sizeof(uv_poll_t));
  s->poll->data = s;
  uv_poll_init(loop, s->poll, fd);
  uv_poll_start(s->poll, UV_READABLE, on_readable);
  if (s->cfg.threads > 0) {
    if (pthread_create(&s->thread, NULL, loop_main, s) != 0) {
      stop_poll(s);
      s->running = 0;
      live_sessions--;
      fuse_session_unmount(s->se);
      fuse_session_destroy(s->se);
      s->se = NULL;
      napi_throw_error(env, NULL, "cannot start the session threads");
      return NULL;
    }
    s->has_thread = 1;
  }
  return num(env, sid);
}

static struct session *arg_session(napi_env env, napi_value v) {
  int64_t sid = arg_i64(env, v);
  if (sid < 0 || sid >= MAX_SESSIONS || !sessions[sid].se) return NULL;
  return &sessions[sid];
}

// destroy(sid): after OP_ENDED: join the loop thread and free the session.
static napi_value js_destroy(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct session *s = arg_session(env, argv[0]);
  if (!s) return NULL;
  stop_poll(s);
  if (s->has_thread) {
    fuse_session_exit(s->se);
    pthread_join(s->thread, NULL);
    s->has_thread = 0;
  }
  s->running = 0;
  free(s->fbuf.mem);
  s->fbuf.mem = NULL;
  fuse_session_unmount(s->se);
  fuse_session_destroy(s->se);
  s->se = NULL;
  if (--live_sessions == 0) uv_unref((uv_handle_t *)&wake);
  return NULL;
}

static napi_value js_session_fd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct session *s = arg_session(env, argv[0]);
  return num(env, s ? fuse_session_fd(s->se) : -1);
}

// ---- replies (JS thread) ----
#define REPLY_PROLOGUE(N)                                              \
  size_t argc = N;                                                     \
  napi_value argv[N];                                                  \
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL)); \
  fuse_req_t req = req_take(env, argv[0]);                             \
  if (!req) { napi_throw_error(env, NULL, "unknown or answered request"); return NULL; }

static double *f64_array(napi_env env, napi_value v, size_t min) {
  napi_typedarray_type t;
  size_t len;
  void *data;
  if (napi_get_typedarray_info(env, v, &t, &len, &data, NULL, NULL) != napi_ok ||
      t != napi_float64_array || len < min)
    return NULL;
  return data;
}

// Stat layout shared with src/sys/stat.ts.
static void stat_from(const double *a, struct stat *st) {
  memset(st, 0, sizeof *st);
  st->st_ino = (ino_t)a[0]; st->st_mode = (mode_t)a[1]; st->st_nlink = (nlink_t)a[2];
  st->st_uid = (uid_t)a[3]; st->st_gid = (gid_t)a[4]; st->st_rdev = (dev_t)a[5];
  st->st_size = (off_t)a[6]; st->st_blksize = (blksize_t)a[7]; st->st_blocks = (blkcnt_t)a[8];
  st->st_atim.tv_sec = (time_t)a[9]; st->st_atim.tv_nsec = (long)a[10];
  st->st_mtim.tv_sec = (time_t)a[11]; st->st_mtim.tv_nsec = (long)a[12];
  st->st_ctim.tv_sec = (time_t)a[13]; st->st_ctim.tv_nsec = (long)a[14];
}

static napi_value js_reply_err(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2);
  return num(env, fuse_reply_err(req, (int)arg_i64(env, argv[1])));
}

static napi_value js_reply_none(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(1);
  fuse_reply_none(req);
  return NULL;
}

static int entry_from(napi_env env, napi_value *argv, struct fuse_entry_param *e) {
  memset(e, 0, sizeof *e);
  e->ino = (fuse_ino_t)arg_f64(env, argv[1]);
  e->generation = (uint64_t)arg_f64(env, argv[2]);
  e->entry_timeout = arg_f64(env, argv[3]);
  e->attr_timeout = arg_f64(env, argv[4]);
  double *st = f64_array(env, argv[5], 15);
  if (!st) return -1;
  stat_from(st, &e->attr);
  return 0;
}

// replyEntry(req, nodeid, generation, entryTimeout, attrTimeout, stat)
static napi_value js_reply_entry(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(6);
  struct fuse_entry_param e;
  if (entry_from(env, argv, &e) < 0) { fuse_reply_err(req, EIO); napi_throw_type_error(env, NULL, "stat"); return NULL; }
  return num(env, fuse_reply_entry(req, &e));
}

// replyAttr(req, stat, timeout)
static napi_value js_reply_attr(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(3);
  double *a = f64_array(env, argv[1], 15);
  if (!a) { fuse_reply_err(req, EIO); napi_throw_type_error(env, NULL, "stat"); return NULL; }
  struct stat st;
  stat_from(a, &st);
  return num(env, fuse_reply_attr(req, &st, arg_f64(env, argv[2])));
}

static napi_value js_reply_readlink(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2);
  char buf[PATH_MAX + 1];
  if (arg_str(env, argv[1], buf, sizeof buf) < 0) { fuse_reply_err(req, EIO); return NULL; }
  return num(env, fuse_reply_readlink(req, buf));
}

// FOPEN-style flags from JS: 1 direct_io, 2 keep_cache, 4 cache_readdir, 8 nonseekable, 16 nosync, 32 noflush
static void fi_from(struct fuse_file_info *fi, int flags) {
  fi->direct_io = !!(flags & 1);
  fi->keep_cache = !!(flags & 2);
  fi->cache_readdir = !!(flags & 4);
  fi->nonseekable = !!(flags & 8);
  fi->noflush = !!(flags & 32);
}

// replyOpen(req, fd, fopenFlags, nodeid, openFlags) -> fh. fd < 0: a JS handle with id = -fd.
static napi_value js_reply_open(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(5);
  int fd = (int)arg_i64(env, argv[1]);
  int fl = (int)arg_i64(env, argv[2]);
  struct fuse_file_info fi;
  memset(&fi, 0, sizeof fi);
  fi_from(&fi, fl);
  uint64_t fh = fd >= 0
    ? handle_add(HANDLE_FD, fd, (uint64_t)arg_f64(env, argv[3]), (int)arg_i64(env, argv[4]), (fl & 16) ? HF_NOSYNC : 0, 0)
    : handle_add(HANDLE_JS, -1, (uint64_t)arg_f64(env, argv[3]), (int)arg_i64(env, argv[4]), 0, (uint64_t)-fd);
  if (!fh) { if (fd >= 0) close(fd); fuse_reply_err(req, ENFILE); return num(env, 0); }
  fi.fh = fh;
  if (fuse_reply_open(req, &fi) != 0) {  // interrupted: the kernel will never release it
    struct handle *h = handle_take(fh);
    if (h) { if (h->kind == HANDLE_FD) close(h->fd); handle_free(h); }
    return num(env, 0);
  }
  return num(env, (double)fh);
}

// replyCreate(req, nodeid, generation, entryTimeout, attrTimeout, stat, fd, fopenFlags, openFlags) -> fh
static napi_value js_reply_create(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(9);
  struct fuse_entry_param e;
  int fd = (int)arg_i64(env, argv[6]);
  if (entry_from(env, argv, &e) < 0) { close(fd); fuse_reply_err(req, EIO); return NULL; }
  int fl = (int)arg_i64(env, argv[7]);
  struct fuse_file_info fi;
  memset(&fi, 0, sizeof fi);
  fi_from(&fi, fl);
  uint64_t fh = handle_add(HANDLE_FD, fd, e.ino, (int)arg_i64(env, argv[8]), (fl & 16) ? HF_NOSYNC : 0, 0);
  if (!fh) { close(fd); fuse_reply_err(req, ENFILE); return num(env, 0); }
  fi.fh = fh;
  if (fuse_reply_create(req, &e, &fi) != 0) {
    struct handle *h = handle_take(fh);
    if (h) { close(h->fd); handle_free(h); }
    return num(env, 0);
  }
  return num(env, (double)fh);
}

// replyOpendir(req, fh, fopenFlags): directory handles belong to JS.
static napi_value js_reply_opendir(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(3);
  struct fuse_file_info fi;
  memset(&fi, 0, sizeof fi);
  fi_from(&fi, (int)arg_i64(env, argv[2]));
  fi.fh = (uint64_t)arg_f64(env, argv[1]);
  return num(env, fuse_reply_open(req, &fi));
}

// replyBuf(req, buffer[, length])
static napi_value js_reply_buf(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(3);
  void *data = NULL;
  size_t len = 0;
  bool isbuf = false;
  napi_is_buffer(env, argv[1], &isbuf);
  if (isbuf) napi_get_buffer_info(env, argv[1], &data, &len);
  else {
    bool istyped = false;
    napi_is_typedarray(env, argv[1], &istyped);
    if (istyped) {
      napi_typedarray_type t; size_t n; napi_value ab; size_t boff;
      napi_get_typedarray_info(env, argv[1], &t, &n, &data, &ab, &boff);
      len = n;
    }
  }
  napi_valuetype t;
  if (argc >= 3 && napi_typeof(env, argv[2], &t) == napi_ok && t == napi_number) {
    size_t want = (size_t)arg_i64(env, argv[2]);
    if (want < len) len = want;
  }
  return num(env, fuse_reply_buf(req, data, len));
}

static napi_value js_reply_write(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2);
  return num(env, fuse_reply_write(req, (size_t)arg_i64(env, argv[1])));
}

static napi_value js_reply_xattr(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2);
  return num(env, fuse_reply_xattr(req, (size_t)arg_i64(env, argv[1])));
}

// replyStatfs(req, Float64Array[bsize, frsize, blocks, bfree, bavail, files, ffree, favail, fsid, flag, namemax])
static napi_value js_reply_statfs(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2);
  double *a = f64_array(env, argv[1], 11);
  if (!a) { fuse_reply_err(req, EIO); return NULL; }
  struct statvfs s;
  memset(&s, 0, sizeof s);
  s.f_bsize = (unsigned long)a[0]; s.f_frsize = (unsigned long)a[1];
  s.f_blocks = (fsblkcnt_t)a[2]; s.f_bfree = (fsblkcnt_t)a[3]; s.f_bavail = (fsblkcnt_t)a[4];
  s.f_files = (fsfilcnt_t)a[5]; s.f_ffree = (fsfilcnt_t)a[6]; s.f_favail = (fsfilcnt_t)a[7];
  s.f_fsid = (unsigned long)a[8]; s.f_flag = (unsigned long)a[9]; s.f_namemax = (unsigned long)a[10];
  return num(env, fuse_reply_statfs(req, &s));
}

// ---- handles, seen from JS ----
static napi_value js_handle_fd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct handle *h = handle_get((uint64_t)arg_f64(env, argv[0]));
  return num(env, h && h->kind == HANDLE_FD ? h->fd : -EBADF);
}

// handlesOf(nodeid) -> [fh, openFlags, fh, openFlags, ...]
static napi_value js_handles_of(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  uint64_t fh[1024];
  int fl[1024];
  size_t n = handle_list((uint64_t)arg_f64(env, argv[0]), fh, fl, 1024);
  napi_value arr;
  napi_create_array_with_length(env, n * 2, &arr);
  for (size_t i = 0; i < n; i++) {
    napi_set_element(env, arr, (uint32_t)(2 * i), num(env, (double)fh[i]));
    napi_set_element(env, arr, (uint32_t)(2 * i + 1), num(env, fl[i]));
  }
  return arr;
}

// retarget(fh, newfd): later I/O on fh uses newfd; the old fd is closed.
static napi_value js_retarget(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  return num(env, handle_retarget((uint64_t)arg_f64(env, argv[0]), (int)arg_i64(env, argv[1])));
}

// thinAttach(fh, dataFd, blockSize, blocks: Int32Array, excl: Uint8Array, volumeSize): the C
// fast path of a thin volume handle. JS keeps both arrays alive and calls again when they change
// size; with no worker threads every use happens on the JS thread.
static napi_value js_thin_attach(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct handle *h = handle_get((uint64_t)arg_f64(env, argv[0]));
  if (!h || h->kind != HANDLE_JS) return num(env, -EBADF);
  napi_typedarray_type t1, t2;
  size_t n1, n2;
  void *d1, *d2;
  if (napi_get_typedarray_info(env, argv[3], &t1, &n1, &d1, NULL, NULL) != napi_ok || t1 != napi_int32_array ||
      napi_get_typedarray_info(env, argv[4], &t2, &n2, &d2, NULL, NULL) != napi_ok || t2 != napi_uint8_array || n1 != n2)
    return num(env, -EINVAL);
  h->thin_fd = (int)arg_i64(env, argv[1]);
  h->thin_bs = (uint32_t)arg_i64(env, argv[2]);
  h->thin_blocks = d1;
  h->thin_excl = d2;
  h->thin_n = n1;
  h->thin_size = (uint64_t)arg_f64(env, argv[5]);
  return num(env, 0);
}

static napi_value js_handle_count(napi_env env, napi_callback_info info) {
  (void)info;
  return num(env, (double)handle_count());
}

// notifyInvalEntry(sid, parent, name) / notifyInvalInode(sid, ino, off, len) / notifyDelete(sid, parent, child, name)
static napi_value js_notify(napi_env env, napi_callback_info info, int kind) {
  size_t argc = 4;
  napi_value argv[4];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct note *n = calloc(1, sizeof *n);
  n->kind = kind;
  n->sid = (int)arg_i64(env, argv[0]);
  if (n->sid < 0 || n->sid >= MAX_SESSIONS) { free(n); return NULL; }
  n->a = (uint64_t)arg_f64(env, argv[1]);
  char name[4096];
  if (kind == 1) { arg_str(env, argv[2], name, sizeof name); n->name = strdup(name); }
  if (kind == 2) { n->off = (off_t)arg_f64(env, argv[2]); n->len = (off_t)arg_f64(env, argv[3]); }
  if (kind == 3) { n->b = (uint64_t)arg_f64(env, argv[2]); arg_str(env, argv[3], name, sizeof name); n->name = strdup(name); }
  notify_push(n);
  return NULL;
}
static napi_value js_notify_entry(napi_env env, napi_callback_info info) { return js_notify(env, info, 1); }

// notifyInvalAttr(sid, nodeid): synchronous, attributes only. Offset -1 touches no page cache,
// so no page lock is taken and it cannot wait on a request the JS thread has yet to serve.
static napi_value js_notify_attr(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int64_t sid = arg_i64(env, argv[0]);
  if (sid < 0 || sid >= MAX_SESSIONS || !sessions[sid].se || !sessions[sid].running) return num(env, -ENODEV);
  return num(env, fuse_lowlevel_notify_inval_inode(sessions[sid].se, (fuse_ino_t)arg_f64(env, argv[1]), -1, 0));
}
static napi_value js_notify_inode(napi_env env, napi_callback_info info) { return js_notify(env, info, 2); }
static napi_value js_notify_delete(napi_env env, napi_callback_info info) { return js_notify(env, info, 3); }

napi_value session_init_exports(napi_env env, napi_value exports) {
  napi_value ab, arr;
  void *data;
  NAPI_CALL(env, napi_create_arraybuffer(env, NARGS * sizeof(double), &data, &ab));
  NAPI_CALL(env, napi_create_typedarray(env, napi_float64_array, NARGS, ab, 0, &arr));
  job_args = data;
  napi_create_reference(env, arr, 1, &job_args_ref);
  napi_set_named_property(env, exports, "jobArgs", arr);
  export_fn(env, exports, "setDispatcher", js_set_dispatcher);
  export_fn(env, exports, "mount", js_mount);
  export_fn(env, exports, "destroy", js_destroy);
  export_fn(env, exports, "sessionFd", js_session_fd);
  export_fn(env, exports, "replyErr", js_reply_err);
  export_fn(env, exports, "replyNone", js_reply_none);
  export_fn(env, exports, "replyEntry", js_reply_entry);
  export_fn(env, exports, "replyAttr", js_reply_attr);
  export_fn(env, exports, "replyReadlink", js_reply_readlink);
  export_fn(env, exports, "replyOpen", js_reply_open);
  export_fn(env, exports, "replyCreate", js_reply_create);
  export_fn(env, exports, "replyOpendir", js_reply_opendir);
  export_fn(env, exports, "replyBuf", js_reply_buf);
  export_fn(env, exports, "replyWrite", js_reply_write);
  export_fn(env, exports, "replyXattr", js_reply_xattr);
  export_fn(env, exports, "replyStatfs", js_reply_statfs);
  export_fn(env, exports, "handleFd", js_handle_fd);
  export_fn(env, exports, "handlesOf", js_handles_of);
  export_fn(env, exports, "retarget", js_retarget);
  export_fn(env, exports, "handleCount", js_handle_count);
  export_fn(env, exports, "thinAttach", js_thin_attach);
  export_fn(env, exports, "notifyInvalEntry", js_notify_entry);
  export_fn(env, exports, "notifyInvalAttr", js_notify_attr);
  export_fn(env, exports, "notifyInvalInode", js_notify_inode);
  export_fn(env, exports, "notifyDelete", js_notify_delete);
  return exports;
}
