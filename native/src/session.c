// FUSE sessions over layerfs's own protocol code (conn.c; no libfuse). The JS thread reads its
// session fd itself (libuv poll); optional worker threads read cloned fds. The data path of open
// files (read, write, flush, release, fsync, fallocate, copy_file_range, lseek) is served right
// there in C; every other request becomes a job for the JS thread, which replies by request id.
// With passthrough negotiated, opens hand the kernel the backing file and reads, writes and
// mmap never reach the daemon.
#include "common.h"
#include "conn.h"
#include "uring.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
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
#define MAX_SESSIONS 1024   // mounts one process (the resident service) may serve

struct job {
  struct job *next;
  int op, sid;
  struct req *req;
  double a[NARGS];
  char *s1, *s2;
  void *buf;
  size_t buflen;
};

struct session_cfg {
  int writeback, readdirplus, cache_symlinks, parallel_dirops, async_dio;
  int posix_acl, killpriv, debug, threads, uring_depth;
};

struct session {
  struct conn conn;        // first: a request's connection is its session
  int used;
  int running;
  struct worker *workers;  // threads reading cloned fds
  int nworkers;
  uv_poll_t *poll;         // the JS thread's own reader of the session fd
  char *buf;               // request buffer of the JS-thread reader
  struct session_cfg cfg;
  uint64_t ops[64];        // requests received per opcode (63: any higher one)
  struct uring *ring;      // FUSE over io_uring, when negotiated (served on the JS thread)
  uv_poll_t *ring_poll;    // its eventfd
  uint64_t via_ring;       // requests that came through it
  uint64_t *nocap;         // node ids known to have no security.capability (see nocap_*)
  int64_t handles;         // open file handles (layerfs ps)
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
static struct req **reqs;
static uint32_t *req_free;
static size_t req_cap, req_free_len, req_next;

static int32_t req_put(struct req *r) {
  size_t id;
  if (req_free_len) id = req_free[--req_free_len];
  else {
    if (req_next == req_cap) {
      size_t cap = req_cap ? req_cap * 2 : 1024;
      struct req **n = realloc(reqs, cap * sizeof(*n));
      uint32_t *f = realloc(req_free, cap * sizeof(*f));
      if (!n || !f) return -1;
      reqs = n; req_free = f; req_cap = cap;
    }
    id = req_next++;
  }
  reqs[id] = r;
  return (int32_t)id;
}

static struct req *req_take(napi_env env, napi_value v) {
  int32_t id;
  if (napi_get_value_int32(env, v, &id) != napi_ok || id < 0 || (size_t)id >= req_next || !reqs[id])
    return NULL;
  struct req *r = reqs[id];
  reqs[id] = NULL;
  req_free[req_free_len++] = id;
  return r;
}

// While the JS thread processes requests it read itself, jobs run at once (no queue, no wake).
static pthread_t js_thread;
static int inline_mode;
static napi_value inline_fn, inline_global;
static void run_job(napi_env env, napi_value fn, napi_value global, struct job *j);
struct session;
static const char *start_ring(struct session *s);
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

static struct job *job_new(int op, struct req *req, uint64_t ino) {
  struct job *j = calloc(1, sizeof(*j));
  if (!j) { if (req) reply_err(req, ENOMEM); return NULL; }
  j->op = op;
  j->req = req;
  j->a[0] = (double)ino;
  if (req) {
    j->a[1] = req->uid; j->a[2] = req->gid; j->a[3] = req->pid;
    j->a[14] = req->umask;  // with FUSE_DONT_MASK the daemon applies it (src/fuse/modes.ts)
    j->sid = (int)((struct session *)req->c - sessions);
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
    if (id < 0) { reply_err(j->req, ENOMEM); goto out; }
  }
  if (j->op == OP_INIT && j->a[8] >= 0) {
    const char *err = start_ring(&sessions[j->sid]);
    if (err) { j->a[8] = -1; free(j->s1); j->s1 = strdup(err); }
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

// ---- requests: decoded from the wire; metadata goes to JS, the data path is served in C ----
#define STR(x) ((x) ? strdup(x) : NULL)

static struct session *session_of(struct req *r) { return (struct session *)r->c; }

static struct handle *fh_handle(uint64_t fh) { return handle_get(fh); }

// The kernel asks for security.capability before every write and chown of a FUSE file (FUSE
// never sets S_NOSEC): ~7 requests per file that tar extracts. Once the filesystem said a node
// has none, the answer is given here. A lossy direct-mapped set of node ids: forgetting a
// node, or any setxattr/removexattr of it, drops it; a change of security.capability anywhere
// clears the set (hard links share the attribute under other node ids).
#define NOCAP_SLOTS 65536
#define TAG_CAP_PROBE 1
#define TAG_NEW 2          // MKNOD, MKDIR, SYMLINK, CREATE with O_EXCL: a new node, without xattrs yet
static const char CAP_NAME[] = "security.capability";

static uint64_t *nocap_slot(struct session *s, uint64_t id) {
  return s->nocap ? &s->nocap[(id * 0x9E3779B97F4A7C15ull) >> 48] : NULL;
}
static int nocap_has(struct session *s, uint64_t id) {
  uint64_t *p = nocap_slot(s, id);
  return p && __atomic_load_n(p, __ATOMIC_ACQUIRE) == id;
}
static void nocap_add(struct session *s, uint64_t id) {
  uint64_t *p = nocap_slot(s, id);
  if (p) __atomic_store_n(p, id, __ATOMIC_RELEASE);
}
static void nocap_del(struct session *s, uint64_t id) {
  uint64_t *p = nocap_slot(s, id), v = id;
  if (p) __atomic_compare_exchange_n(p, &v, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
}
static void nocap_clear(struct session *s) {
  if (s->nocap) for (size_t i = 0; i < NOCAP_SLOTS; i++) __atomic_store_n(&s->nocap[i], 0, __ATOMIC_RELAXED);
}

static void js_handle_op(int op, struct req *req, uint64_t ino, struct handle *h, double a5,
                         double a6, double a7) {
  struct job *j = job_new(op, req, ino);
  if (!j) return;
  j->a[4] = (double)h->js_id; j->a[5] = a5; j->a[6] = a6; j->a[7] = a7;
  enqueue(j);
}

static void do_read(struct req *req, const struct fuse_read_in *in) {
  struct handle *h = fh_handle(in->fh);
  if (!h) { reply_err(req, EBADF); return; }
  if (h->kind == HANDLE_JS && __atomic_load_n(&h->thin_blocks, __ATOMIC_ACQUIRE)) { thin_read(req, h, in->size, (off_t)in->offset); return; }
  if (h->kind == HANDLE_JS) { js_handle_op(OP_READ, req, req->nodeid, h, in->size, (double)in->offset, 0); return; }
  void *space = reply_space(req, in->size);
  if (space) {   // io_uring: read straight into the reply buffer
    pthread_rwlock_rdlock(&h->lock);
    ssize_t n = pread(h->fd, space, in->size, (off_t)in->offset);
    int e = errno;
    pthread_rwlock_unlock(&h->lock);
    if (n < 0) reply_err(req, e);
    else reply_filled(req, (size_t)n);
    return;
  }
  pthread_rwlock_rdlock(&h->lock);
  if (reply_splice(req, h->fd, in->size, (off_t)in->offset) != 1) {   // sent (or the kernel refused it)
    pthread_rwlock_unlock(&h->lock);
    return;
  }
  pthread_rwlock_unlock(&h->lock);
  char *buf = malloc(in->size ? in->size : 1);
  if (!buf) { reply_err(req, ENOMEM); return; }
  pthread_rwlock_rdlock(&h->lock);
  ssize_t n = pread(h->fd, buf, in->size, (off_t)in->offset);
  int e = errno;
  pthread_rwlock_unlock(&h->lock);
  if (n < 0) reply_err(req, e);
  else reply_buf(req, buf, (size_t)n);
  free(buf);
}

static void do_write(struct req *req, const struct fuse_write_in *in, const char *data) {
  struct handle *h = fh_handle(in->fh);
  if (!h) { reply_err(req, EBADF); return; }
  size_t size = in->size;
  if (h->kind == HANDLE_JS) {
    if (__atomic_load_n(&h->thin_blocks, __ATOMIC_ACQUIRE) && thin_write(req, h, data, size, (off_t)in->offset)) return;
    struct job *j = job_new(OP_WRITE, req, req->nodeid);
    if (!j) return;
    j->buf = malloc(size ? size : 1);
    if (size) memcpy(j->buf, data, size);
    j->buflen = size;
    j->a[4] = (double)h->js_id; j->a[6] = (double)in->offset;
    enqueue(j);
    return;
  }
  size_t done = 0;
  int e = 0;
  pthread_rwlock_rdlock(&h->lock);
  while (done < size) {
    ssize_t w = pwrite(h->fd, data + done, size - done, (off_t)(in->offset + done));
    if (w < 0) { if (errno == EINTR) continue; e = errno; break; }
    if (w == 0) break;
    done += (size_t)w;
  }
  pthread_rwlock_unlock(&h->lock);
  if (e && !done) reply_err(req, e);
  else reply_write(req, done);
}

static void do_flush(struct req *req, uint64_t fh) {
  struct handle *h = fh_handle(fh);
  if (!h) { reply_err(req, EBADF); return; }
  if (h->kind == HANDLE_JS) { js_handle_op(OP_FLUSH, req, req->nodeid, h, 0, 0, 0); return; }
  pthread_rwlock_rdlock(&h->lock);
  int res = close(dup(h->fd));  // the backing fs sees a close, as the caller's close(2) would
  pthread_rwlock_unlock(&h->lock);
  reply_err(req, res == -1 ? errno : 0);
}

static void drop_handle(uint64_t fh, struct conn *c);

static void do_release(struct req *req, uint64_t fh) {
  struct handle *h = handle_get(fh);
  if (!h) { reply_err(req, EBADF); return; }
  if (h->kind == HANDLE_JS) {
    h = handle_take(fh);
    __atomic_sub_fetch(&session_of(req)->handles, 1, __ATOMIC_RELAXED);
    js_handle_op(OP_RELEASE, req, req->nodeid, h, 0, 0, 0);
    handle_free(h);
    return;
  }
  drop_handle(fh, req->c);
  reply_err(req, 0);
}

static void do_fsync(struct req *req, uint64_t fh, int datasync) {
  struct handle *h = fh_handle(fh);
  if (!h) { reply_err(req, EBADF); return; }
  if (h->kind == HANDLE_JS) { js_handle_op(OP_FSYNC, req, req->nodeid, h, datasync, 0, 0); return; }
  if (h->flags & HF_NOSYNC) { reply_err(req, 0); return; }
  pthread_rwlock_rdlock(&h->lock);
  int res = datasync ? fdatasync(h->fd) : fsync(h->fd);
  pthread_rwlock_unlock(&h->lock);
  reply_err(req, res == -1 ? errno : 0);
}

static void do_fallocate(struct req *req, const struct fuse_fallocate_in *in) {
  struct handle *h = fh_handle(in->fh);
  if (!h) { reply_err(req, EBADF); return; }
  if (h->kind == HANDLE_JS) {
    struct job *j = job_new(OP_FALLOCATE, req, req->nodeid);
    if (!j) return;
    j->a[4] = (double)h->js_id; j->a[5] = in->mode; j->a[6] = (double)in->offset; j->a[7] = (double)in->length;
    enqueue(j);
    return;
  }
  pthread_rwlock_rdlock(&h->lock);
  int res = fallocate(h->fd, (int)in->mode, (off_t)in->offset, (off_t)in->length);
  pthread_rwlock_unlock(&h->lock);
  reply_err(req, res == -1 ? errno : 0);
}

static void do_copy_file_range(struct req *req, const struct fuse_copy_file_range_in *in) {
  struct handle *a = fh_handle(in->fh_in), *b = fh_handle(in->fh_out);
  if (!a || !b) { reply_err(req, EBADF); return; }
  if (a->kind != HANDLE_FD || b->kind != HANDLE_FD) { reply_err(req, EOPNOTSUPP); return; }
  loff_t off_in = (loff_t)in->off_in, off_out = (loff_t)in->off_out;
  pthread_rwlock_rdlock(&a->lock);
  if (b != a) pthread_rwlock_rdlock(&b->lock);
  ssize_t res = copy_file_range(a->fd, &off_in, b->fd, &off_out, in->len, (unsigned)in->flags);
  int e = errno;
  if (b != a) pthread_rwlock_unlock(&b->lock);
  pthread_rwlock_unlock(&a->lock);
  if (res < 0) reply_err(req, e);
  else reply_write(req, (size_t)res);
}

static void do_lseek(struct req *req, const struct fuse_lseek_in *in) {
  struct handle *h = fh_handle(in->fh);
  if (!h) { reply_err(req, EBADF); return; }
  if (h->kind != HANDLE_FD) { reply_err(req, EOPNOTSUPP); return; }
  pthread_rwlock_rdlock(&h->lock);
  off_t res = lseek(h->fd, (off_t)in->offset, (int)in->whence);
  int e = errno;
  pthread_rwlock_unlock(&h->lock);
  if (res == -1) reply_err(req, e);
  else reply_lseek(req, (uint64_t)res);
}

static void forget_one(struct session *s, uint64_t ino, uint64_t n) {
  nocap_del(s, ino);
  struct job *j = job_new(OP_FORGET, NULL, ino);
  if (!j) return;
  j->sid = (int)(s - sessions);
  j->a[4] = (double)n;
  enqueue(j);
}

static void do_init(struct req *req, const struct fuse_init_in *in) {
  struct session *s = session_of(req);
  char err[512] = "";
  int res = conn_init(&s->conn, req, in, err, sizeof err);
  struct job *j = job_new(OP_INIT, NULL, 0);
  if (!j) return;
  j->sid = (int)(s - sessions);
  j->a[4] = FUSE_KERNEL_VERSION; j->a[5] = s->conn.minor;
  j->a[6] = (double)s->conn.flags; j->a[7] = s->conn.want.max_write;
  j->a[8] = res;                      // < 0: the mount must fail with the message in s1
  if (res < 0) j->s1 = strdup(err[0] ? err : strerror(-res));
  enqueue(j);
}

// The fixed-size argument of each opcode (after the header): shorter requests are malformed.
static size_t arg_size(uint32_t op) {
  switch (op) {
    case FUSE_FORGET: return sizeof(struct fuse_forget_in);
    case FUSE_BATCH_FORGET: return sizeof(struct fuse_batch_forget_in);
    case FUSE_GETATTR: return sizeof(struct fuse_getattr_in);
    case FUSE_SETATTR: return sizeof(struct fuse_setattr_in);
    case FUSE_MKNOD: return sizeof(struct fuse_mknod_in);
    case FUSE_MKDIR: return sizeof(struct fuse_mkdir_in);
    case FUSE_RENAME: return sizeof(struct fuse_rename_in);
    case FUSE_RENAME2: return sizeof(struct fuse_rename2_in);
    case FUSE_LINK: return sizeof(struct fuse_link_in);
    case FUSE_OPEN: case FUSE_OPENDIR: return sizeof(struct fuse_open_in);
    case FUSE_CREATE: return sizeof(struct fuse_create_in);
    case FUSE_READ: case FUSE_READDIR: case FUSE_READDIRPLUS: return sizeof(struct fuse_read_in);
    case FUSE_WRITE: return sizeof(struct fuse_write_in);
    case FUSE_RELEASE: case FUSE_RELEASEDIR: return sizeof(struct fuse_release_in);
    case FUSE_FLUSH: return sizeof(struct fuse_flush_in);
    case FUSE_FSYNC: case FUSE_FSYNCDIR: return sizeof(struct fuse_fsync_in);
    case FUSE_SETXATTR: return sizeof(struct fuse_setxattr_in);
    case FUSE_GETXATTR: case FUSE_LISTXATTR: return sizeof(struct fuse_getxattr_in);
    case FUSE_ACCESS: return sizeof(struct fuse_access_in);
    case FUSE_INIT: return 16;   // major, minor, max_readahead, flags (flags2 from 7.36)
    case FUSE_INTERRUPT: return sizeof(struct fuse_interrupt_in);
    case FUSE_FALLOCATE: return sizeof(struct fuse_fallocate_in);
    case FUSE_LSEEK: return sizeof(struct fuse_lseek_in);
    case FUSE_COPY_FILE_RANGE: return sizeof(struct fuse_copy_file_range_in);
    default: return 0;
  }
}

// A NUL-terminated name at p within [p, end), or NULL.
static const char *name_at(const char *p, const char *end) {
  return p < end && memchr(p, 0, (size_t)(end - p)) ? p : NULL;
}

/** One request: arg is its fixed-size argument (arg_size bytes), [p, pend) the rest — names, write
 * data. Answered here or handed to JS. */
static void serve(struct session *s, struct req *r, const struct fuse_in_header *h, const char *arg,
                  const char *p, const char *pend) {
  if (s->conn.opts.debug)   // -d: one line per request
    fprintf(stderr, "layerfs: unique %llu opcode %u nodeid %llu len %u uid %u pid %u%s\n", (unsigned long long)h->unique,
            h->opcode, (unsigned long long)h->nodeid, h->len, h->uid, h->pid, r->ent ? " (io_uring)" : "");
  if (h->opcode != FUSE_INIT && !s->conn.minor) { reply_err(r, EIO); return; }
  uint64_t ino = h->nodeid;
  struct job *j = NULL;
  const char *n1 = NULL, *n2 = NULL;
  switch (h->opcode) {
    case FUSE_INIT: do_init(r, (const void *)arg); return;
    case FUSE_DESTROY: reply_err(r, 0); return;
    case FUSE_LOOKUP: case FUSE_UNLINK: case FUSE_RMDIR: case FUSE_REMOVEXATTR:
      if (!(n1 = name_at(p, pend))) break;
      if (h->opcode == FUSE_REMOVEXATTR) { nocap_del(s, ino); if (!strcmp(n1, CAP_NAME)) nocap_clear(s); }
      j = job_new(h->opcode == FUSE_LOOKUP ? OP_LOOKUP : h->opcode == FUSE_UNLINK ? OP_UNLINK
                  : h->opcode == FUSE_RMDIR ? OP_RMDIR : OP_REMOVEXATTR, r, ino);
      if (j) j->s1 = STR(n1);
      break;
    case FUSE_GETATTR: {
      const struct fuse_getattr_in *in = (const void *)arg;
      if ((j = job_new(OP_GETATTR, r, ino))) j->a[4] = in->getattr_flags & FUSE_GETATTR_FH ? (double)in->fh : 0;
      break;
    }
    case FUSE_SETATTR: {
      const struct fuse_setattr_in *in = (const void *)arg;
      if (!(j = job_new(OP_SETATTR, r, ino))) return;
      j->a[4] = in->valid & (0x3f | 0x180 | 0x400);  // mode..mtime, atime/mtime_now, ctime
      j->a[5] = in->mode; j->a[6] = in->uid; j->a[7] = in->gid; j->a[8] = (double)in->size;
      j->a[9] = (double)in->atime; j->a[10] = in->atimensec; j->a[11] = (double)in->mtime; j->a[12] = in->mtimensec;
      j->a[13] = in->valid & FATTR_FH ? (double)in->fh : 0;
      break;
    }
    case FUSE_READLINK: j = job_new(OP_READLINK, r, ino); break;
    case FUSE_MKNOD: {
      const struct fuse_mknod_in *in = (const void *)arg;
      if (!(n1 = name_at(p, pend))) break;
      r->umask = in->umask;
      r->tag = TAG_NEW;
      if ((j = job_new(OP_MKNOD, r, ino))) { j->s1 = STR(n1); j->a[4] = in->mode; j->a[5] = in->rdev; }
      break;
    }
    case FUSE_MKDIR: {
      const struct fuse_mkdir_in *in = (const void *)arg;
      if (!(n1 = name_at(p, pend))) break;
      r->umask = in->umask;
      r->tag = TAG_NEW;
      if ((j = job_new(OP_MKDIR, r, ino))) { j->s1 = STR(n1); j->a[4] = in->mode; }
      break;
    }
    case FUSE_SYMLINK:
      if (!(n1 = name_at(p, pend)) || !(n2 = name_at(n1 + strlen(n1) + 1, pend))) break;
      r->tag = TAG_NEW;
      if ((j = job_new(OP_SYMLINK, r, ino))) { j->s1 = STR(n1); j->s2 = STR(n2); }
      break;
    case FUSE_RENAME: case FUSE_RENAME2: {
      const struct fuse_rename2_in *in = (const void *)arg;
      if (!(n1 = name_at(p, pend)) || !(n2 = name_at(n1 + strlen(n1) + 1, pend))) break;
      if ((j = job_new(OP_RENAME, r, ino))) {
        j->s1 = STR(n1); j->s2 = STR(n2); j->a[4] = (double)in->newdir; j->a[5] = h->opcode == FUSE_RENAME2 ? in->flags : 0;
      }
      break;
    }
    case FUSE_LINK: {
      const struct fuse_link_in *in = (const void *)arg;
      if (!(n1 = name_at(p, pend))) break;
      if ((j = job_new(OP_LINK, r, in->oldnodeid))) { j->s1 = STR(n1); j->a[4] = (double)ino; }
      break;
    }
    case FUSE_OPEN: case FUSE_OPENDIR:
      if ((j = job_new(h->opcode == FUSE_OPEN ? OP_OPEN : OP_OPENDIR, r, ino))) j->a[4] = ((const struct fuse_open_in *)arg)->flags;
      break;
    case FUSE_CREATE: {
      const struct fuse_create_in *in = (const void *)arg;
      if (!(n1 = name_at(p, pend))) break;
      r->umask = in->umask;
      if (in->flags & O_EXCL) r->tag = TAG_NEW;
      if ((j = job_new(OP_CREATE, r, ino))) { j->s1 = STR(n1); j->a[4] = in->mode; j->a[5] = in->flags; }
      break;
    }
    case FUSE_READ: do_read(r, (const void *)arg); return;
    case FUSE_WRITE: {
      const struct fuse_write_in *in = (const void *)arg;
      if ((size_t)(pend - p) < in->size) break;
      do_write(r, in, p);
      return;
    }
    case FUSE_FLUSH: do_flush(r, ((const struct fuse_flush_in *)arg)->fh); return;
    case FUSE_RELEASE: do_release(r, ((const struct fuse_release_in *)arg)->fh); return;
    case FUSE_FSYNC: {
      const struct fuse_fsync_in *in = (const void *)arg;
      do_fsync(r, in->fh, in->fsync_flags & FUSE_FSYNC_FDATASYNC);
      return;
    }
    case FUSE_READDIR: case FUSE_READDIRPLUS: {
      const struct fuse_read_in *in = (const void *)arg;
      if ((j = job_new(h->opcode == FUSE_READDIR ? OP_READDIR : OP_READDIRPLUS, r, ino))) {
        j->a[4] = (double)in->fh; j->a[5] = in->size; j->a[6] = (double)in->offset;
      }
      break;
    }
    case FUSE_RELEASEDIR:
      if ((j = job_new(OP_RELEASEDIR, r, ino))) j->a[4] = (double)((const struct fuse_release_in *)arg)->fh;
      break;
    case FUSE_FSYNCDIR: {
      const struct fuse_fsync_in *in = (const void *)arg;
      if ((j = job_new(OP_FSYNCDIR, r, ino))) { j->a[4] = (double)in->fh; j->a[5] = in->fsync_flags & FUSE_FSYNC_FDATASYNC; }
      break;
    }
    case FUSE_STATFS: j = job_new(OP_STATFS, r, ino); break;
    case FUSE_SETXATTR: {
      const struct fuse_setxattr_in *in = (const void *)arg;
      if (!(n1 = name_at(p, pend))) break;
      const char *value = n1 + strlen(n1) + 1;
      if (value + in->size > pend) break;
      nocap_del(s, ino);
      if (!strcmp(n1, CAP_NAME)) nocap_clear(s);
      if (!(j = job_new(OP_SETXATTR, r, ino))) return;
      j->s1 = STR(n1); j->a[4] = in->flags; j->a[5] = in->size;
      j->buf = malloc(in->size ? in->size : 1);
      if (in->size) memcpy(j->buf, value, in->size);
      j->buflen = in->size;
      break;
    }
    case FUSE_GETXATTR: {
      const struct fuse_getxattr_in *in = (const void *)arg;
      if (!(n1 = name_at(p, pend))) break;
      if (!strcmp(n1, CAP_NAME)) {
        if (nocap_has(s, ino)) { reply_err(r, ENODATA); return; }
        r->tag = TAG_CAP_PROBE;   // js_reply_err learns the answer
      }
      if ((j = job_new(OP_GETXATTR, r, ino))) { j->s1 = STR(n1); j->a[4] = in->size; }
      break;
    }
    case FUSE_LISTXATTR:
      if ((j = job_new(OP_LISTXATTR, r, ino))) j->a[4] = ((const struct fuse_getxattr_in *)arg)->size;
      break;
    case FUSE_ACCESS:
      if ((j = job_new(OP_ACCESS, r, ino))) j->a[4] = ((const struct fuse_access_in *)arg)->mask;
      break;
    case FUSE_FALLOCATE: do_fallocate(r, (const void *)arg); return;
    case FUSE_LSEEK: do_lseek(r, (const void *)arg); return;
    case FUSE_COPY_FILE_RANGE: do_copy_file_range(r, (const void *)arg); return;
    default: reply_err(r, ENOSYS); return;   // STATX, locks, ioctl, poll, tmpfile...: the kernel copes
  }
  if (j) enqueue(j);
  else if (!n1 && r) reply_err(r, EINVAL);   // a malformed name (job_new replied on ENOMEM)
}


/** One request read from fd (the classic /dev/fuse read loop). */
static void dispatch(struct session *s, int fd, const char *buf, size_t len) {
  if (len < sizeof(struct fuse_in_header)) return;
  const struct fuse_in_header *h = (const void *)buf;
  __atomic_fetch_add(&s->ops[h->opcode < 63 ? h->opcode : 63], 1, __ATOMIC_RELAXED);
  const char *arg = buf + sizeof *h, *end = buf + (len < h->len ? len : h->len);
  const char *args_end = end - (size_t)h->total_extlen * 8;   // extensions (7.38) at the end
  if (args_end < arg) args_end = arg;
  if (h->opcode == FUSE_FORGET) {
    if ((size_t)(end - arg) >= sizeof(struct fuse_forget_in)) forget_one(s, h->nodeid, ((const struct fuse_forget_in *)arg)->nlookup);
    return;
  }
  if (h->opcode == FUSE_BATCH_FORGET) {
    const struct fuse_batch_forget_in *b = (const void *)arg;
    if ((size_t)(end - arg) < sizeof *b) return;
    const struct fuse_forget_one *f = (const void *)(b + 1);
    for (uint32_t i = 0; i < b->count && (const char *)(f + i + 1) <= end; i++) forget_one(s, f[i].nodeid, f[i].nlookup);
    return;
  }
  if (h->opcode == FUSE_INTERRUPT) return;   // requests finish on their own; nothing blocks long
  struct req *r = malloc(sizeof *r);
  if (!r) return;
  *r = (struct req){ &s->conn, fd, h->unique, h->nodeid, h->opcode, h->uid, h->gid, h->pid, 0, NULL, 0 };
  size_t fixed = arg_size(h->opcode);
  if ((size_t)(args_end - arg) < fixed) { reply_err(r, EINVAL); return; }
  serve(s, r, h, arg, arg + fixed, h->opcode == FUSE_WRITE ? end : args_end);
}

/** One request that came through io_uring: header, first argument and payload in the entry. */
static void serve_ring(struct ring_ent *e, void *arg) {
  struct session *s = arg;
  const struct fuse_in_header *h = (const void *)e->hdr->in_out;
  __atomic_fetch_add(&s->ops[h->opcode < 63 ? h->opcode : 63], 1, __ATOMIC_RELAXED);
  s->via_ring++;
  struct req *r = malloc(sizeof *r);
  if (!r) { uring_commit(e, h->unique, -ENOMEM, 0); return; }
  *r = (struct req){ &s->conn, -1, h->unique, h->nodeid, h->opcode, h->uid, h->gid, h->pid, 0, e, 0 };
  size_t n = e->hdr->ring_ent_in_out.payload_sz, ext = (size_t)h->total_extlen * 8;
  if (n > e->payload_sz) n = e->payload_sz;
  const char *pend = e->payload + n;
  if (h->opcode != FUSE_WRITE) pend -= ext < n ? ext : n;   // extensions (7.38) end the payload
  if (arg_size(h->opcode) > FUSE_URING_OP_IN_OUT_SZ) { reply_err(r, EINVAL); return; }
  serve(s, r, h, e->hdr->op_in, e->payload, pend);
}

// ---- the worker threads of one session: one cloned fd each, blocking reads ----
struct worker { struct session *s; int fd; pthread_t t; };

static void *worker_main(void *arg) {
  struct worker *w = arg;
  char *buf = malloc(w->s->conn.bufsize);
  for (;;) {
    ssize_t n = read(w->fd, buf, w->s->conn.bufsize);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == ENOENT)) continue;
    if (n <= 0) break;   // ENODEV: the connection ended
    dispatch(w->s, w->fd, buf, (size_t)n);
  }
  free(buf);
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

static void end_inline(void) {
  inline_mode = 0;
  if (inline_scopes) {
    napi_close_callback_scope(js_env, inline_cs);
    napi_close_handle_scope(js_env, inline_hs);
    inline_scopes = 0;
  }
}

// The ring's eventfd is readable: serve what came through io_uring, as on_readable does.
static void on_ring(uv_poll_t *h, int status, int events) {
  (void)status; (void)events;
  struct session *s = h->data;
  if (!s->ring) return;
  inline_mode = 1;
  uring_serve(s->ring, serve_ring, s);
  end_inline();
}

static void poll_closed(uv_handle_t *h);

static void stop_ring(struct session *s) {
  if (s->ring_poll) {
    uv_poll_stop(s->ring_poll);
    uv_close((uv_handle_t *)s->ring_poll, poll_closed);
    s->ring_poll = NULL;
  }
  uring_stop(s->ring);
  s->ring = NULL;
}

// After INIT, on the JS thread (the ring's only submitter): register the ring entries. An error
// message when uring=on and the kernel refused.
static const char *start_ring(struct session *s) {
  static char err[256];
  if (!s->conn.uring || s->ring) return NULL;
  int e = 0;
  size_t payload = s->conn.want.max_write > FUSE_MIN_READ_BUFFER ? s->conn.want.max_write : FUSE_MIN_READ_BUFFER;
  s->ring = uring_start(s->conn.fd, (unsigned)(s->cfg.uring_depth > 0 ? s->cfg.uring_depth : 8), payload, &e, err, sizeof err);
  if (!s->ring) return s->conn.want.uring == 2 ? err : NULL;
  uv_loop_t *loop;
  napi_get_uv_event_loop(js_env, &loop);
  s->ring_poll = malloc(sizeof(uv_poll_t));
  s->ring_poll->data = s;
  uv_poll_init(loop, s->ring_poll, uring_eventfd(s->ring));
  uv_poll_start(s->ring_poll, UV_READABLE, on_ring);
  return NULL;
}

static void on_readable(uv_poll_t *h, int status, int events) {
  (void)status; (void)events;
  struct session *s = h->data;
  inline_mode = 1;
  for (int i = 0; i < 256 && s->poll; i++) {
    ssize_t n = read(s->conn.fd, s->buf, s->conn.bufsize);
    if (n < 0 && errno == EAGAIN) break;
    if (n < 0 && (errno == EINTR || errno == ENOENT)) continue;   // ENOENT: interrupted before read
    if (n <= 0) {  // the kernel ended the connection (unmounted or aborted)
      stop_poll(s);
      struct job *j = job_new(OP_ENDED, NULL, 0);
      if (j) { j->sid = (int)(s - sessions); enqueue(j); }
      break;
    }
    dispatch(s, s->conn.fd, s->buf, (size_t)n);
  }
  end_inline();
}

// ---- notifications, sent from their own thread: a notify may block on a kernel lock
// that an in-flight request (waiting for the JS thread) holds ----
struct note { struct note *next; int kind, sid; uint64_t a, b; off_t off, len; char *name; };
static pthread_mutex_t n_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t n_cond = PTHREAD_COND_INITIALIZER;
static struct note *n_head, *n_tail;
static int n_started, n_busy;   // n_busy: a note is being written

static void *notify_main(void *arg) {
  (void)arg;
  for (;;) {
    pthread_mutex_lock(&n_lock);
    while (!n_head) pthread_cond_wait(&n_cond, &n_lock);
    struct note *n = n_head;
    n_head = n->next;
    if (!n_head) n_tail = NULL;
    n_busy = 1;
    pthread_mutex_unlock(&n_lock);
    struct conn *c = &sessions[n->sid].conn;
    if (sessions[n->sid].running) {
      if (n->kind == 1) notify_inval_entry(c, n->a, n->name);
      else if (n->kind == 2) notify_inval_inode(c, n->a, n->off, n->len);
      else if (n->kind == 3) notify_delete(c, n->a, n->b, n->name);
    }
    free(n->name);
    free(n);
    pthread_mutex_lock(&n_lock);
    n_busy = 0;
    pthread_mutex_unlock(&n_lock);
  }
  return NULL;
}

// notifyPending(): notes queued or being written (a caller waits for the kernel to have them)
static napi_value js_notify_pending(napi_env env, napi_callback_info info) {
  (void)info;
  pthread_mutex_lock(&n_lock);
  int pending = n_head != NULL || n_busy;
  pthread_mutex_unlock(&n_lock);
  napi_value v;
  napi_get_boolean(env, pending, &v);
  return v;
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

// mount(mountpoint, argv[], cfg) -> session id; throws with a one-line message on failure.
// argv: "-o" OPTS pairs and "-d"; cfg: writeback, readdirplus, passthrough (0 off, 1 auto,
// 2 on), stackDepth, threads, maxWrite, ... The mount answers once INIT is answered (OP_INIT).
static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char mnt[4096];
  if (arg_str(env, argv[0], mnt, sizeof mnt) < 0) { napi_throw_type_error(env, NULL, "mountpoint"); return NULL; }
  if (!wake_ready) { napi_throw_error(env, NULL, "setDispatcher first"); return NULL; }
  int sid = -1;
  for (int i = 0; i < MAX_SESSIONS; i++) if (!sessions[i].used) { sid = i; break; }
  if (sid < 0) { napi_throw_error(env, NULL, "too many sessions"); return NULL; }
  struct session *s = &sessions[sid];
  memset(s, 0, sizeof *s);
  s->conn.fd = -1;
  napi_value cfg = argv[2];
  s->cfg.writeback = get_int_prop(env, cfg, "writeback", 0);
  s->cfg.readdirplus = get_int_prop(env, cfg, "readdirplus", 2);
  s->cfg.cache_symlinks = get_int_prop(env, cfg, "cacheSymlinks", 1);
  s->cfg.parallel_dirops = get_int_prop(env, cfg, "parallelDirops", 0);
  s->cfg.async_dio = get_int_prop(env, cfg, "asyncDio", 1);
  s->cfg.posix_acl = get_int_prop(env, cfg, "posixAcl", 0);
  s->cfg.killpriv = get_int_prop(env, cfg, "killpriv", 0);
  s->cfg.debug = get_int_prop(env, cfg, "debug", 0);
  s->cfg.threads = get_int_prop(env, cfg, "threads", 0);
  s->cfg.uring_depth = get_int_prop(env, cfg, "uringDepth", 8);
  struct conn_want *w = &s->conn.want;
  w->max_write = (unsigned)get_int_prop(env, cfg, "maxWrite", 1 << 20);
  if (w->max_write < 4096) w->max_write = 1 << 20;
  w->max_readahead = (unsigned)get_int_prop(env, cfg, "maxReadahead", 1 << 20);
  w->passthrough = get_int_prop(env, cfg, "passthrough", 0);
  w->stack_depth = get_int_prop(env, cfg, "stackDepth", 1);
  w->max_minor = (unsigned)get_int_prop(env, cfg, "maxMinor", 0);
  w->uring = get_int_prop(env, cfg, "uring", 0);
  // DONT_MASK: creation modes arrive unmasked with the caller's umask, so a parent's default
  // ACL can decide instead of the umask, as on the kernel's own filesystems
  w->flags = FUSE_ASYNC_READ | FUSE_ATOMIC_O_TRUNC | FUSE_EXPORT_SUPPORT | FUSE_AUTO_INVAL_DATA | FUSE_DONT_MASK |
             FUSE_ABORT_ERROR | FUSE_DIRECT_IO_ALLOW_MMAP;   // mmap of direct-io files (union.ts sharedLowerCache)
  if (s->cfg.writeback) w->flags |= FUSE_WRITEBACK_CACHE;
  if (s->cfg.readdirplus) w->flags |= FUSE_DO_READDIRPLUS;
  if (s->cfg.readdirplus == 2) w->flags |= FUSE_READDIRPLUS_AUTO;
  if (s->cfg.cache_symlinks) w->flags |= FUSE_CACHE_SYMLINKS;
  if (s->cfg.parallel_dirops) w->flags |= FUSE_PARALLEL_DIROPS;
  if (s->cfg.async_dio) w->flags |= FUSE_ASYNC_DIO;
  if (s->cfg.posix_acl) w->flags |= FUSE_POSIX_ACL;
  if (s->cfg.killpriv) w->flags |= FUSE_HANDLE_KILLPRIV;

  char err[512] = "";
  uint32_t n = 0;
  NAPI_CALL(env, napi_get_array_length(env, argv[1], &n));
  s->conn.opts.mount_flags = MS_NOSUID | MS_NODEV;   // as libfuse: unless "suid"/"dev" is given
  for (uint32_t i = 0; i < n; i++) {
    napi_value e;
    napi_get_element(env, argv[1], i, &e);
    char tmp[8192];
    if (arg_str(env, e, tmp, sizeof tmp) < 0) continue;
    if (!strcmp(tmp, "-d")) s->conn.opts.debug = 1;
    else if (!strcmp(tmp, "-o") && i + 1 < n) {
      napi_get_element(env, argv[1], ++i, &e);
      if (arg_str(env, e, tmp, sizeof tmp) < 0) continue;
      if (fm_parse_opts(&s->conn.opts, tmp, err, sizeof err) < 0) { napi_throw_error(env, NULL, err); return NULL; }
    }
  }
  int given = get_int_prop(env, cfg, "fd", -1);
  if (given >= 0) {   // mounted by the helper in the caller's namespace; the session owns the fd now
    s->conn.fd = given;   // close-on-exec already (received with MSG_CMSG_CLOEXEC)
    snprintf(s->conn.mountpoint, sizeof s->conn.mountpoint, "%s", mnt);
    s->conn.by_fusermount = get_int_prop(env, cfg, "byFusermount", 0);
  } else if (conn_mount(&s->conn, mnt, err, sizeof err) < 0) {
    free(s->conn.opts.fsname); free(s->conn.opts.subtype);
    napi_throw_error(env, NULL, err);
    return NULL;
  }
  // any request fits: a write of max_write and its headers
  s->conn.bufsize = (size_t)w->max_write + 4096 > FUSE_MIN_READ_BUFFER ? (size_t)w->max_write + 4096 : FUSE_MIN_READ_BUFFER;
  s->buf = malloc(s->conn.bufsize);
  s->nocap = calloc(NOCAP_SLOTS, sizeof(uint64_t));   // NULL: no cache, every probe goes to JS
  s->used = s->running = 1;
  if (live_sessions++ == 0) uv_ref((uv_handle_t *)&wake);
  js_thread = pthread_self();
  int fd = s->conn.fd;
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  s->poll = malloc(sizeof(uv_poll_t));
  s->poll->data = s;
  uv_poll_init(loop, s->poll, fd);
  uv_poll_start(s->poll, UV_READABLE, on_readable);
  if (s->cfg.threads > 0) {
    s->workers = calloc((size_t)s->cfg.threads, sizeof(struct worker));
    for (int i = 0; i < s->cfg.threads; i++) {
      struct worker *wk = &s->workers[s->nworkers];
      wk->s = s;
      wk->fd = conn_clone_fd(&s->conn);
      if (wk->fd < 0) break;
      if (pthread_create(&wk->t, NULL, worker_main, wk) != 0) { close(wk->fd); break; }
      s->nworkers++;
    }
  }
  return num(env, sid);
}

static struct session *arg_session(napi_env env, napi_value v) {
  int64_t sid = arg_i64(env, v);
  if (sid < 0 || sid >= MAX_SESSIONS || !sessions[sid].used) return NULL;
  return &sessions[sid];
}

// destroy(sid): after OP_ENDED: join the workers, let go of the mount, free the session.
static napi_value js_destroy(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct session *s = arg_session(env, argv[0]);
  if (!s) return NULL;
  stop_poll(s);
  stop_ring(s);
  s->running = 0;
  // as libfuse: a connection that already ended (POLLERR) is not unmounted again — something
  // else may be mounted there by now; the fd is closed first, so a synchronous unmount cannot
  // recurse into this filesystem
  struct pollfd pfd = { s->conn.fd, 0, 0 };
  int ended = poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLERR);
  for (int i = 0; i < s->nworkers; i++) {
    pthread_join(s->workers[i].t, NULL);
    close(s->workers[i].fd);
  }
  free(s->workers);
  close(s->conn.fd);
  if (!ended) conn_unmount(&s->conn);
  free(s->buf);
  free(s->nocap);
  free(s->conn.opts.fsname); free(s->conn.opts.subtype);
  memset(s, 0, sizeof *s);
  if (--live_sessions == 0) uv_unref((uv_handle_t *)&wake);
  return NULL;
}

// opCounts(sid) -> Float64Array(66): requests received per opcode; [64]: of them, through io_uring;
// [65]: open file handles.
static napi_value js_op_counts(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct session *s = arg_session(env, argv[0]);
  napi_value ab, arr;
  void *data;
  NAPI_CALL(env, napi_create_arraybuffer(env, 66 * sizeof(double), &data, &ab));
  NAPI_CALL(env, napi_create_typedarray(env, napi_float64_array, 66, ab, 0, &arr));
  for (int i = 0; i < 64; i++) ((double *)data)[i] = s ? (double)__atomic_load_n(&s->ops[i], __ATOMIC_RELAXED) : 0;
  ((double *)data)[64] = s ? (double)s->via_ring : 0;
  ((double *)data)[65] = s ? (double)__atomic_load_n(&s->handles, __ATOMIC_RELAXED) : 0;
  return arr;
}

static napi_value js_session_fd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct session *s = arg_session(env, argv[0]);
  return num(env, s ? s->conn.fd : -1);
}

// ---- replies (JS thread) ----
#define REPLY_PROLOGUE(N)                                              \
  size_t argc = N;                                                     \
  napi_value argv[N];                                                  \
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL)); \
  struct req *req = req_take(env, argv[0]);                            \
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
  int err = (int)arg_i64(env, argv[1]);
  if (req->tag == TAG_CAP_PROBE && err == ENODATA) nocap_add((struct session *)req->c, req->nodeid);
  return num(env, reply_err(req, err));
}

