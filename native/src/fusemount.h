// Mounting /dev/fuse: mount(2) as root, fusermount3's fd hand-over otherwise. Shared by the
// addon (foreground mounts) and the mount helper (native/helper/), which mounts in the caller's
// namespaces and hands the fd to the resident service.
#pragma once
#include <stddef.h>

struct conn_opts {
  char *fsname, *subtype;
  int allow_other, default_permissions, ro, debug;
  unsigned long mount_flags;   // MS_* from nosuid, nodev, noexec, noatime, sync, dirsync
};

// Parses "a,b=c" options known to the kernel mount into o; unknown ones are an error.
int fm_parse_opts(struct conn_opts *o, const char *opts, char *err, size_t errlen);
// Opens /dev/fuse and mounts it at mnt; the fd, or -1 with a message in err. *by_fusermount:
// it was mounted by fusermount3 (so fusermount3 unmounts it).
int fm_mount(const struct conn_opts *o, const char *mnt, int *by_fusermount, char *err, size_t errlen);
// Detaches mnt (lazily).
void fm_unmount(const char *mnt, int by_fusermount);
