// The resident service's socket: a unix SOCK_SEQPACKET listener on the libuv loop. Each
// accepted connection is checked with SO_PEERCRED (only the service's own effective uid may
// talk to it); each packet — NUL-separated text fields plus fds passed with SCM_RIGHTS — goes
// to one JS callback, which decides everything (src/service/). Replies go back the same way.
#include "common.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_FDS 253         // fds in one packet (SCM_MAX_FD); more come in "more" packets
#define MAX_PACKET 65536

struct svc_conn {
  uv_poll_t poll;
  int fd;
  int id;
  int refused;        // another user: told so; what it sends is dropped until it hangs up
  struct ucred peer;
};

static napi_env svc_env;
static napi_ref svc_cb;
static uv_poll_t *listener;
static int listen_fd = -1;
static struct svc_conn **conns;
static int nconns;
static int next_id = 1;

static struct svc_conn *conn_by_id(int id) {
  for (int i = 0; i < nconns; i++) if (conns[i] && conns[i]->id == id) return conns[i];
  return NULL;
}

static void conn_closed(uv_handle_t *h) { free(h->data); }

static void conn_drop(struct svc_conn *c) {
  for (int i = 0; i < nconns; i++) if (conns[i] == c) conns[i] = NULL;
  uv_poll_stop(&c->poll);
  close(c->fd);
  c->poll.data = c;
  uv_close((uv_handle_t *)&c->poll, conn_closed);
}

// cb(id, fields | null (hung up), fds, pid, uid, gid)
static void deliver(struct svc_conn *c, const char *buf, ssize_t len, const int *fds, int nfds) {
  napi_handle_scope hs;
  napi_open_handle_scope(svc_env, &hs);
  napi_value cb, global, argv[6], res;
  napi_get_reference_value(svc_env, svc_cb, &cb);
  napi_get_global(svc_env, &global);
  argv[0] = num(svc_env, c->id);
  if (len < 0) napi_get_null(svc_env, &argv[1]);
  else {
    napi_create_array(svc_env, &argv[1]);
    uint32_t k = 0;
    for (ssize_t at = 0; at <= len;) {   // n NULs: n + 1 fields (the last may be empty)
      size_t n = strnlen(buf + at, (size_t)(len - at));
      napi_value s;
      napi_create_string_utf8(svc_env, buf + at, n, &s);
      napi_set_element(svc_env, argv[1], k++, s);
      at += (ssize_t)n + 1;
    }
  }
  napi_create_array(svc_env, &argv[2]);
  for (int i = 0; i < nfds; i++) napi_set_element(svc_env, argv[2], (uint32_t)i, num(svc_env, fds[i]));
  argv[3] = num(svc_env, c->peer.pid);
  argv[4] = num(svc_env, c->peer.uid);
  argv[5] = num(svc_env, c->peer.gid);
  napi_value resource;
  napi_create_object(svc_env, &resource);
  napi_async_context ctx;
  napi_value name;
  napi_create_string_utf8(svc_env, "layerfs:service", NAPI_AUTO_LENGTH, &name);
  napi_async_init(svc_env, resource, name, &ctx);
  if (napi_make_callback(svc_env, ctx, global, cb, 6, argv, &res) != napi_ok) {
    napi_value err;
    bool pending = false;
    napi_is_exception_pending(svc_env, &pending);
    if (pending) napi_get_and_clear_last_exception(svc_env, &err);
  }
  napi_async_destroy(svc_env, ctx);
  napi_close_handle_scope(svc_env, hs);
}

static void on_conn(uv_poll_t *h, int status, int events) {
  struct svc_conn *c = h->data;
  char *buf = malloc(MAX_PACKET);
  char cbuf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
  struct iovec iov = { buf, MAX_PACKET - 1 };
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
  ssize_t n = buf ? recvmsg(c->fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT) : -1;
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) { free(buf); return; }
  int fds[MAX_FDS], nfds = 0;
  for (struct cmsghdr *cm = n > 0 ? CMSG_FIRSTHDR(&msg) : NULL; cm; cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
    int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    for (int i = 0; i < k && nfds < MAX_FDS; i++) memcpy(&fds[nfds++], CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
  }
  int id = c->id;
  if (c->refused) {   // closing with its packet unread would reset the connection before it reads ours
    for (int i = 0; i < nfds; i++) close(fds[i]);
    if (n <= 0 || status < 0) conn_drop(c);
    free(buf);
    return;
  }
  if (n <= 0 || status < 0) {   // hung up (or an error): JS forgets whatever the helper had asked
    conn_drop(c);
    struct svc_conn gone = { .id = id };
    deliver(&gone, NULL, -1, NULL, 0);
  } else if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {   // too large: refused, fds closed
    for (int i = 0; i < nfds; i++) close(fds[i]);
    conn_drop(c);
    struct svc_conn gone = { .id = id };
    deliver(&gone, NULL, -1, NULL, 0);
  } else {
    buf[n] = 0;
    deliver(c, buf, n, fds, nfds);
  }
  free(buf);
}

