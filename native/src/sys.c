// Syscalls Node lacks, for the engine. Every call returns its result, or -errno: the engine
// meets ENOENT on most lookups, and a thrown exception per miss would cost more than the call.
#include "common.h"
#include <sys/file.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/openat2.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <linux/securebits.h>
#include <malloc.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#define ARGS(N)                                                          \
  size_t argc = N;                                                       \
  napi_value argv[N];                                                    \
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));

#define PATHARG(i, var)                                                  \
  char var[PATH_MAX];                                                    \
  if (arg_str(env, argv[i], var, sizeof var) < 0) return num(env, -ENAMETOOLONG);

static napi_value ret(napi_env env, long r) { return num(env, r < 0 ? -errno : (double)r); }

static napi_value s_openat(napi_env env, napi_callback_info info) {
  ARGS(4);
  PATHARG(1, path);
  return ret(env, openat((int)arg_i64(env, argv[0]), path, (int)arg_i64(env, argv[2]) | O_CLOEXEC,
                         (mode_t)arg_i64(env, argv[3])));
}

// openat2(dirfd, path, flags, mode, resolve): RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS walks.
static napi_value s_openat2(napi_env env, napi_callback_info info) {
  ARGS(5);
  PATHARG(1, path);
  struct open_how how;
  memset(&how, 0, sizeof how);
  how.flags = (uint64_t)arg_i64(env, argv[2]) | O_CLOEXEC;
  how.mode = (uint64_t)arg_i64(env, argv[3]);
  how.resolve = (uint64_t)arg_i64(env, argv[4]);
  return ret(env, syscall(SYS_openat2, (int)arg_i64(env, argv[0]), path, &how, sizeof how));
}

static napi_value s_close(napi_env env, napi_callback_info info) {
  ARGS(1);
  return ret(env, close((int)arg_i64(env, argv[0])));
}

// Stat layout shared with src/sys/stat.ts.
static void stat_to(const struct stat *st, double *a) {
  a[0] = (double)st->st_ino; a[1] = st->st_mode; a[2] = (double)st->st_nlink;
  a[3] = st->st_uid; a[4] = st->st_gid; a[5] = (double)st->st_rdev;
  a[6] = (double)st->st_size; a[7] = (double)st->st_blksize; a[8] = (double)st->st_blocks;
  a[9] = (double)st->st_atim.tv_sec; a[10] = (double)st->st_atim.tv_nsec;
  a[11] = (double)st->st_mtim.tv_sec; a[12] = (double)st->st_mtim.tv_nsec;
  a[13] = (double)st->st_ctim.tv_sec; a[14] = (double)st->st_ctim.tv_nsec;
  a[15] = (double)st->st_dev;
}

static double *out_array(napi_env env, napi_value v, size_t min) {
  napi_typedarray_type t;
  size_t len;
  void *data;
  if (napi_get_typedarray_info(env, v, &t, &len, &data, NULL, NULL) != napi_ok ||
      t != napi_float64_array || len < min)
    return NULL;
  return data;
}

// fstatat(dirfd, path, flags, out: Float64Array(16)) -> 0 | -errno
static napi_value s_fstatat(napi_env env, napi_callback_info info) {
  ARGS(4);
  PATHARG(1, path);
  double *out = out_array(env, argv[3], 16);
  if (!out) return num(env, -EINVAL);
  struct stat st;
  if (fstatat((int)arg_i64(env, argv[0]), path, &st, (int)arg_i64(env, argv[2])) < 0)
    return num(env, -errno);
  stat_to(&st, out);
  return num(env, 0);
}

// fstatvfs(fd, out: Float64Array(11))
static napi_value s_fstatvfs(napi_env env, napi_callback_info info) {
  ARGS(2);
  double *a = out_array(env, argv[1], 11);
  if (!a) return num(env, -EINVAL);
  struct statvfs s;
  if (fstatvfs((int)arg_i64(env, argv[0]), &s) < 0) return num(env, -errno);
  a[0] = (double)s.f_bsize; a[1] = (double)s.f_frsize; a[2] = (double)s.f_blocks;
  a[3] = (double)s.f_bfree; a[4] = (double)s.f_bavail; a[5] = (double)s.f_files;
  a[6] = (double)s.f_ffree; a[7] = (double)s.f_favail; a[8] = (double)s.f_fsid;
  a[9] = (double)s.f_flag; a[10] = (double)s.f_namemax;
  return num(env, 0);
}