static napi_value js_reply_none(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(1);
  reply_none(req);
  return NULL;
}

// replyEntry(req, nodeid, generation, entryTimeout, attrTimeout, stat)
static napi_value js_reply_entry(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(6);
  double *a = f64_array(env, argv[5], 15);
  if (!a) { reply_err(req, EIO); napi_throw_type_error(env, NULL, "stat"); return NULL; }
  struct stat st;
  stat_from(a, &st);
  if (req->tag == TAG_NEW) nocap_add((struct session *)req->c, (uint64_t)arg_f64(env, argv[1]));
  return num(env, reply_entry(req, (uint64_t)arg_f64(env, argv[1]), (uint64_t)arg_f64(env, argv[2]),
                              arg_f64(env, argv[3]), arg_f64(env, argv[4]), &st));
}

// replyAttr(req, stat, timeout)
static napi_value js_reply_attr(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(3);
  double *a = f64_array(env, argv[1], 15);
  if (!a) { reply_err(req, EIO); napi_throw_type_error(env, NULL, "stat"); return NULL; }
  struct stat st;
  stat_from(a, &st);
  return num(env, reply_attr(req, &st, arg_f64(env, argv[2])));
}

static napi_value js_reply_readlink(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2);
  char buf[PATH_MAX + 1];
  ssize_t n = arg_str(env, argv[1], buf, sizeof buf);
  if (n < 0) { reply_err(req, EIO); return NULL; }
  return num(env, reply_buf(req, buf, (size_t)n));
}

