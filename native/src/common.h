// Shared declarations of the layerfs native addon.
#pragma once
#define _GNU_SOURCE
#include <limits.h>
#include <sys/types.h>
#include <node_api.h>
#include <pthread.h>
#include <stdint.h>
#include <uv.h>

#define NAPI_CALL(env, call)                                              \
  do {                                                                    \
    if ((call) != napi_ok) {                                              \
      napi_throw_error((env), NULL, "N-API call failed: " #call);         \
      return NULL;                                                        \
    }                                                                     \
  } while (0)

// ---- handle table (handles.c): open files whose data path is served in C ----
enum handle_kind { HANDLE_FD = 1, HANDLE_JS = 2 };
// HF_NOSYNC: fsync=0 / volatile, fsync is a no-op. HF_DROP_PAGES: a read-only direct-io open
// (a shared lower file): splice/sendfile readers still fill the node's page cache (the kernel
// serves splice of a direct-io FUSE file through it), so its pages are dropped at the node's
// last release — the lower file's own cache stays the only lasting copy.
enum handle_flags { HF_NOSYNC = 1, HF_DROP_PAGES = 2 };

struct handle {
  pthread_rwlock_t lock;  // read-held by I/O, write-held while re-targeting
  int fd;                 // backing fd (HANDLE_FD)
  int io_mode;            // with passthrough negotiated: enum io_mode of conn.h (released at release)
  int kind;
  int flags;
  int open_flags;
  uint64_t ino;           // FUSE node id, so JS can find handles of a node
  const void *owner;      // the connection it was opened on (node ids repeat across mounts)
  uint64_t js_id;         // JS-side handle id (HANDLE_JS)
  // thin volume fast path (HANDLE_JS): block map and exclusive flags owned by JS
  int32_t *thin_blocks;   // virtual block -> data block, -1 unmapped
  uint8_t *thin_excl;     // 1: written in place (no allocation, no copy-on-write needed)
  uint64_t thin_n;        // entries in both arrays
  uint64_t thin_size;     // volume size in bytes
  uint32_t thin_bs;       // block size
  int thin_fd;            // the pool's data file
  uint32_t thin_dev;      // the volume's device id
  // shared by every handle of the pool (JS-owned): free blocks JS holds for C to allocate from,
  // and the log of what C mapped, which JS applies to the pool before anything else
  int32_t *thin_ctl;      // [0] held blocks left, [1] log entries
  int32_t *thin_held;     // held free blocks (zeros unless the pool skips zeroing), used from the end
  int32_t *thin_log;      // 3 ints an entry: dev, virtual block, new block
  size_t thin_log_cap;    // entries
  struct thin_lock *thin_lock;   // the pool's (thin.c)
};

uint64_t handle_add(int kind, int fd, uint64_t ino, int open_flags, int flags, uint64_t js_id);
struct handle *handle_get(uint64_t fh);
// Removes fh from the table and returns it (caller closes and frees).
struct handle *handle_take(uint64_t fh);
void handle_free(struct handle *h);
int handle_retarget(uint64_t fh, int newfd);
// Fills out[] with up to max (fh, open_flags) pairs of handles on node ino; returns count.
size_t handle_list(uint64_t ino, uint64_t *out_fh, int *out_flags, size_t max);
size_t handle_count(void);
size_t handle_count_ino(uint64_t ino, const void *owner);

// ---- session (session.c) ----
napi_value session_init_exports(napi_env env, napi_value exports);
// ---- thin volumes' data path (thin.c) ----
struct req;
napi_value thin_init_exports(napi_env env, napi_value exports);
void thin_read(struct req *req, struct handle *h, size_t size, off_t off);
// 1 when replied; 0 when JS must do it.
int thin_write(struct req *req, struct handle *h, const char *data, size_t size, off_t off);
// ---- the resident service's socket (service.c) ----
napi_value service_init_exports(napi_env env, napi_value exports);
// ---- syscalls (sys.c) ----
napi_value sys_init_exports(napi_env env, napi_value exports);

// helpers (addon.c)
void export_fn(napi_env env, napi_value exports, const char *name, napi_callback cb);
int64_t arg_i64(napi_env env, napi_value v);
double arg_f64(napi_env env, napi_value v);
// Copies a JS string into buf (NUL-terminated); returns length or -1.
ssize_t arg_str(napi_env env, napi_value v, char *buf, size_t size);
napi_value num(napi_env env, double d);