static napi_value s_mknodat(napi_env env, napi_callback_info info) {
  ARGS(4);
  PATHARG(1, path);
  return ret(env, mknodat((int)arg_i64(env, argv[0]), path, (mode_t)arg_i64(env, argv[2]),
                          (dev_t)arg_f64(env, argv[3])));
}

static napi_value s_mkdirat(napi_env env, napi_callback_info info) {
  ARGS(3);
  PATHARG(1, path);
  return ret(env, mkdirat((int)arg_i64(env, argv[0]), path, (mode_t)arg_i64(env, argv[2])));
}

static napi_value s_unlinkat(napi_env env, napi_callback_info info) {
  ARGS(3);
  PATHARG(1, path);
  return ret(env, unlinkat((int)arg_i64(env, argv[0]), path, (int)arg_i64(env, argv[2])));
}

static napi_value s_renameat2(napi_env env, napi_callback_info info) {
  ARGS(5);
  PATHARG(1, a);
  PATHARG(3, b);
  return ret(env, syscall(SYS_renameat2, (int)arg_i64(env, argv[0]), a, (int)arg_i64(env, argv[2]),
                          b, (unsigned)arg_i64(env, argv[4])));
}

static napi_value s_linkat(napi_env env, napi_callback_info info) {
  ARGS(5);
  PATHARG(1, a);
  PATHARG(3, b);
  return ret(env, linkat((int)arg_i64(env, argv[0]), a, (int)arg_i64(env, argv[2]), b,
                         (int)arg_i64(env, argv[4])));
}

static napi_value s_symlinkat(napi_env env, napi_callback_info info) {
  ARGS(3);
  PATHARG(0, target);
  PATHARG(2, path);
  return ret(env, symlinkat(target, (int)arg_i64(env, argv[1]), path));
}

// readlinkat(dirfd, path) -> string | -errno
static napi_value s_readlinkat(napi_env env, napi_callback_info info) {
  ARGS(2);
  PATHARG(1, path);
  char buf[PATH_MAX + 1];
  ssize_t n = readlinkat((int)arg_i64(env, argv[0]), path, buf, PATH_MAX);
  if (n < 0) return num(env, -errno);
  napi_value s;
  napi_create_string_utf8(env, buf, (size_t)n, &s);
  return s;
}

static napi_value s_fchownat(napi_env env, napi_callback_info info) {
  ARGS(5);
  PATHARG(1, path);
  return ret(env, fchownat((int)arg_i64(env, argv[0]), path, (uid_t)arg_i64(env, argv[2]),
                           (gid_t)arg_i64(env, argv[3]), (int)arg_i64(env, argv[4])));
}

// fchmodat(dirfd, path, mode, flags): AT_SYMLINK_NOFOLLOW via fchmodat2 (Linux 6.6+).
static napi_value s_fchmodat(napi_env env, napi_callback_info info) {
  ARGS(4);
  PATHARG(1, path);
  int dirfd = (int)arg_i64(env, argv[0]), flags = (int)arg_i64(env, argv[3]);
  mode_t mode = (mode_t)arg_i64(env, argv[2]);
#ifndef SYS_fchmodat2
#define SYS_fchmodat2 452
#endif
  long r = syscall(SYS_fchmodat2, dirfd, path, mode, flags);
  if (r < 0 && errno == ENOSYS) r = fchmodat(dirfd, path, mode, flags);
  return ret(env, r);
}

static napi_value s_fchmod(napi_env env, napi_callback_info info) {
  ARGS(2);
  return ret(env, fchmod((int)arg_i64(env, argv[0]), (mode_t)arg_i64(env, argv[1])));
}