// FOPEN-style flags from JS: 1 direct_io, 2 keep_cache, 4 cache_readdir, 8 nonseekable,
// 16 nosync (ours), 32 noflush, 64 passthrough (ours: wanted, when the connection has it)
enum { JF_DIRECT_IO = 1, JF_KEEP_CACHE = 2, JF_CACHE_DIR = 4, JF_NONSEEKABLE = 8, JF_NOSYNC = 16, JF_NOFLUSH = 32, JF_PASSTHROUGH = 64 };

static uint32_t fopen_flags(int fl) {
  return (fl & JF_DIRECT_IO ? FOPEN_DIRECT_IO : 0) | (fl & JF_KEEP_CACHE ? FOPEN_KEEP_CACHE : 0) |
         (fl & JF_CACHE_DIR ? FOPEN_CACHE_DIR : 0) | (fl & JF_NONSEEKABLE ? FOPEN_NONSEEKABLE : 0) |
         (fl & JF_NOFLUSH ? FOPEN_NOFLUSH : 0);
}

// A handle for an fd-backed open. With passthrough negotiated, every regular-file open of an
// inode takes the inode's io mode (conn.c): passthrough (then only NOFLUSH/NONSEEKABLE may go
// with FOPEN_PASSTHROUGH) or cached. 0 on a conflict (the caller answers ESTALE) or no memory.
static uint64_t open_handle(struct req *req, int fd, uint64_t nodeid, int open_flags, int fl, uint32_t *oflags,
                            int32_t *backing, int *conflict) {
  *backing = 0;
  *conflict = 0;
  *oflags = fopen_flags(fl);
  int mode = IO_CACHED;
  if (req->c->passthrough) {
    mode = io_open(req->c, nodeid, fd, !!(fl & JF_PASSTHROUGH), backing);
    if (mode == IO_CONFLICT) { *conflict = 1; return 0; }
    if (mode == IO_PASSTHROUGH) *oflags = (*oflags & (FOPEN_NOFLUSH | FOPEN_NONSEEKABLE)) | FOPEN_PASSTHROUGH;
  }
  int hf = ((fl & JF_NOSYNC) ? HF_NOSYNC : 0) |
           ((fl & JF_DIRECT_IO) && (open_flags & O_ACCMODE) == O_RDONLY && !(*oflags & FOPEN_PASSTHROUGH) ? HF_DROP_PAGES : 0);
  uint64_t fh = handle_add(HANDLE_FD, fd, nodeid, open_flags, hf, 0);
  if (!fh) { if (req->c->passthrough) io_release(req->c, nodeid, (enum io_mode)mode); return 0; }
  handle_get(fh)->io_mode = mode;
  handle_get(fh)->owner = req->c;
  return fh;
}

