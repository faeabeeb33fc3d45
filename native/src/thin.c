// The data path of thin volumes in C: reads map each block through a table JS owns; a write is
// done here when every block it touches is exclusive, or can be made so from blocks JS holds
// for it. Decisions (which blocks, when to commit) stay in JS (src/thin/thinfs.ts).
//
// Locking, per pool: readers and writers of the tables (worker threads, or the JS thread reading
// requests itself) hold `maps` for reading; JS holds it for writing whenever it changes the
// tables (applies the log, snapshots, resizes, tops up the held blocks). A write that takes a
// held block also holds `alloc`, so two writes into one unmapped or shared block never both
// take one: the second sees the first one's block, exclusive.
#include "common.h"
#include "conn.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_THIN_POOLS 256

struct thin_lock {
  pthread_rwlock_t maps;
  pthread_mutex_t alloc;
};

static struct thin_lock *locks[MAX_THIN_POOLS];

static struct thin_lock *lock_of(napi_env env, napi_value v) {
  int64_t id = arg_i64(env, v);
  return id >= 0 && id < MAX_THIN_POOLS ? locks[id] : NULL;
}

static int32_t load_block(const struct handle *h, uint64_t vb) {
  return __atomic_load_n(&h->thin_blocks[vb], __ATOMIC_ACQUIRE);
}

// Exclusive: written in place. The flag is set after the block (release), read before it.
static int exclusive(const struct handle *h, uint64_t vb) {
  return __atomic_load_n(&h->thin_excl[vb], __ATOMIC_ACQUIRE) && load_block(h, vb) >= 0;
}

static void read_locked(struct req *req, struct handle *h, size_t size, off_t off) {
  if ((uint64_t)off >= h->thin_size) { reply_buf(req, NULL, 0); return; }
  if ((uint64_t)off + size > h->thin_size) size = h->thin_size - (uint64_t)off;
  char *space = reply_space(req, size), *buf = space ? space : malloc(size ? size : 1);
  if (!buf) { reply_err(req, ENOMEM); return; }
  for (size_t done = 0; done < size;) {
    uint64_t pos = (uint64_t)off + done, vb = pos / h->thin_bs, in = pos % h->thin_bs;
    size_t n = h->thin_bs - in;
    if (n > size - done) n = size - done;
    int32_t b = vb < h->thin_n ? load_block(h, vb) : -1;
    if (b < 0) { memset(buf + done, 0, n); done += n; continue; }
    off_t at = (off_t)b * h->thin_bs + (off_t)in;
    while (done + n < size) {   // the blocks that follow it in the data file: one pread
      uint64_t nvb = ((uint64_t)off + done + n) / h->thin_bs;
      int32_t nb = nvb < h->thin_n ? load_block(h, nvb) : -1;
      if (nb < 0 || (off_t)nb * h->thin_bs != at + (off_t)n) break;
      n += size - done - n < h->thin_bs ? size - done - n : h->thin_bs;
    }
    ssize_t r = pread(h->thin_fd, buf + done, n, at);
    if (r < 0) { int e = errno; if (!space) free(buf); reply_err(req, e); return; }
    if ((size_t)r < n) memset(buf + done + r, 0, n - (size_t)r);
    done += n;
  }
  if (space) { reply_filled(req, size); return; }
  reply_buf(req, buf, size);
  free(buf);
}

void thin_read(struct req *req, struct handle *h, size_t size, off_t off) {
  struct thin_lock *lk = h->thin_lock;
  pthread_rwlock_rdlock(&lk->maps);
  read_locked(req, h, size, off);
  pthread_rwlock_unlock(&lk->maps);
}

// Blocks of the range that are not exclusive: each needs a held block.
static int blocks_needed(const struct handle *h, size_t size, off_t off) {
  int need = 0;
  for (uint64_t vb = (uint64_t)off / h->thin_bs; vb * h->thin_bs < (uint64_t)off + size; vb++)
    if (!exclusive(h, vb)) need++;
  return need;
}