// utimensat(dirfd, path, atimeSec, atimeNsec, mtimeSec, mtimeNsec, flags); nsec may be
// UTIME_NOW or UTIME_OMIT.
static napi_value s_utimensat(napi_env env, napi_callback_info info) {
  ARGS(7);
  PATHARG(1, path);
  struct timespec ts[2];
  ts[0].tv_sec = (time_t)arg_f64(env, argv[2]); ts[0].tv_nsec = (long)arg_i64(env, argv[3]);
  ts[1].tv_sec = (time_t)arg_f64(env, argv[4]); ts[1].tv_nsec = (long)arg_i64(env, argv[5]);
  return ret(env, utimensat((int)arg_i64(env, argv[0]), path, ts, (int)arg_i64(env, argv[6])));
}

static napi_value s_ftruncate(napi_env env, napi_callback_info info) {
  ARGS(2);
  return ret(env, ftruncate((int)arg_i64(env, argv[0]), (off_t)arg_f64(env, argv[1])));
}

static napi_value s_fallocate(napi_env env, napi_callback_info info) {
  ARGS(4);
  return ret(env, fallocate((int)arg_i64(env, argv[0]), (int)arg_i64(env, argv[1]),
                            (off_t)arg_f64(env, argv[2]), (off_t)arg_f64(env, argv[3])));
}

// copyFileRange(fdIn, offIn, fdOut, offOut, len) -> bytes copied | -errno
static napi_value s_copy_file_range(napi_env env, napi_callback_info info) {
  ARGS(5);
  loff_t in = (loff_t)arg_f64(env, argv[1]), out = (loff_t)arg_f64(env, argv[3]);
  return ret(env, copy_file_range((int)arg_i64(env, argv[0]), &in, (int)arg_i64(env, argv[2]), &out,
                                  (size_t)arg_f64(env, argv[4]), 0));
}

static napi_value s_ficlone(napi_env env, napi_callback_info info) {
  ARGS(2);
  return ret(env, ioctl((int)arg_i64(env, argv[0]), FICLONE, (int)arg_i64(env, argv[1])));
}

static napi_value s_lseek(napi_env env, napi_callback_info info) {
  ARGS(3);
  return ret(env, lseek((int)arg_i64(env, argv[0]), (off_t)arg_f64(env, argv[1]), (int)arg_i64(env, argv[2])));
}

static napi_value s_fsync(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd = (int)arg_i64(env, argv[0]);
  return ret(env, arg_i64(env, argv[1]) ? fdatasync(fd) : fsync(fd));
}

// cloneMount(dirfd, attrSet, attrClr) -> fd of a private, detached clone of the mount at dirfd
// (open_tree(OPEN_TREE_CLONE), not recursive) with mount attributes changed (mount_setattr):
// what overlayfs does with its layers. Needs CAP_SYS_ADMIN.
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
struct lfs_mount_attr { uint64_t attr_set, attr_clr, propagation, userns_fd; };
static napi_value s_clone_mount(napi_env env, napi_callback_info info) {
  ARGS(3);
  int fd = (int)syscall(SYS_open_tree, (int)arg_i64(env, argv[0]), "", 0x1 /* OPEN_TREE_CLONE */ | O_CLOEXEC | AT_EMPTY_PATH);
  if (fd < 0) return num(env, -errno);
  struct lfs_mount_attr a = { (uint64_t)arg_i64(env, argv[1]), (uint64_t)arg_i64(env, argv[2]), 0, 0 };
  if (syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH, &a, sizeof a) < 0) { int e = errno; close(fd); return num(env, -e); }
  return num(env, fd);
}

// flock(fd, op): advisory whole-file lock; the kernel drops it when the holder dies.
static napi_value s_flock(napi_env env, napi_callback_info info) {
  ARGS(2);
  return ret(env, flock((int)arg_i64(env, argv[0]), (int)arg_i64(env, argv[1])));
}

