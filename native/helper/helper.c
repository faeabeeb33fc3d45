// layerfs-helper: the program behind the `layerfs` and `layerfs-overlay` commands. A background
// overlay mount never starts Node here: the helper reaches the user's resident service over its
// unix socket (starting it on first use), opens the dirs the service names — in the caller's
// own namespaces and with the caller's permissions — mounts /dev/fuse itself and hands every fd
// over (SCM_RIGHTS). It exits 0 once the mount answers, or prints one line and exits 1. Every
// other command (-f, -d, --passthrough, thin, umount, ...) runs the Node CLI as before.
// The conversation (one SOCK_SEQPACKET packet each, NUL-separated fields):
//   helper: mount PROG SOURCE MNT [-o OPTS]... [-e K=V]...   service: open MODE PATH ... | error MSG
//   helper: opened ERRNO REALPATH ... + fds                   service: mount KOPTS MNT | error MSG
//   helper: fuse BY_FUSERMOUNT + /dev/fuse fd                 service: ok | error MSG
#define _GNU_SOURCE
#include "../src/fusemount.h"
#include <errno.h>
#include <stdarg.h>
#include <sys/mount.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_FIELDS 4096
#define MAX_PACKET 65536
#define MAX_FDS 250          // fds in one packet (the kernel takes at most 253)
#define MAX_DIRS 1024
#define START_TIMEOUT_MS 30000
#define REPLY_TIMEOUT_S 60

static const char *prog = "layerfs";
static char root[PATH_MAX];           // the checkout: dist/ and native/ live here
static char sock_path[108], lock_path[PATH_MAX], log_path[PATH_MAX];

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
  char msg[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "%s: %s\n", prog, msg);
  exit(1);
}

// ---- running the Node CLI for everything the service does not do ----
static void find_root(void) {
  const char *r = getenv("LAYERFS_ROOT");
  if (r && *r) { snprintf(root, sizeof root, "%s", r); return; }
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n < 0) die("cannot find its own path: %s", strerror(errno));
  exe[n] = 0;
  for (int i = 0; i < 4; i++) {   // ROOT/native/build/Release/layerfs-helper
    char *s = strrchr(exe, '/');
    if (!s) break;
    *s = 0;
  }
  snprintf(root, sizeof root, "%s", exe[0] ? exe : "/");
  char js[PATH_MAX];
  snprintf(js, sizeof js, "%s/dist/src/cli/layerfs.js", root);
  // a copy of the program elsewhere (not a link to the build): the checkout it was built in
  if (access(js, R_OK) != 0) snprintf(root, sizeof root, "%s", LAYERFS_BUILD_ROOT);
}

static const char *node_binary(void) {
  const char *n = getenv("LAYERFS_NODE");
  if (n && *n) return n;
  if (access(LAYERFS_NODE, X_OK) == 0) return LAYERFS_NODE;
  return "node";
}

static void exec_node(const char *script, int argc, char **argv) __attribute__((noreturn));
static void exec_node(const char *script, int argc, char **argv) {
  char js[PATH_MAX];
  snprintf(js, sizeof js, "%s/dist/src/cli/%s.js", root, script);
  char **av = calloc((size_t)argc + 3, sizeof(char *));
  if (!av) die("out of memory");
  av[0] = (char *)node_binary();
  av[1] = js;
  for (int i = 1; i < argc; i++) av[i + 1] = argv[i];
  setenv("LAYERFS_SERVICE", "off", 1);   // the Node CLI serves this itself: no way back here
  execvp(av[0], av);
  die("cannot run %s: %s", av[0], strerror(errno));
}