static void drop_handle(uint64_t fh, struct conn *c) {
  struct handle *h = handle_take(fh);
  if (!h) return;
  __atomic_sub_fetch(&((struct session *)c)->handles, 1, __ATOMIC_RELAXED);
  if (h->kind == HANDLE_FD && c->passthrough) io_release(c, h->ino, (enum io_mode)h->io_mode);
  if (h->kind == HANDLE_FD) close(h->fd);
  if ((h->flags & HF_DROP_PAGES) && handle_count_ino(h->ino, c) == 0) {
    // sent by the notify thread: invalidating waits on page locks a pending READ may hold
    struct note *n = calloc(1, sizeof *n);
    if (n) {
      n->kind = 2;
      n->sid = (int)((struct session *)c - sessions);
      n->a = h->ino;
      notify_push(n);   // off 0, len 0: every page
    }
  }
  handle_free(h);
}

// replyOpen(req, fd, fopenFlags, nodeid, openFlags) -> fh. fd < 0: a JS handle with id = -fd.
static napi_value js_reply_open(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(5);
  int fd = (int)arg_i64(env, argv[1]);
  int fl = (int)arg_i64(env, argv[2]);
  uint64_t nodeid = (uint64_t)arg_f64(env, argv[3]);
  int open_flags = (int)arg_i64(env, argv[4]);
  uint32_t oflags = fopen_flags(fl);
  int32_t backing = 0;
  struct conn *c = req->c;
  int conflict = 0;
  uint64_t fh = fd >= 0 ? open_handle(req, fd, nodeid, open_flags, fl, &oflags, &backing, &conflict)
                        : handle_add(HANDLE_JS, -1, nodeid, open_flags, 0, (uint64_t)-fd);
  if (!fh) {
    if (fd >= 0) close(fd);
    reply_err(req, conflict ? ESTALE : ENFILE);
    return num(env, conflict ? -ESTALE : 0);  // -ESTALE: give the node's names a new node
  }
  __atomic_add_fetch(&((struct session *)c)->handles, 1, __ATOMIC_RELAXED);
  if (reply_open(req, fh, oflags, backing) != 0) {  // interrupted: the kernel will never release it
    drop_handle(fh, c);
    return num(env, 0);
  }
  return num(env, (double)fh);
}