// Paths "/proc/self/fd/N/NAME" (NAME one component, not followed) go to getxattrat and
// listxattrat (Linux 6.13) on fd N: no walk through procfs, which costs more than the xattr
// read itself. Older kernels (ENOSYS) take the path.
#ifndef SYS_getxattrat
#define SYS_getxattrat 464
#define SYS_listxattrat 465
#endif
struct xattr_args_at { uint64_t value; uint32_t size, flags; };
static int no_xattrat;

static const char *fd_relative(const char *path, int follow, int *dfd) {
  static const char pre[] = "/proc/self/fd/";
  if (follow || no_xattrat || strncmp(path, pre, sizeof pre - 1)) return NULL;
  char *end;
  long fd = strtol(path + sizeof pre - 1, &end, 10);
  if (end == path + sizeof pre - 1 || *end != '/' || !end[1] || strchr(end + 1, '/')) return NULL;
  *dfd = (int)fd;
  return end + 1;
}

static ssize_t xget(const char *path, int follow, const char *name, void *buf, size_t size) {
  int dfd;
  const char *rel = fd_relative(path, follow, &dfd);
  if (rel) {
    struct xattr_args_at a = { (uint64_t)(uintptr_t)buf, (uint32_t)size, 0 };
    long r = syscall(SYS_getxattrat, dfd, rel, AT_SYMLINK_NOFOLLOW, name, &a, sizeof a);
    if (r >= 0 || errno != ENOSYS) return r;
    no_xattrat = 1;
  }
  return follow ? getxattr(path, name, buf, size) : lgetxattr(path, name, buf, size);
}

static ssize_t xlist(const char *path, int follow, char *buf, size_t size) {
  int dfd;
  const char *rel = fd_relative(path, follow, &dfd);
  if (rel) {
    long r = syscall(SYS_listxattrat, dfd, rel, AT_SYMLINK_NOFOLLOW, buf, size);
    if (r >= 0 || errno != ENOSYS) return r;
    no_xattrat = 1;
  }
  return follow ? listxattr(path, buf, size) : llistxattr(path, buf, size);
}

// Xattrs by path; "follow" picks getxattr over lgetxattr (for /proc/self/fd/N of an O_PATH fd).
// getxattr(path, name, follow) -> Buffer | -errno
static napi_value s_getxattr(napi_env env, napi_callback_info info) {
  ARGS(3);
  PATHARG(0, path);
  char name[XATTR_NAME_MAX + 1];
  if (arg_str(env, argv[1], name, sizeof name) < 0) return num(env, -ERANGE);
  int follow = (int)arg_i64(env, argv[2]);
  for (;;) {
    ssize_t n = xget(path, follow, name, NULL, 0);
    if (n < 0) return num(env, -errno);
    napi_value buf;
    void *data;
    NAPI_CALL(env, napi_create_buffer(env, (size_t)n, &data, &buf));
    if (n == 0) return buf;
    ssize_t m = xget(path, follow, name, data, (size_t)n);
    if (m < 0 && errno == ERANGE) continue;  // grew in between
    if (m < 0) return num(env, -errno);
    if (m == n) return buf;
    napi_value sub;
    void *d2;
    napi_create_buffer_copy(env, (size_t)m, data, &d2, &sub);
    return sub;
  }
}

// listxattr(path, follow) -> Buffer (NUL-separated names) | -errno
static napi_value s_listxattr(napi_env env, napi_callback_info info) {
  ARGS(2);
  PATHARG(0, path);
  int follow = (int)arg_i64(env, argv[1]);
  for (;;) {
    ssize_t n = xlist(path, follow, NULL, 0);
    if (n < 0) return num(env, -errno);
    char *tmp = malloc(n ? (size_t)n : 1);
    ssize_t m = xlist(path, follow, tmp, (size_t)n);
    if (m < 0) { int e = errno; free(tmp); if (e == ERANGE) continue; return num(env, -e); }
    napi_value buf;
    void *d;
    napi_create_buffer_copy(env, (size_t)m, tmp, &d, &buf);
    free(tmp);
    return buf;
  }
}