// Makes vb exclusive with a held block: copies the rest of a shared block around [in, in+n)
// first (the kernel reflinks it where the host can). Only the rest: on ext4 a copy of the
// whole block then overwritten cost a quarter more per first write; on xfs one remap of the
// whole block then overwritten makes xfs copy-on-write the written range itself, with its
// speculative preallocation (16 MiB of host space for 256 first writes, not 1). -errno when
// the copy failed.
static int take_block(struct handle *h, uint64_t vb, uint64_t in, size_t n) {
  const uint64_t bs = h->thin_bs;
  int32_t old = load_block(h, vb), nb = h->thin_held[h->thin_ctl[0] - 1];
  if (old >= 0 && n < bs) {
    const uint64_t part[2][2] = { { 0, in }, { in + n, bs - in - n } };
    for (int k = 0; k < 2; k++) {
      loff_t from = (loff_t)old * (loff_t)bs + (loff_t)part[k][0], to = (loff_t)nb * (loff_t)bs + (loff_t)part[k][0];
      for (size_t left = part[k][1]; left;) {
        ssize_t c = copy_file_range(h->thin_fd, &from, h->thin_fd, &to, left, 0);
        if (c <= 0) return c < 0 ? -errno : -EIO;   // nb stays held
        left -= (size_t)c;
      }
    }
  }
  h->thin_ctl[0]--;
  int32_t *e = h->thin_log + 3 * h->thin_ctl[1]++;
  e[0] = (int32_t)h->thin_dev; e[1] = (int32_t)vb; e[2] = nb;
  __atomic_store_n(&h->thin_blocks[vb], nb, __ATOMIC_RELEASE);
  __atomic_store_n(&h->thin_excl[vb], 1, __ATOMIC_RELEASE);
  return 0;
}

// All of len bytes at `at` in the data file; 0 or an errno.
static int write_all(int fd, const char *p, size_t len, off_t at) {
  for (size_t w = 0; w < len;) {
    ssize_t r = pwrite(fd, p + w, len - w, at + (off_t)w);
    if (r <= 0) return r < 0 ? errno : EIO;
    w += (size_t)r;
  }
  return 0;
}

// Writes the range, making each block exclusive first; a run of blocks adjacent in the data
// file goes in one pwrite. Replies.
static void write_locked(struct req *req, struct handle *h, const char *data, size_t size, off_t off) {
  const uint64_t bs = h->thin_bs;
  size_t run = 0;   // the last `run` bytes before data + done go to run_at
  off_t run_at = 0;
  int e = 0;
  for (size_t done = 0; done < size && !e;) {
    uint64_t pos = (uint64_t)off + done, vb = pos / bs, in = pos % bs;
    size_t n = bs - in;
    if (n > size - done) n = size - done;
    if (!exclusive(h, vb) && (e = -take_block(h, vb, in, n))) break;
    off_t at = (off_t)load_block(h, vb) * (off_t)bs + (off_t)in;
    if (run && at != run_at + (off_t)run) {
      e = write_all(h->thin_fd, data + done - run, run, run_at);
      run = 0;
    }
    if (!run) run_at = at;
    run += n;
    done += n;
  }
  if (!e && run) e = write_all(h->thin_fd, data + size - run, run, run_at);
  if (e) reply_err(req, e);
  else reply_write(req, size);
}

// 1 when replied, 0 when JS must do it (past the end, too few held blocks or too little log room:
// none are held while the pool is read-only).
int thin_write(struct req *req, struct handle *h, const char *data, size_t size, off_t off) {
  if ((uint64_t)off + size > h->thin_size) return 0;
  struct thin_lock *lk = h->thin_lock;
  int done = 1;
  pthread_rwlock_rdlock(&lk->maps);
  if (!blocks_needed(h, size, off)) write_locked(req, h, data, size, off);
  else {
    pthread_mutex_lock(&lk->alloc);
    int need = blocks_needed(h, size, off);   // again: another write may have taken them meanwhile
    const int32_t *ctl = h->thin_ctl;
    if (!need || (ctl[0] >= need && (size_t)(ctl[1] + need) <= h->thin_log_cap)) write_locked(req, h, data, size, off);
    else done = 0;
    pthread_mutex_unlock(&lk->alloc);
  }
  pthread_rwlock_unlock(&lk->maps);
  return done;
}

