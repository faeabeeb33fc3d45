// See fusemount.h.
#define _GNU_SOURCE
#include "fusemount.h"
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void seterr(char *err, size_t len, const char *fmt, const char *a, int e) {
  snprintf(err, len, fmt, a, e ? strerror(e) : "");
}

// ---- options and mounting ----
int fm_parse_opts(struct conn_opts *o, const char *opts, char *err, size_t errlen) {
  static const struct { const char *name; unsigned long flag; int set; } flags[] = {
    {"nosuid", MS_NOSUID, 1}, {"suid", MS_NOSUID, 0}, {"nodev", MS_NODEV, 1}, {"dev", MS_NODEV, 0},
    {"noexec", MS_NOEXEC, 1}, {"exec", MS_NOEXEC, 0}, {"noatime", MS_NOATIME, 1}, {"atime", MS_NOATIME, 0},
    {"sync", MS_SYNCHRONOUS, 1}, {"async", MS_SYNCHRONOUS, 0}, {"dirsync", MS_DIRSYNC, 1},
  };
  char *copy = strdup(opts ? opts : ""), *save = NULL;
  for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    size_t i, n = sizeof flags / sizeof flags[0];
    for (i = 0; i < n; i++) if (!strcmp(t, flags[i].name)) break;
    if (i < n) {
      if (flags[i].set) o->mount_flags |= flags[i].flag; else o->mount_flags &= ~flags[i].flag;
    } else if (!strncmp(t, "fsname=", 7)) { free(o->fsname); o->fsname = strdup(t + 7); }
    else if (!strncmp(t, "subtype=", 8)) { free(o->subtype); o->subtype = strdup(t + 8); }
    else if (!strcmp(t, "allow_other")) o->allow_other = 1;
    else if (!strcmp(t, "default_permissions")) o->default_permissions = 1;
    else if (!strcmp(t, "ro")) o->ro = 1;
    else if (!strcmp(t, "rw")) o->ro = 0;
    else {
      seterr(err, errlen, "fuse: unknown option `%s'%s", t, 0);
      free(copy);
      return -1;
    }
  }
  free(copy);
  return 0;
}

static void opt_add(char *buf, size_t len, const char *a, const char *b) {
  size_t n = strlen(buf);
  snprintf(buf + n, len - n, "%s%s%s", n ? "," : "", a, b ? b : "");
}

// Runs fusermount3 with argv, stdout to /dev/null, stderr to errfd (or /dev/null), extra env;
// its pid or -1.
static pid_t spawn_fusermount(char *const argv[], const char *env_extra, int errfd) {
  extern char **environ;
  size_t n = 0;
  while (environ[n]) n++;
  char **envp = calloc(n + 2, sizeof(char *));
  if (!envp) return -1;
  memcpy(envp, environ, n * sizeof(char *));
  if (env_extra) envp[n++] = (char *)env_extra;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  if (errfd >= 0) posix_spawn_file_actions_adddup2(&fa, errfd, 2);
  else posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid;
  int e = posix_spawn(&pid, "/usr/bin/fusermount3", &fa, NULL, argv, envp);
  if (e == ENOENT) e = posix_spawnp(&pid, "fusermount3", &fa, NULL, argv, envp);
  posix_spawn_file_actions_destroy(&fa);
  free(envp);
  return e ? -1 : pid;
}