// setxattr(path, name, value: Buffer, flags, follow)
static napi_value s_setxattr(napi_env env, napi_callback_info info) {
  ARGS(5);
  PATHARG(0, path);
  char name[XATTR_NAME_MAX + 1];
  if (arg_str(env, argv[1], name, sizeof name) < 0) return num(env, -ERANGE);
  void *data = NULL;
  size_t len = 0;
  napi_get_buffer_info(env, argv[2], &data, &len);
  int flags = (int)arg_i64(env, argv[3]);
  int r = arg_i64(env, argv[4]) ? setxattr(path, name, data, len, flags)
                                : lsetxattr(path, name, data, len, flags);
  return ret(env, r);
}

static napi_value s_removexattr(napi_env env, napi_callback_info info) {
  ARGS(3);
  PATHARG(0, path);
  char name[XATTR_NAME_MAX + 1];
  if (arg_str(env, argv[1], name, sizeof name) < 0) return num(env, -ERANGE);
  return ret(env, arg_i64(env, argv[2]) ? removexattr(path, name) : lremovexattr(path, name));
}

// readdir(dirfd) -> { names: string[], inos: Float64Array, types: Uint8Array } | -errno
// Reads the whole directory (opened anew from dirfd, which may be O_PATH).
// The daemon's listings never move a directory's atime (O_NOATIME where the daemon may use it):
// atime follows the mount's policy (src/fuse/atime.ts).
static napi_value s_readdir(napi_env env, napi_callback_info info) {
  ARGS(1);
  int dirfd = (int)arg_i64(env, argv[0]);
  int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOATIME);
  if (fd < 0 && errno == EPERM) fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return num(env, -errno);
  DIR *d = fdopendir(fd);
  if (!d) { int e = errno; close(fd); return num(env, -e); }
  size_t cap = 64, n = 0;
  double *inos = malloc(cap * sizeof(double));
  uint8_t *types = malloc(cap);
  napi_value names;
  napi_create_array(env, &names);
  struct dirent *e;
  errno = 0;
  while ((e = readdir(d))) {
    if (n == cap) {
      cap *= 2;
      inos = realloc(inos, cap * sizeof(double));
      types = realloc(types, cap);
    }
    inos[n] = (double)e->d_ino;
    types[n] = e->d_type;
    napi_value s;
    napi_create_string_utf8(env, e->d_name, NAPI_AUTO_LENGTH, &s);
    napi_set_element(env, names, (uint32_t)n, s);
    n++;
  }
  int err = errno;
  closedir(d);
  if (err) { free(inos); free(types); return num(env, -err); }
  napi_value result, ab1, ab2, ta1, ta2;
  void *p1, *p2;
  napi_create_arraybuffer(env, n * sizeof(double), &p1, &ab1);
  if (n) memcpy(p1, inos, n * sizeof(double));
  napi_create_typedarray(env, napi_float64_array, n, ab1, 0, &ta1);
  napi_create_arraybuffer(env, n, &p2, &ab2);
  if (n) memcpy(p2, types, n);
  napi_create_typedarray(env, napi_uint8_array, n, ab2, 0, &ta2);
  free(inos);
  free(types);
  napi_create_object(env, &result);
  napi_set_named_property(env, result, "names", names);
  napi_set_named_property(env, result, "inos", ta1);
  napi_set_named_property(env, result, "types", ta2);
  return result;
}

static napi_value s_umount2(napi_env env, napi_callback_info info) {
  ARGS(2);
  PATHARG(0, path);
  return ret(env, umount2(path, (int)arg_i64(env, argv[1])));
}

// trimMemory(): freed heap memory back to the system (the service, once its last mount is gone).
static napi_value s_trim_memory(napi_env env, napi_callback_info info) {
  return num(env, malloc_trim(0));
}