// replyCreate(req, nodeid, generation, entryTimeout, attrTimeout, stat, fd, fopenFlags, openFlags) -> fh.
// fd < 0: a JS handle with id = -fd (as replyOpen).
static napi_value js_reply_create(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(9);
  int fd = (int)arg_i64(env, argv[6]);
  double *a = f64_array(env, argv[5], 15);
  if (!a) { if (fd >= 0) close(fd); reply_err(req, EIO); return NULL; }
  struct stat st;
  stat_from(a, &st);
  uint64_t nodeid = (uint64_t)arg_f64(env, argv[1]);
  if (req->tag == TAG_NEW) nocap_add((struct session *)req->c, nodeid);
  uint32_t oflags;
  int32_t backing;
  struct conn *c = req->c;
  int conflict = 0;
  uint64_t fh;
  if (fd >= 0) fh = open_handle(req, fd, nodeid, (int)arg_i64(env, argv[8]), (int)arg_i64(env, argv[7]), &oflags, &backing, &conflict);
  else {
    oflags = fopen_flags((int)arg_i64(env, argv[7]));
    backing = 0;
    fh = handle_add(HANDLE_JS, -1, nodeid, (int)arg_i64(env, argv[8]), 0, (uint64_t)-fd);
  }
  if (!fh) { if (fd >= 0) close(fd); reply_err(req, conflict ? ESTALE : ENFILE); return num(env, 0); }
  __atomic_add_fetch(&((struct session *)c)->handles, 1, __ATOMIC_RELAXED);
  if (reply_create(req, nodeid, (uint64_t)arg_f64(env, argv[2]), arg_f64(env, argv[3]), arg_f64(env, argv[4]), &st,
                   fh, oflags, backing) != 0) {
    drop_handle(fh, c);
    return num(env, 0);
  }
  return num(env, (double)fh);
}