// fusermount3 mounts for a user and hands the /dev/fuse fd over a socket (SCM_RIGHTS).
static int mount_fusermount(const struct conn_opts *o, const char *mnt, char *err, size_t errlen) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) { seterr(err, errlen, "socketpair: %s%s", strerror(errno), 0); return -1; }
  fcntl(sv[1], F_SETFD, FD_CLOEXEC);   // sv[0] is fusermount3's end
  char opts[8192] = "";
  opt_add(opts, sizeof opts, o->ro ? "ro" : "rw", NULL);
  if (o->allow_other) opt_add(opts, sizeof opts, "allow_other", NULL);
  if (o->default_permissions) opt_add(opts, sizeof opts, "default_permissions", NULL);
  if (o->mount_flags & MS_NOEXEC) opt_add(opts, sizeof opts, "noexec", NULL);
  if (o->mount_flags & MS_NOATIME) opt_add(opts, sizeof opts, "noatime", NULL);
  if (o->mount_flags & MS_SYNCHRONOUS) opt_add(opts, sizeof opts, "sync", NULL);
  if (o->mount_flags & MS_DIRSYNC) opt_add(opts, sizeof opts, "dirsync", NULL);
  if (o->fsname) opt_add(opts, sizeof opts, "fsname=", o->fsname);
  if (o->subtype) opt_add(opts, sizeof opts, "subtype=", o->subtype);
  char env[64];
  snprintf(env, sizeof env, "_FUSE_COMMFD=%d", sv[0]);
  char *argv[] = { "fusermount3", "-o", opts, "--", (char *)mnt, NULL };
  int ep[2] = { -1, -1 };
  if (pipe2(ep, O_CLOEXEC) < 0) ep[0] = ep[1] = -1;
  pid_t pid = spawn_fusermount(argv, env, ep[1]);
  close(sv[0]);
  if (ep[1] >= 0) close(ep[1]);
  if (pid < 0) { close(sv[1]); if (ep[0] >= 0) close(ep[0]); seterr(err, errlen, "cannot run fusermount3%s%s", "", 0); return -1; }
  char byte;
  char cbuf[CMSG_SPACE(sizeof(int))];
  struct iovec iov = { &byte, 1 };
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
  ssize_t n;
  do n = recvmsg(sv[1], &msg, MSG_CMSG_CLOEXEC); while (n < 0 && errno == EINTR);
  close(sv[1]);
  int status = 0;
  waitpid(pid, &status, 0);
  char msgbuf[512] = "";
  ssize_t m = ep[0] >= 0 ? read(ep[0], msgbuf, sizeof msgbuf - 1) : 0;
  if (ep[0] >= 0) close(ep[0]);
  msgbuf[m > 0 ? m : 0] = 0;
  char *nl = strchr(msgbuf, '\n');
  if (nl) *nl = 0;   // its first line
  struct cmsghdr *cm = n > 0 ? CMSG_FIRSTHDR(&msg) : NULL;
  if (!cm || cm->cmsg_type != SCM_RIGHTS) {
    seterr(err, errlen, "%s%s", msgbuf[0] ? msgbuf : "fusermount3 failed", 0);
    return -1;
  }
  int fd;
  memcpy(&fd, CMSG_DATA(cm), sizeof(int));
  return fd;
}

int fm_mount(const struct conn_opts *o, const char *mnt, int *by_fusermount, char *err, size_t errlen) {
  struct stat st;
  *by_fusermount = 0;
  if (stat(mnt, &st) < 0) { seterr(err, errlen, "fuse: bad mount point `%s': %s", mnt, errno); return -1; }
  if (geteuid() != 0) {
    *by_fusermount = 1;
    return mount_fusermount(o, mnt, err, errlen);
  }
  int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (fd < 0) { seterr(err, errlen, "fuse: cannot open /dev/fuse%s%s", ": ", errno); return -1; }
  char data[1024], type[256];
  snprintf(data, sizeof data, "fd=%d,rootmode=%o,user_id=%u,group_id=%u%s%s", fd, st.st_mode & S_IFMT,
           getuid(), getgid(), o->allow_other ? ",allow_other" : "", o->default_permissions ? ",default_permissions" : "");
  snprintf(type, sizeof type, "fuse%s%s", o->subtype ? "." : "", o->subtype ? o->subtype : "");
  const char *source = o->fsname ? o->fsname : (o->subtype ? o->subtype : "layerfs");
  unsigned long flags = o->mount_flags | (o->ro ? MS_RDONLY : 0);
  if (mount(source, mnt, type, flags, data) < 0) {
    int e = errno;
    close(fd);
    seterr(err, errlen, "fuse: mount failed: %s%s", strerror(e), 0);
    return -1;
  }
  return fd;
}

void fm_unmount(const char *mnt, int by_fusermount) {
  if (!by_fusermount) umount2(mnt, MNT_DETACH);
  else {
    char *argv[] = { "fusermount3", "-u", "-q", "-z", "--", (char *)mnt, NULL };
    pid_t pid = spawn_fusermount(argv, NULL, -1);
    if (pid > 0) waitpid(pid, NULL, 0);
  }
}