// raiseNofile(): soft limit to the hard limit, and the hard limit to nr_open when root.
static napi_value s_raise_nofile(napi_env env, napi_callback_info info) {
  (void)info;
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  struct rlimit want = { 1048576, 1048576 };
  if (setrlimit(RLIMIT_NOFILE, &want) < 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  getrlimit(RLIMIT_NOFILE, &rl);
  return num(env, (double)rl.rlim_cur);
}

static napi_value s_makedev(napi_env env, napi_callback_info info) {
  ARGS(2);
  return num(env, (double)makedev((unsigned)arg_i64(env, argv[0]), (unsigned)arg_i64(env, argv[1])));
}

static napi_value s_dev_major_minor(napi_env env, napi_callback_info info) {
  ARGS(1);
  dev_t d = (dev_t)arg_f64(env, argv[0]);
  napi_value arr;
  napi_create_array_with_length(env, 2, &arr);
  napi_set_element(env, arr, 0, num(env, major(d)));
  napi_set_element(env, arr, 1, num(env, minor(d)));
  return arr;
}

// keepCapsOnFsuid(): this thread keeps its capabilities when its fsuid changes, so files can be
// created as the caller (fsuid/fsgid) with the daemon's privileges, as kernel overlayfs does.
static napi_value s_keep_caps(napi_env env, napi_callback_info info) {
  (void)info;
  int bits = prctl(PR_GET_SECUREBITS);
  if (bits < 0) return num(env, -errno);
  return ret(env, prctl(PR_SET_SECUREBITS, bits | SECBIT_NO_SETUID_FIXUP));
}

// setfsugid(uid, gid): per-thread file-system ids of the JS thread.
static napi_value s_setfsugid(napi_env env, napi_callback_info info) {
  ARGS(2);
  setfsgid((gid_t)arg_i64(env, argv[1]));
  setfsuid((uid_t)arg_i64(env, argv[0]));
  return num(env, 0);
}

napi_value sys_init_exports(napi_env env, napi_value exports) {
  export_fn(env, exports, "keepCapsOnFsuid", s_keep_caps);
  export_fn(env, exports, "setfsugid", s_setfsugid);
  export_fn(env, exports, "openat", s_openat);
  export_fn(env, exports, "openat2", s_openat2);
  export_fn(env, exports, "close", s_close);
  export_fn(env, exports, "fstatat", s_fstatat);
  export_fn(env, exports, "fstatvfs", s_fstatvfs);
  export_fn(env, exports, "mknodat", s_mknodat);
  export_fn(env, exports, "mkdirat", s_mkdirat);
  export_fn(env, exports, "unlinkat", s_unlinkat);
  export_fn(env, exports, "renameat2", s_renameat2);
  export_fn(env, exports, "linkat", s_linkat);
  export_fn(env, exports, "symlinkat", s_symlinkat);
  export_fn(env, exports, "readlinkat", s_readlinkat);
  export_fn(env, exports, "fchownat", s_fchownat);
  export_fn(env, exports, "fchmodat", s_fchmodat);
  export_fn(env, exports, "fchmod", s_fchmod);
  export_fn(env, exports, "utimensat", s_utimensat);
  export_fn(env, exports, "ftruncate", s_ftruncate);
  export_fn(env, exports, "fallocate", s_fallocate);
  export_fn(env, exports, "copyFileRange", s_copy_file_range);
  export_fn(env, exports, "ficlone", s_ficlone);
  export_fn(env, exports, "lseek", s_lseek);
  export_fn(env, exports, "fsync", s_fsync);
  export_fn(env, exports, "flock", s_flock);
  export_fn(env, exports, "cloneMount", s_clone_mount);
  export_fn(env, exports, "getxattr", s_getxattr);
  export_fn(env, exports, "listxattr", s_listxattr);
  export_fn(env, exports, "setxattr", s_setxattr);
  export_fn(env, exports, "removexattr", s_removexattr);
  export_fn(env, exports, "readdir", s_readdir);
  export_fn(env, exports, "umount2", s_umount2);
  export_fn(env, exports, "raiseNofile", s_raise_nofile);
  export_fn(env, exports, "trimMemory", s_trim_memory);
  export_fn(env, exports, "makedev", s_makedev);
  export_fn(env, exports, "majorMinor", s_dev_major_minor);
  return exports;
}
