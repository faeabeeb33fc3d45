// FUSE over io_uring (protocol 7.42, Linux 6.14+ with fuse.enable_uring=1): the kernel hands
// requests to ring entries the daemon registered, one queue per possible CPU, and takes replies
// with the next fetch in the same submission (COMMIT_AND_FETCH) — one io_uring_enter for a
// batch instead of a read and a write per request. FORGET and INTERRUPT still come on /dev/fuse.
// One io_uring serves every queue of a connection; only the thread that made it (the JS thread)
// submits to it (IORING_SETUP_SINGLE_ISSUER + DEFER_TASKRUN: the kernel's task work runs when
// that thread asks, and an eventfd tells the event loop when there is some).
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include "proto.h"

struct uring;

struct ring_ent {              // one request slot: header and payload buffers the kernel fills
  struct uring *u;
  uint16_t qid;
  struct fuse_uring_req_header *hdr;
  char *payload;
  size_t payload_sz;
  struct iovec iov[2];
};

// Registers queues of depth entries with payload buffers of payload_sz on fuse_fd, after INIT.
// NULL with a message in err (-errno in *e) when the kernel refuses.
struct uring *uring_start(int fuse_fd, unsigned depth, size_t payload_sz, int *e, char *err, size_t errlen);
// The eventfd to poll: readable when the kernel has requests (or task work) for the ring.
int uring_eventfd(struct uring *u);
// Runs the kernel's pending work and hands each request that arrived to serve(ent, arg); the
// replies made meanwhile are submitted together at the end. Returns the number served, or
// -ENOTCONN once the connection is gone.
int uring_serve(struct uring *u, void (*serve)(struct ring_ent *, void *), void *arg);
// Answers the request in e: its out header says err (a negative errno) or payload_len bytes
// of reply in e->payload. Submitted at once unless a uring_serve batch is running.
int uring_commit(struct ring_ent *e, uint64_t unique, int err, size_t payload_len);
void uring_stop(struct uring *u);
