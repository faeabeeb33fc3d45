#!/usr/bin/env python3
# Objects held open (or as the cwd) while they are removed or replaced: what fstat, stat(".")
# and chdir("..") give afterwards. Prints JSON; the same script runs on every implementation.
import json, os, sys

d = os.path.abspath(sys.argv[1])
out = {}

def attrs(fn):
    try:
        s = fn()
        return {'mode': oct(s.st_mode), 'nlink': s.st_nlink, 'uid': s.st_uid, 'size': s.st_size if not os.path.stat.S_ISDIR(s.st_mode) else None}
    except OSError as e:
        return 'E' + os.strerror(e.errno)

def p(*names):
    return os.path.join(d, *names)

def case(name, fn):
    try:
        out[name] = fn()
    except OSError as e:
        out[name] = 'E' + os.strerror(e.errno)

def dir_replaced(src, dst, mode=0o750):
    if not os.path.exists(p(dst)):
        os.mkdir(p(dst), mode)
    fd = os.open(p(dst), os.O_RDONLY | os.O_DIRECTORY)
    os.rename(p(src), p(dst))
    return attrs(lambda: os.fstat(fd))

def dir_removed(name):
    if not os.path.exists(p(name)):
        os.mkdir(p(name), 0o705)
    fd = os.open(p(name), os.O_RDONLY | os.O_DIRECTORY)
    os.rmdir(p(name))
    return [attrs(lambda: os.fstat(fd)), sorted(os.listdir(fd))]

def file_replaced():
    with open(p('f1'), 'w') as f: f.write('one')
    with open(p('f2'), 'w') as f: f.write('second')
    fd = os.open(p('f2'), os.O_RDONLY)
    os.rename(p('f1'), p('f2'))
    return [attrs(lambda: os.fstat(fd)), os.pread(fd, 100, 0).decode()]

def cwd_removed():
    os.mkdir(p('cwd'))
    os.mkdir(p('cwd', 'in'))
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(p('cwd', 'in'))
            os.rmdir(p('cwd', 'in'))
            res = [attrs(lambda: os.stat('.'))]
            try:
                os.chdir('..')
                res.append(sorted(os.listdir('.')))
            except OSError as e:
                res.append('E' + os.strerror(e.errno))
            with open(p('cwd-result'), 'w') as f: json.dump(res, f)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    with open(p('cwd-result')) as f: r = json.load(f)
    os.unlink(p('cwd-result'))
    return r

def dirs_after_held_removal():
    # a held directory is removed; new dirs made afterwards (one may get its inode number back
    # where the held one does not pin it) all work
    os.mkdir(p('held'))
    fd = os.open(p('held'), os.O_RDONLY | os.O_DIRECTORY)
    os.rmdir(p('held'))
    ok = 0
    for i in range(100):
        q = p(f'new{i}')
        os.mkdir(q)
        os.mkdir(os.path.join(q, 'inner'))
        ok += os.listdir(q) == ['inner']
    return [ok, attrs(lambda: os.fstat(fd))['nlink']]

os.mkdir(p('d1'))
with open(p('d1', 'f'), 'w') as f: f.write('f')
case('dir replaced by rename', lambda: dir_replaced('d1', 'd2'))
case('dir removed', lambda: dir_removed('d3'))
case('file replaced by rename', file_replaced)
case('cwd removed, then ..', cwd_removed)
case('dirs made after a held dir was removed', dirs_after_held_removal)
if os.path.isdir(p('emptydir')):  # a lower dir (overlay fixtures)
    os.mkdir(p('d4'))
    case('lower dir replaced by rename', lambda: dir_replaced('d4', 'emptydir'))
if os.path.isdir(p('usr', 'bin')):
    case('lower dir removed', lambda: (os.unlink(p('usr', 'bin', 'tool')), dir_removed('usr/bin'))[1])
print(json.dumps(out, sort_keys=True))