static void on_accept(uv_poll_t *h, int status, int events) {
  for (;;) {
    int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;
    struct ucred cr;
    socklen_t len = sizeof cr;
    int refused = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0 || cr.uid != geteuid();
    if (refused) {   // another user (the socket's modes aside): one line back, then nothing more
      static const char msg[] = "error\0this layerfs service belongs to another user";
      send(fd, msg, sizeof msg - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    struct svc_conn *c = calloc(1, sizeof *c);
    if (!c) { close(fd); continue; }
    c->fd = fd;
    c->id = next_id++;
    c->peer = cr;
    c->refused = refused;
    int slot = -1;
    for (int i = 0; i < nconns; i++) if (!conns[i]) { slot = i; break; }
    if (slot < 0) {
      struct svc_conn **grown = realloc(conns, sizeof *conns * (size_t)(nconns + 16));
      if (!grown) { close(fd); free(c); continue; }
      conns = grown;
      for (int i = nconns; i < nconns + 16; i++) conns[i] = NULL;
      slot = nconns;
      nconns += 16;
    }
    conns[slot] = c;
    uv_loop_t *loop;
    napi_get_uv_event_loop(svc_env, &loop);
    c->poll.data = c;
    uv_poll_init(loop, &c->poll, fd);
    uv_poll_start(&c->poll, UV_READABLE | UV_DISCONNECT, on_conn);
  }
}

// serviceListen(path, cb) -> 0 or -errno: binds path (which must not exist) and serves it.
static napi_value js_listen(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  if (arg_str(env, argv[0], sa.sun_path, sizeof sa.sun_path) < 0) return num(env, -ENAMETOOLONG);
  if (listen_fd >= 0) return num(env, -EBUSY);
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return num(env, -errno);
  mode_t old = umask(077);   // the socket file: the owner only (SO_PEERCRED is checked as well)
  int r = bind(fd, (struct sockaddr *)&sa, sizeof sa);
  umask(old);
  if (r < 0 || listen(fd, 128) < 0) { int e = errno; close(fd); return num(env, -e); }
  svc_env = env;
  NAPI_CALL(env, napi_create_reference(env, argv[1], 1, &svc_cb));
  listen_fd = fd;
  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  listener = malloc(sizeof *listener);
  uv_poll_init(loop, listener, fd);
  uv_poll_start(listener, UV_READABLE, on_accept);
  return num(env, 0);
}

static void listener_closed(uv_handle_t *h) { free(h); }

// serviceStop(): no new connections (the open ones stay until closed).
static napi_value js_stop(napi_env env, napi_callback_info info) {
  if (listen_fd < 0) return NULL;
  uv_poll_stop(listener);
  uv_close((uv_handle_t *)listener, listener_closed);
  close(listen_fd);
  listen_fd = -1;
  return NULL;
}

// serviceSend(id, fields[]) -> 0 or -errno: one packet of NUL-separated fields.
static napi_value js_send(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct svc_conn *c = conn_by_id((int)arg_i64(env, argv[0]));
  if (!c) return num(env, -ENOTCONN);
  uint32_t n = 0;
  napi_get_array_length(env, argv[1], &n);
  char *buf = malloc(MAX_PACKET);
  size_t at = 0;
  for (uint32_t i = 0; i < n && buf; i++) {
    napi_value e;
    napi_get_element(env, argv[1], i, &e);
    size_t len = 0;
    if (at >= MAX_PACKET - 1) break;
    napi_get_value_string_utf8(env, e, buf + at, MAX_PACKET - at, &len);
    at += len + (i + 1 < n ? 1 : 0);
  }
  ssize_t r = buf ? send(c->fd, buf, at, MSG_NOSIGNAL | MSG_DONTWAIT) : -1;
  int e = errno;
  free(buf);
  return num(env, r < 0 ? -e : 0);
}

// serviceClose(id): closes one connection (the helper sees the end).
static napi_value js_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct svc_conn *c = conn_by_id((int)arg_i64(env, argv[0]));
  if (c) conn_drop(c);
  return NULL;
}

napi_value service_init_exports(napi_env env, napi_value exports) {
  export_fn(env, exports, "serviceListen", js_listen);
  export_fn(env, exports, "serviceStop", js_stop);
  export_fn(env, exports, "serviceSend", js_send);
  export_fn(env, exports, "serviceClose", js_close);
  return exports;
}