// ---- the service's socket: one per user, user namespace and mount namespace ----
static int private_dir(const char *d) {
  if (mkdir(d, 0700) < 0 && errno != EEXIST) return 0;
  struct stat st;
  // a directory of ours that nobody else may enter (a symlink or another owner's dir is skipped)
  return lstat(d, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == geteuid() && !(st.st_mode & 077);
}

static void pick_socket(void) {
  char dirs[4][PATH_MAX];
  int n = 0;
  const char *e = getenv("LAYERFS_RUNTIME_DIR");
  if (e && *e) snprintf(dirs[n++], PATH_MAX, "%s", e);
  else {
    e = getenv("XDG_RUNTIME_DIR");
    if (e && *e) snprintf(dirs[n++], PATH_MAX, "%s/layerfs", e);
    if (geteuid() == 0) snprintf(dirs[n++], PATH_MAX, "/run/layerfs");
    snprintf(dirs[n++], PATH_MAX, "/tmp/layerfs-%u", (unsigned)geteuid());
  }
  struct stat mnt_ns, user_ns, exe;
  if (stat("/proc/self/ns/mnt", &mnt_ns) < 0 || stat("/proc/self/ns/user", &user_ns) < 0)
    die("cannot read /proc/self/ns: %s", strerror(errno));
  // the build too: another checkout or a rebuild gets a service of its own (the old one keeps
  // its mounts until they end), so no command ever talks to an older build's service
  if (stat("/proc/self/exe", &exe) < 0) die("cannot stat its own program: %s", strerror(errno));
  unsigned long build = (unsigned long)exe.st_ino * 2654435761u ^ (unsigned long)exe.st_dev ^
                        (unsigned long)exe.st_mtim.tv_sec * 40503u ^ (unsigned long)exe.st_mtim.tv_nsec;
  for (int i = 0; i < n; i++) {
    if (!private_dir(dirs[i])) continue;
    char name[96];
    snprintf(name, sizeof name, "%lu-%lu-%08lx", (unsigned long)mnt_ns.st_ino, (unsigned long)user_ns.st_ino, build & 0xffffffffUL);
    int k = snprintf(sock_path, sizeof sock_path, "%s/%s.sock", dirs[i], name);
    if (k >= (int)sizeof sock_path) continue;
    snprintf(lock_path, sizeof lock_path, "%s/%s.lock", dirs[i], name);
    snprintf(log_path, sizeof log_path, "%s/%s.log", dirs[i], name);
    return;
  }
  die("no private directory for the service's socket (tried %s%s%s)", dirs[0], n > 1 ? ", " : "", n > 1 ? dirs[n - 1] : "");
}

// A connected socket to a live service of our own uid, or -1.
static int try_connect(void) {
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket: %s", strerror(errno));
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", sock_path);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { close(fd); return -1; }
  struct ucred cr;
  socklen_t len = sizeof cr;
  // whoever listens must be us: the fds we hand over are the caller's
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0 || cr.uid != geteuid())
    die("%s is served by uid %u, not by this user: refusing to use it", sock_path, (unsigned)cr.uid);
  struct timeval tv = { REPLY_TIMEOUT_S, 0 };
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

// Starts the service (detached: own session, its output in the log) and waits for "ok".
static void start_service(void) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) die("pipe: %s", strerror(errno));
  char js[PATH_MAX];
  snprintf(js, sizeof js, "%s/dist/src/cli/layerfs.js", root);
  pid_t pid = fork();
  if (pid < 0) die("fork: %s", strerror(errno));
  if (pid == 0) {
    if (fork() != 0) _exit(0);   // the service is nobody's child: the caller never waits for it
    setsid();
    if (chdir("/") < 0) _exit(127);   // never the caller's cwd: it would keep that dir's mount busy
    int nul = open("/dev/null", O_RDWR);
    struct stat st;
    if (stat(log_path, &st) == 0 && st.st_size > (1 << 20)) truncate(log_path, 0);
    int log = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
    dup2(nul, 0);
    dup2(log >= 0 ? log : nul, 1);
    dup2(log >= 0 ? log : nul, 2);
    dup2(p[1], 3);
    syscall(436 /* close_range */, 4, ~0U, 0);
    signal(SIGPIPE, SIG_DFL);
    // --expose-gc: the service collects when its last mount is gone (server.ts armIdle)
    execlp(node_binary(), node_binary(), "--expose-gc", js, "service", "--socket", sock_path, "--ready-fd", "3", (char *)NULL);
    dprintf(3, "error cannot run %s: %s\n", node_binary(), strerror(errno));
    _exit(127);
  }
  close(p[1]);
  waitpid(pid, NULL, 0);
  char buf[1024];
  size_t got = 0;
  struct pollfd pfd = { p[0], POLLIN, 0 };
  while (got < sizeof buf - 1) {
    if (poll(&pfd, 1, START_TIMEOUT_MS) <= 0) die("the service did not start within %d s (log: %s)", START_TIMEOUT_MS / 1000, log_path);
    ssize_t n = read(p[0], buf + got, sizeof buf - 1 - got);
    if (n <= 0) break;
    got += (size_t)n;
    if (memchr(buf, '\n', got)) break;
  }
  buf[got] = 0;
  close(p[0]);
  char *nl = strchr(buf, '\n');
  if (nl) *nl = 0;
  if (strcmp(buf, "ok") != 0)
    die("the service did not start: %s (log: %s)", buf[0] ? (strncmp(buf, "error ", 6) ? buf : buf + 6) : "it exited", log_path);
}

