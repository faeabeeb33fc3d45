#!/usr/bin/env python3
# Creates one object of each kind under a umask and prints what came out (mode, owner, the
# access ACL) as JSON: the same script runs on kernel overlayfs, a plain dir and layerfs.
# argv: DIR UMASK_OCTAL [effective UID GID]  — "effective": change only the effective ids
# (setgroups, setegid, seteuid) as test tools and set-id programs do.
import json, os, stat, sys

d, um = sys.argv[1], int(sys.argv[2], 8)
if len(sys.argv) > 3 and sys.argv[3] == 'effective':
    os.setgroups([])
    os.setegid(int(sys.argv[5]))
    os.seteuid(int(sys.argv[4]))
os.umask(um)
out = {}

def rec(name, fn):
    p = os.path.join(d, name)
    try:
        fn(p)
    except OSError as e:
        out[name] = 'E' + (os.strerror(e.errno) if e.errno else str(e))
        return
    st = os.lstat(p)
    try:
        acl = os.getxattr(p, 'system.posix_acl_access', follow_symlinks=False).hex()
    except OSError:
        acl = None
    out[name] = {'mode': oct(st.st_mode), 'uid': st.st_uid, 'gid': st.st_gid, 'acl': acl}

def create(mode):
    return lambda p: os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))

def recreate(p):
    # over a lower file: a whiteout is left, then the new file replaces it
    if os.path.lexists(p):
        os.unlink(p)
    create(0o666)(p)

for m in (0o666, 0o642, 0o4777, 0o2775, 0o600):
    rec('f%o' % m, create(m))
for m in (0o777, 0o755, 0o1777, 0o2777, 0o700):
    rec('d%o' % m, lambda p, m=m: os.mkdir(p, m))
rec('fifo', lambda p: os.mkfifo(p, 0o666))
rec('mknod-reg', lambda p: os.mknod(p, 0o664 | stat.S_IFREG))
rec('sym', lambda p: os.symlink('target', p))
rec('old', recreate)
rec('olddir', lambda p: (os.rmdir(p) if os.path.isdir(p) else None, os.mkdir(p, 0o777)))
print(json.dumps(out, sort_keys=True))