// thinLockNew() -> id: the lock of one pool's tables.
static napi_value js_thin_lock_new(napi_env env, napi_callback_info info) {
  (void)info;
  for (int i = 0; i < MAX_THIN_POOLS; i++) {
    if (locks[i]) continue;
    struct thin_lock *lk = calloc(1, sizeof *lk);
    if (!lk) return num(env, -ENOMEM);
    pthread_rwlockattr_t a;
    pthread_rwlockattr_init(&a);
    pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);   // JS is never starved by readers
    pthread_rwlock_init(&lk->maps, &a);
    pthread_rwlockattr_destroy(&a);
    pthread_mutex_init(&lk->alloc, NULL);
    locks[i] = lk;
    return num(env, i);
  }
  return num(env, -EMFILE);
}

// thinLock(id, on): JS takes (1) or lets go of (0) the tables for writing.
static napi_value js_thin_lock(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct thin_lock *lk = lock_of(env, argv[0]);
  if (!lk) return num(env, -EINVAL);
  if (arg_i64(env, argv[1])) pthread_rwlock_wrlock(&lk->maps);
  else pthread_rwlock_unlock(&lk->maps);
  return num(env, 0);
}

// thinAttach(fh, dataFd, blockSize, blocks: Int32Array, excl: Uint8Array, volumeSize, dev,
// ctl: Int32Array, held: Int32Array, log: Int32Array, lockId): the C data path of a thin volume
// handle. ctl: [0] held blocks left (used from the end of held), [1] log entries (3 ints each:
// dev, virtual block, new block). JS keeps the arrays alive, calls again when they change size,
// and holds the lock for writing meanwhile.
static napi_value js_thin_attach(napi_env env, napi_callback_info info) {
  size_t argc = 11;
  napi_value argv[11];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 11) return num(env, -EINVAL);
  struct handle *h = handle_get((uint64_t)arg_f64(env, argv[0]));
  struct thin_lock *lk = lock_of(env, argv[10]);
  if (!h || h->kind != HANDLE_JS) return num(env, -EBADF);
  if (!lk) return num(env, -EINVAL);
  napi_typedarray_type t;
  size_t n[5];
  void *d[5];
  const int idx[5] = { 3, 4, 7, 8, 9 };
  const napi_typedarray_type want[5] = { napi_int32_array, napi_uint8_array, napi_int32_array, napi_int32_array, napi_int32_array };
  for (int i = 0; i < 5; i++) {
    if (napi_get_typedarray_info(env, argv[idx[i]], &t, &n[i], &d[i], NULL, NULL) != napi_ok || t != want[i])
      return num(env, -EINVAL);
  }
  if (n[0] != n[1] || n[2] < 2) return num(env, -EINVAL);
  h->thin_fd = (int)arg_i64(env, argv[1]);
  h->thin_bs = (uint32_t)arg_i64(env, argv[2]);
  h->thin_excl = d[1];
  h->thin_n = n[0];
  h->thin_size = (uint64_t)arg_f64(env, argv[5]);
  h->thin_dev = (uint32_t)arg_i64(env, argv[6]);
  h->thin_ctl = d[2];
  h->thin_held = d[3];
  h->thin_log = d[4];
  h->thin_log_cap = n[4] / 3;
  h->thin_lock = lk;
  __atomic_store_n(&h->thin_blocks, (int32_t *)d[0], __ATOMIC_RELEASE);   // last: the data path is on from here
  return num(env, 0);
}

napi_value thin_init_exports(napi_env env, napi_value exports) {
  export_fn(env, exports, "thinAttach", js_thin_attach);
  export_fn(env, exports, "thinLockNew", js_thin_lock_new);
  export_fn(env, exports, "thinLock", js_thin_lock);
  return exports;
}