// A connection to the service, started first when none answers. Helpers racing to start it
// take the lock file in turn; the first starts it, the others find it answering.
static int service(void) {
  pick_socket();
  int fd = try_connect();
  if (fd >= 0) return fd;
  int lk = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lk < 0) die("cannot open %s: %s", lock_path, strerror(errno));
  if (flock(lk, LOCK_EX) < 0) die("cannot lock %s: %s", lock_path, strerror(errno));
  fd = try_connect();
  if (fd < 0) {
    unlink(sock_path);   // a dead service's socket: nobody listens on it
    start_service();
    fd = try_connect();
  }
  close(lk);
  if (fd < 0) die("cannot reach the service at %s: %s", sock_path, strerror(errno));
  return fd;
}

// ---- packets ----
struct packet { char buf[MAX_PACKET]; char *f[MAX_FIELDS]; int n; };

static void send_fields(int s, char **f, int n, const int *fds, int nfds) {
  static char buf[MAX_PACKET];
  static char cbuf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
  size_t at = 0;
  for (int i = 0; i < n; i++) {
    size_t len = strlen(f[i]);
    if (at + len + 1 > sizeof buf) die("arguments too long");
    memcpy(buf + at, f[i], len + 1);
    at += len + 1;
  }
  struct iovec iov = { buf, at ? at - 1 : 0 };
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
  if (nfds > 0) {
    msg.msg_control = cbuf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
    memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
  }
  if (iov.iov_len == 0) { static char empty = 0; iov.iov_base = &empty; iov.iov_len = 1; }
  if (sendmsg(s, &msg, MSG_NOSIGNAL) < 0) die("the service went away (%s; log: %s)", strerror(errno), log_path);
}

// The next packet; dies on "error MSG" (printing MSG) or when the service went away.
static void recv_fields(int s, struct packet *p, void (*on_fail)(void)) {
  ssize_t n;
  do n = recv(s, p->buf, sizeof p->buf - 1, 0); while (n < 0 && errno == EINTR);
  if (n <= 0) {
    if (on_fail) on_fail();
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) die("the service did not answer within %d s (log: %s)", REPLY_TIMEOUT_S, log_path);
    die("the service ended the conversation (log: %s)", log_path);
  }
  p->buf[n] = 0;
  p->n = 0;
  for (ssize_t at = 0; at <= n && p->n < MAX_FIELDS; ) {
    p->f[p->n++] = p->buf + at;
    at += (ssize_t)strlen(p->buf + at) + 1;
  }
  if (!strcmp(p->f[0], "error")) {
    if (on_fail) on_fail();
    die("%s", p->n > 1 ? p->f[1] : "failed");
  }
}

// ---- a mount through the service ----
static char mounted_at[PATH_MAX];
static int mounted_by_fusermount;
static void undo_mount(void) {
  if (mounted_at[0]) fm_unmount(mounted_at, mounted_by_fusermount);
}

