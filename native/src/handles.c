// Handle table: fh -> backing fd. Lookup is lock-free (two-level array that never moves);
// add/take/retarget serialize on one mutex, I/O on a handle holds its rwlock for reading.
#include "common.h"
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#define CHUNK_BITS 12
#define CHUNK_SIZE (1u << CHUNK_BITS)
#define MAX_CHUNKS 1024  // 4M handles

static struct handle *_Atomic *chunks[MAX_CHUNKS];
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t *free_list;
static size_t free_len, free_cap;
static uint64_t next_fh = 1;  // 0 is never a valid fh
static size_t live;

static struct handle *_Atomic *slot(uint64_t fh, int create) {
  uint64_t c = fh >> CHUNK_BITS;
  if (c >= MAX_CHUNKS) return NULL;
  if (!chunks[c]) {
    if (!create) return NULL;
    chunks[c] = calloc(CHUNK_SIZE, sizeof(struct handle *));
    if (!chunks[c]) return NULL;
  }
  return &chunks[c][fh & (CHUNK_SIZE - 1)];
}

uint64_t handle_add(int kind, int fd, uint64_t ino, int open_flags, int flags, uint64_t js_id) {
  struct handle *h = calloc(1, sizeof(*h));
  if (!h) return 0;
  pthread_rwlock_init(&h->lock, NULL);
  h->kind = kind; h->fd = fd; h->ino = ino; h->open_flags = open_flags; h->flags = flags;
  h->js_id = js_id;
  pthread_mutex_lock(&table_lock);
  uint64_t fh = free_len ? free_list[--free_len] : next_fh++;
  struct handle *_Atomic *s = slot(fh, 1);
  if (!s) { pthread_mutex_unlock(&table_lock); free(h); return 0; }
  *s = h;
  live++;
  pthread_mutex_unlock(&table_lock);
  return fh;
}

struct handle *handle_get(uint64_t fh) {
  struct handle *_Atomic *s = slot(fh, 0);
  return s ? *s : NULL;
}

struct handle *handle_take(uint64_t fh) {
  pthread_mutex_lock(&table_lock);
  struct handle *_Atomic *s = slot(fh, 0);
  struct handle *h = s ? *s : NULL;
  if (h) {
    *s = NULL;
    live--;
    if (free_len == free_cap) {
      size_t cap = free_cap ? free_cap * 2 : 256;
      uint64_t *n = realloc(free_list, cap * sizeof(uint64_t));
      if (n) { free_list = n; free_cap = cap; }
    }
    if (free_len < free_cap) free_list[free_len++] = fh;
  }
  pthread_mutex_unlock(&table_lock);
  return h;
}

void handle_free(struct handle *h) {
  pthread_rwlock_destroy(&h->lock);
  free(h);
}

int handle_retarget(uint64_t fh, int newfd) {
  pthread_mutex_lock(&table_lock);
  struct handle *h = handle_get(fh);
  if (!h || h->kind != HANDLE_FD) { pthread_mutex_unlock(&table_lock); return -EBADF; }
  // the kernel reads a passthrough handle's backing file itself: it cannot follow a copy-up
  if (h->io_mode == 1 /* IO_PASSTHROUGH */) { pthread_mutex_unlock(&table_lock); return -EBUSY; }
  pthread_rwlock_wrlock(&h->lock);  // waits for in-flight I/O on the old fd
  int old = h->fd;
  h->fd = newfd;
  pthread_rwlock_unlock(&h->lock);
  pthread_mutex_unlock(&table_lock);
  close(old);
  return 0;
}

size_t handle_list(uint64_t ino, uint64_t *out_fh, int *out_flags, size_t max) {
  size_t n = 0;
  pthread_mutex_lock(&table_lock);
  for (uint64_t fh = 1; fh < next_fh && n < max; fh++) {
    struct handle *h = handle_get(fh);
    if (h && h->ino == ino) { out_fh[n] = fh; out_flags[n] = h->open_flags; n++; }
  }
  pthread_mutex_unlock(&table_lock);
  return n;
}

/** Live handles of node ino opened on connection owner. */
size_t handle_count_ino(uint64_t ino, const void *owner) {
  size_t n = 0;
  pthread_mutex_lock(&table_lock);
  for (uint64_t fh = 1; fh < next_fh; fh++) {
    struct handle *h = handle_get(fh);
    if (h && h->ino == ino && h->owner == owner) n++;
  }
  pthread_mutex_unlock(&table_lock);
  return n;
}

size_t handle_count(void) { return live; }
