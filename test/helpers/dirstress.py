#!/usr/bin/env python3
# The "dirstress" load of filesystem test suites: NPROCS processes under ROOT/stressdir, each in
# its own stress.K dir (or PER_DIR processes per dir), create NFILES entries (files, dirs,
# symlinks, char devices 0/0), scramble them (renames, unlinks, rmdirs, creates, mkdirs over
# random names, 2*NFILES steps), remove them by type, then leave and remove their dirs.
# Prints JSON: per process, every call that failed with its errno. With one process per dir a
# process's results depend only on the seed, so two filesystems must print the same.
# argv: ROOT NPROCS NFILES SEED [PER_DIR]
import errno, json, os, random, stat, sys

root, nprocs, nfiles, seed = os.path.abspath(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
per_dir = int(sys.argv[5]) if len(sys.argv) > 5 else 1

def run(k, rnd, log):
    def call(what, fn):
        try:
            fn()
            return True
        except OSError as e:
            log.append(f'{what}: {errno.errorcode.get(e.errno, e.errno)}')
            return False
    name = lambda i: f'XXXXXXXXXXXX.{i}'
    call('mkdir stressdir', lambda: os.mkdir(os.path.join(root, 'stressdir'), 0o777)) or log.pop()  # EEXIST expected
    if not call('chdir stressdir', lambda: os.chdir(os.path.join(root, 'stressdir'))):
        return
    d = f'stress.{k // per_dir}'
    if not call(f'mkdir {d}', lambda: os.mkdir(d, 0o777)) and per_dir > 1:
        log.pop()
    if not call(f'chdir {d}', lambda: os.chdir(d)):
        return
    for i in range(nfiles):
        n = name(i)
        kind = i % 4
        if kind == 0: call(f'creat {n}', lambda: os.close(os.open(n, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o666)))
        elif kind == 1: call(f'mkdir {n}', lambda: os.mkdir(n, 0o777))
        elif kind == 2: call(f'symlink {n}', lambda: os.symlink(n, n))
        else: call(f'mknod {n}', lambda: os.mknod(n, stat.S_IFCHR | 0o666, 0))
    for i in range(nfiles * 2):
        n = name(rnd.randrange(nfiles))
        step = i % 5
        if step == 0:
            m = name(rnd.randrange(nfiles))
            call(f'rename {n} {m}', lambda: os.rename(n, m))
        elif step == 1: call(f'unlink {n}', lambda: os.unlink(n))
        elif step == 2: call(f'rmdir {n}', lambda: os.rmdir(n))
        elif step == 3: call(f'creat {n}', lambda: os.close(os.open(n, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o666)))
        else: call(f'mkdir {n}', lambda: os.mkdir(n, 0o777))
    for i in range(nfiles):
        n = name(i)
        try:
            st = os.lstat(n)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode): call(f'rmdir {n}', lambda: os.rmdir(n))
        else: call(f'unlink {n}', lambda: os.unlink(n))
    call('chdir ..', lambda: os.chdir('..'))
    if not call(f'rmdir {d}', lambda: os.rmdir(d)) and per_dir > 1:
        log.pop()  # another process of the dir may still be in it, or removed it
    call('chdir ..', lambda: os.chdir('..'))
    call('rmdir stressdir', lambda: os.rmdir('stressdir')) or log.pop()  # other processes may still use it

procs = []
for k in range(nprocs):
    out = f'/tmp/.dirstress-{os.getpid()}-{k}.json'
    pid = os.fork()
    if pid == 0:
        log = []
        try:
            run(k, random.Random(seed * 1000 + k), log)
        except Exception as e:
            log.append(f'crashed: {e!r}')
        finally:
            with open(out, 'w') as f:
                json.dump(log, f)
            os._exit(0)
    procs.append((pid, out))
res = {}
for k, (pid, out) in enumerate(procs):
    os.waitpid(pid, 0)
    with open(out) as f:
        res[f'proc {k}'] = json.load(f)
    os.unlink(out)
print(json.dumps(res, sort_keys=True))