static int service_mount(const char *source, const char *mnt, char **opts, int nopts) {
  extern char **environ;
  char *f[MAX_FIELDS];
  int n = 0;
  f[n++] = "mount";
  f[n++] = (char *)prog;
  f[n++] = (char *)source;
  f[n++] = (char *)mnt;
  for (int i = 0; i < nopts && n < MAX_FIELDS - 2; i++) { f[n++] = "-o"; f[n++] = opts[i]; }
  for (char **e = environ; *e && n < MAX_FIELDS - 2; e++)   // LAYERFS_* defaults of this caller
    if (!strncmp(*e, "LAYERFS_", 8)) { f[n++] = "-e"; f[n++] = *e; }
  int s = service();
  send_fields(s, f, n, NULL, 0);

  static struct packet p;
  recv_fields(s, &p, NULL);
  if (strcmp(p.f[0], "open")) die("unexpected answer from the service: %s", p.f[0]);
  // open what the service names, as this caller: "r" read (a layer), "p" path only (mountpoint)
  static char reals[MAX_DIRS][PATH_MAX];
  static char errs[MAX_DIRS][16];
  static int fds[MAX_DIRS];
  static char *out[2 * MAX_DIRS + 2];
  int nfds = 0, k = 0, m = 0;
  out[m++] = "opened";
  int nwarn = p.n > 1 ? atoi(p.f[1]) : 0;
  for (int i = 2; i < 2 + nwarn && i < p.n; i++) fprintf(stderr, "layerfs: warning: %s\n", p.f[i]);
  for (int i = 2 + nwarn; i + 1 < p.n && k < MAX_DIRS; i += 2, k++) {
    int flags = (!strcmp(p.f[i], "p") ? O_PATH : O_RDONLY) | O_DIRECTORY | O_CLOEXEC;
    int fd = open(p.f[i + 1], flags);
    reals[k][0] = 0;
    if (fd < 0) snprintf(errs[k], sizeof errs[k], "%d", errno);   // a file: ENOTDIR (O_DIRECTORY)
    else {
      snprintf(errs[k], sizeof errs[k], "0");
      char link[64];
      snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
      ssize_t r = readlink(link, reals[k], PATH_MAX - 1);
      reals[k][r > 0 ? r : 0] = 0;
      fds[nfds++] = fd;
    }
    out[m++] = errs[k];
    out[m++] = reals[k];
  }
  // the fields and the first fds in one packet, the rest of the fds in "more" packets
  send_fields(s, out, m, fds, nfds < MAX_FDS ? nfds : MAX_FDS);
  char *more[1] = { "more" };
  for (int at = MAX_FDS; at < nfds; at += MAX_FDS)
    send_fields(s, more, 1, fds + at, nfds - at < MAX_FDS ? nfds - at : MAX_FDS);
  for (int i = 0; i < nfds; i++) close(fds[i]);

  recv_fields(s, &p, NULL);
  if (strcmp(p.f[0], "mount") || p.n < 3) die("unexpected answer from the service: %s", p.f[0]);
  struct conn_opts o = { .mount_flags = MS_NOSUID | MS_NODEV };   // as libfuse, unless suid/dev
  char err[1024] = "";
  if (fm_parse_opts(&o, p.f[1], err, sizeof err) < 0) die("%s", err);
  int by_fm = 0;
  int fuse = fm_mount(&o, p.f[2], &by_fm, err, sizeof err);
  if (fuse < 0) die("cannot mount %s: %s", p.f[2], err);
  snprintf(mounted_at, sizeof mounted_at, "%s", p.f[2]);
  mounted_by_fusermount = by_fm;
  char *fu[2] = { "fuse", by_fm ? "1" : "0" };
  send_fields(s, fu, 2, &fuse, 1);
  close(fuse);
  recv_fields(s, &p, undo_mount);   // an error after the mount: the mount goes again
  if (strcmp(p.f[0], "ok")) { undo_mount(); die("unexpected answer from the service: %s", p.f[0]); }
  return 0;
}

// `layerfs ps [--json]`: the service's table (nothing to show when none runs).
static int service_ps(int json) {
  pick_socket();
  int s = try_connect();
  if (s < 0) {
    printf(json ? "[]\n" : "no layerfs service runs for this user here\n");
    return 0;
  }
  char *f[2] = { "ps", json ? "json" : "text" };
  send_fields(s, f, 2, NULL, 0);
  static struct packet p;
  recv_fields(s, &p, NULL);
  fputs(p.n > 1 ? p.f[1] : "", stdout);
  return 0;
}

// ---- command lines ----
static const char *base_name(const char *p) {
  const char *s = strrchr(p, '/');
  return s ? s + 1 : p;
}

static int service_off(void) {
  const char *v = getenv("LAYERFS_SERVICE");
  return v && (!strcmp(v, "off") || !strcmp(v, "0") || !strcmp(v, "no"));
}

