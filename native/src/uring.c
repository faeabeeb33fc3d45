// FUSE over io_uring: the ring, its entries, and commits. See uring.h.
#define _GNU_SOURCE
#include "uring.h"
#include <errno.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

struct uring {
  struct io_uring ring;
  int fuse_fd, efd;
  unsigned nq, depth;
  struct ring_ent *ents;       // nq * depth
  void *mem;                   // every entry's buffers, one mapping (pages are touched on use)
  size_t mem_len;
  int batch;                   // inside uring_serve: commits wait for the batch's submit
  int dead;
};

static void sqe_cmd(struct io_uring_sqe *sqe, int fd, uint32_t op, struct ring_ent *e, uint64_t commit_id) {
  void *volatile raw = sqe;   // SQE128: 128 bytes, the command area is the second half
  memset(raw, 0, 128);
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = fd;
  sqe->cmd_op = op;
  io_uring_sqe_set_data(sqe, e);
  struct fuse_uring_cmd_req *cr = (void *)sqe->cmd;
  cr->qid = e->qid;
  cr->commit_id = commit_id;
}

static void uring_free(struct uring *u) {
  if (u->ring.ring_fd > 0) io_uring_queue_exit(&u->ring);
  if (u->efd >= 0) close(u->efd);
  if (u->mem) munmap(u->mem, u->mem_len);
  free(u->ents);
  free(u);
}

struct uring *uring_start(int fuse_fd, unsigned depth, size_t payload_sz, int *e, char *err, size_t errlen) {
  struct uring *u = calloc(1, sizeof *u);
  if (!u) { *e = ENOMEM; snprintf(err, errlen, "io_uring: out of memory"); return NULL; }
  u->fuse_fd = fuse_fd;
  u->efd = -1;
  u->ring.ring_fd = -1;
  long ncpu = sysconf(_SC_NPROCESSORS_CONF);   // the kernel wants a queue for every possible CPU
  u->nq = ncpu > 0 ? (unsigned)ncpu : 1;
  u->depth = depth;
  unsigned n = u->nq * depth;
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  size_t hsz = (sizeof(struct fuse_uring_req_header) + page - 1) / page * page;
  payload_sz = (payload_sz + page - 1) / page * page;
  u->mem_len = (size_t)n * (hsz + payload_sz);
  u->ents = calloc(n, sizeof *u->ents);
  u->mem = mmap(NULL, u->mem_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (!u->ents || u->mem == MAP_FAILED) {
    u->mem = NULL;
    *e = ENOMEM; snprintf(err, errlen, "io_uring: out of memory");
    uring_free(u);
    return NULL;
  }
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  p.flags = IORING_SETUP_SQE128 | IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
  p.cq_entries = n * 2;
  int r = io_uring_queue_init_params(n, &u->ring, &p);
  if (r < 0) {
    u->ring.ring_fd = -1;
    *e = -r; snprintf(err, errlen, "io_uring: cannot make a ring: %s", strerror(-r));
    uring_free(u);
    return NULL;
  }
  io_uring_register_ring_fd(&u->ring);   // saves a file lookup per io_uring_enter
  u->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (u->efd < 0 || (r = io_uring_register_eventfd(&u->ring, u->efd)) < 0) {
    *e = u->efd < 0 ? errno : -r; snprintf(err, errlen, "io_uring: eventfd: %s", strerror(*e));
    uring_free(u);
    return NULL;
  }
  char *m = u->mem;
  for (unsigned i = 0; i < n; i++) {
    struct ring_ent *en = &u->ents[i];
    en->u = u;
    en->qid = (uint16_t)(i / depth);
    en->hdr = (void *)m; m += hsz;
    en->payload = m; m += payload_sz;
    en->payload_sz = payload_sz;
    en->iov[0] = (struct iovec){ en->hdr, sizeof *en->hdr };
    en->iov[1] = (struct iovec){ en->payload, payload_sz };
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
    sqe_cmd(sqe, fuse_fd, FUSE_IO_URING_CMD_REGISTER, en, 0);
    sqe->addr = (uint64_t)(uintptr_t)en->iov;
    sqe->len = 2;
  }
  r = io_uring_submit(&u->ring);
  if (r < 0) {
    *e = -r; snprintf(err, errlen, "io_uring: registering the ring entries: %s", strerror(-r));
    uring_free(u);
    return NULL;
  }
  // a refused registration completes at once with its error
  io_uring_get_events(&u->ring);
  struct io_uring_cqe *cqe;
  if (io_uring_peek_cqe(&u->ring, &cqe) == 0 && cqe->res < 0) {
    *e = -cqe->res;
    snprintf(err, errlen, "io_uring: the kernel refused the ring: %s%s", strerror(-cqe->res),
             cqe->res == -EOPNOTSUPP ? " (fuse.enable_uring is off)" : "");
    uring_free(u);
    return NULL;
  }
  return u;
}

int uring_eventfd(struct uring *u) { return u->efd; }

int uring_commit(struct ring_ent *e, uint64_t unique, int err, size_t payload_len) {
  struct uring *u = e->u;
  struct fuse_out_header *oh = (void *)e->hdr->in_out;
  oh->len = (uint32_t)(sizeof *oh + (err ? 0 : payload_len));
  oh->error = err;
  oh->unique = unique;
  e->hdr->ring_ent_in_out.payload_sz = err ? 0 : (uint32_t)payload_len;
  struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
  if (!sqe) { io_uring_submit(&u->ring); sqe = io_uring_get_sqe(&u->ring); }
  if (!sqe) return -EBUSY;   // cannot be: one SQE per entry, and each entry commits once
  sqe_cmd(sqe, u->fuse_fd, FUSE_IO_URING_CMD_COMMIT_AND_FETCH, e, e->hdr->ring_ent_in_out.commit_id);
  if (!u->batch) {
    int r = io_uring_submit(&u->ring);
    if (r < 0) return r;
  }
  return 0;
}

int uring_serve(struct uring *u, void (*serve)(struct ring_ent *, void *), void *arg) {
  uint64_t v;
  while (read(u->efd, &v, sizeof v) > 0) {}
  int served = 0;
  u->batch = 1;
  io_uring_get_events(&u->ring);
  for (int round = 0; round < 64; round++) {   // replies made inline let more requests in
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&u->ring, head, cqe) {
      seen++;
      struct ring_ent *e = io_uring_cqe_get_data(cqe);
      if (cqe->res == 0 && e) { served++; serve(e, arg); }
      else if (cqe->res == -ENOTCONN || cqe->res == -ECONNABORTED || cqe->res == -ECANCELED) u->dead = 1;
    }
    io_uring_cq_advance(&u->ring, seen);
    if (!seen) break;
    io_uring_submit_and_get_events(&u->ring);   // the batch's commits, and what came meanwhile
  }
  u->batch = 0;
  if (io_uring_sq_ready(&u->ring)) io_uring_submit(&u->ring);
  return u->dead ? -ENOTCONN : served;
}

void uring_stop(struct uring *u) {
  if (u) uring_free(u);
}