// replyOpendir(req, fh, fopenFlags): directory handles belong to JS.
static napi_value js_reply_opendir(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(3);
  return num(env, reply_open(req, (uint64_t)arg_f64(env, argv[1]), fopen_flags((int)arg_i64(env, argv[2])), 0));
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
  return num(env, reply_buf(req, data, len));
}

static napi_value js_reply_write(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2);
  return num(env, reply_write(req, (size_t)arg_i64(env, argv[1])));
}

static napi_value js_reply_xattr(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2);
  return num(env, reply_xattr_size(req, (size_t)arg_i64(env, argv[1])));
}

// replyStatfs(req, Float64Array[bsize, frsize, blocks, bfree, bavail, files, ffree, favail, fsid, flag, namemax])
static napi_value js_reply_statfs(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2);
  double *a = f64_array(env, argv[1], 11);
  if (!a) { reply_err(req, EIO); return NULL; }
  struct statvfs s;
  memset(&s, 0, sizeof s);
  s.f_bsize = (unsigned long)a[0]; s.f_frsize = (unsigned long)a[1];
  s.f_blocks = (fsblkcnt_t)a[2]; s.f_bfree = (fsblkcnt_t)a[3]; s.f_bavail = (fsblkcnt_t)a[4];
  s.f_files = (fsfilcnt_t)a[5]; s.f_ffree = (fsfilcnt_t)a[6]; s.f_favail = (fsfilcnt_t)a[7];
  s.f_fsid = (unsigned long)a[8]; s.f_flag = (unsigned long)a[9]; s.f_namemax = (unsigned long)a[10];
  return num(env, reply_statfs(req, &s));
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
  if (sid < 0 || sid >= MAX_SESSIONS || !sessions[sid].used || !sessions[sid].running) return num(env, -ENODEV);
  return num(env, notify_inval_inode(&sessions[sid].conn, (uint64_t)arg_f64(env, argv[1]), -1, 0));
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
  export_fn(env, exports, "opCounts", js_op_counts);
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
  export_fn(env, exports, "notifyInvalEntry", js_notify_entry);
  export_fn(env, exports, "notifyInvalAttr", js_notify_attr);
  export_fn(env, exports, "notifyInvalInode", js_notify_inode);
  export_fn(env, exports, "notifyDelete", js_notify_delete);
  export_fn(env, exports, "notifyPending", js_notify_pending);
  return exports;
}