// layerfs-overlay [-f] [-d] -o OPTS [SOURCE] MNT, or SOURCE MNT -o OPTS (mount.fuse3's order);
// layerfs-aufs takes the same forms (prog says which)
static int overlay_main(int argc, char **argv) {
  static char *opts[MAX_FIELDS], *pos[8];
  int nopts = 0, npos = 0, fg = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-f") || !strcmp(a, "-d") || !strcmp(a, "--debug")) fg = 1;
    else if (!strcmp(a, "-o")) {
      if (i + 1 >= argc) die("-o needs a value");
      if (nopts < MAX_FIELDS) opts[nopts++] = argv[++i];
    } else if (!strncmp(a, "-o", 2)) { if (nopts < MAX_FIELDS) opts[nopts++] = (char *)a + 2; }
    else if ((!strcmp(a, "-V") || !strcmp(a, "--version")) && !strcmp(prog, "layerfs-overlay")) {   // engines ask before every mount: no Node for it
      printf("layerfs-overlay: fuse-overlayfs-compatible layerfs %s\n", LAYERFS_VERSION);
      return 0;
    } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) fg = 1;
    else if (a[0] == '-' && a[1]) fg = 1;   // the Node CLI warns about it and carries on
    else if (npos < 8) pos[npos++] = (char *)a;
    else npos++;
  }
  if (fg || service_off() || npos < 1 || npos > 2) exec_node(prog, argc, argv);
  return service_mount(npos == 2 ? pos[0] : !strcmp(prog, "layerfs-aufs") ? "none" : prog, pos[npos - 1], opts, nopts);
}

// layerfs mount [-o OPTS]... MNT goes to the service; layerfs ps asks it; the rest is Node's
static int layerfs_main(int argc, char **argv) {
  if (argc >= 2 && !strcmp(argv[1], "ps")) {   // starts nothing: served even with LAYERFS_SERVICE=off
    int json = argc >= 3 && !strcmp(argv[2], "--json");
    if (argc > 3 || (argc == 3 && !json)) exec_node("layerfs", argc, argv);
    return service_ps(json);
  }
  if (argc < 2 || strcmp(argv[1], "mount") || service_off()) exec_node("layerfs", argc, argv);
  static char *opts[MAX_FIELDS], *pos[8];
  int nopts = 0, npos = 0;
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-o") || !strcmp(a, "--options")) {
      if (i + 1 >= argc) exec_node("layerfs", argc, argv);
      if (nopts < MAX_FIELDS) opts[nopts++] = argv[++i];
    } else if (!strncmp(a, "--options=", 10)) { if (nopts < MAX_FIELDS) opts[nopts++] = (char *)a + 10; }
    else if (!strncmp(a, "-o", 2) && a[2]) { if (nopts < MAX_FIELDS) opts[nopts++] = (char *)a + 2; }
    else if ((!strcmp(a, "-t") || !strcmp(a, "--type")) && i + 1 < argc && (!strcmp(argv[i + 1], "aufs") || !strcmp(argv[i + 1], "overlay"))) {
      if (!strcmp(argv[++i], "aufs")) prog = "layerfs-aufs";   // served by the service too, as aufs
    } else if (a[0] == '-' && a[1]) exec_node("layerfs", argc, argv);   // -f, -d, --passthrough, -h ...
    else if (npos < 8) pos[npos++] = (char *)a;
    else npos++;
  }
  if (npos != 1) exec_node("layerfs", argc, argv);   // its usage line
  return service_mount(!strcmp(prog, "layerfs-aufs") ? "none" : "layerfs", pos[0], opts, nopts);
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  find_root();
  const char *me = base_name(argv[0]);
  // Docker's fuse-overlayfs driver runs the program of that name from dockerd's PATH: a link
  // named fuse-overlayfs to this program makes layerfs that driver's mount program
  if (!strcmp(me, "layerfs-overlay") || !strcmp(me, "fuse-overlayfs")) {
    prog = "layerfs-overlay";
    return overlay_main(argc, argv);
  }
  if (!strcmp(me, "layerfs-aufs")) {   // mount(8)'s form for aufs mode
    prog = "layerfs-aufs";
    return overlay_main(argc, argv);
  }
  if (argc >= 2 && !strcmp(argv[1], "--as-overlay")) {   // the Node CLI hands a layerfs-overlay argv over
    prog = "layerfs-overlay";
    argv[1] = argv[0];
    return overlay_main(argc - 1, argv + 1);
  }
  return layerfs_main(argc, argv);
}
