// One POSIX operation sequence, run against a root directory. The log records each step's
// result (a value or the errno code) and the stat fields that must match between a plain
// directory and a layerfs view of an identical one. Used by parity and (later) oracle tests.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { native } from '../../src/sys/native';
import {
  AT_FDCWD, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, RENAME_EXCHANGE, RENAME_NOREPLACE, SEEK_DATA, SEEK_HOLE,
} from '../../src/sys/constants';
import { errnoName } from '../../src/sys/errors';

export type Step = [string, unknown];

function code(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? String(e);
}

/** Stat fields compared across implementations: not st_ino/st_dev, and no times (two trees
 * are written at different moments); times are compared where a step sets them. */
export function statView(st: fs.BigIntStats): Record<string, string> {
  return {
    mode: st.mode.toString(8), uid: String(st.uid), gid: String(st.gid), size: String(st.size),
    nlink: String(st.nlink), rdev: String(st.rdev),
  };
}

export async function runScenario(root: string, asRoot: boolean): Promise<Step[]> {
  const log: Step[] = [];
  const p = (...a: string[]): string => path.join(root, ...a);
  const step = (name: string, fn: () => unknown): void => {
    try {
      const r = fn();
      log.push([name, r === undefined ? 'ok' : r]);
    } catch (e) {
      log.push([name, code(e)]);
    }
  };
  const sys = (name: string, r: number | string | Buffer): void => {
    log.push([name, typeof r === 'number' && r < 0 ? errnoName(-r) : typeof r === 'number' ? r : String(r)]);
  };
  const lst = (name: string, rel: string): void => step(`lstat ${name}`, () => statView(fs.lstatSync(p(rel), { bigint: true })));

  step('create f', () => fs.writeFileSync(p('f'), 'hello world\n', { flag: 'wx', mode: 0o640 }));
  step('create f again (EEXIST)', () => fs.writeFileSync(p('f'), 'x', { flag: 'wx' }));
  step('read f', () => fs.readFileSync(p('f'), 'utf8'));
  step('append f', () => fs.appendFileSync(p('f'), 'more\n'));
  step('read f after append', () => fs.readFileSync(p('f'), 'utf8'));
  step('pwrite f at 3', () => {
    const fd = fs.openSync(p('f'), 'r+');
    fs.writeSync(fd, 'LO', 3);
    fs.closeSync(fd);
  });
  step('read f after pwrite', () => fs.readFileSync(p('f'), 'utf8'));
  step('truncate f to 5', () => fs.truncateSync(p('f'), 5));
  step('truncate f to 9000', () => fs.truncateSync(p('f'), 9000));
  step('size f', () => fs.statSync(p('f')).size);
  step('chmod f 0604', () => fs.chmodSync(p('f'), 0o604));
  if (asRoot) step('chown f 1234:5678', () => fs.chownSync(p('f'), 1234, 5678));
  step('utimes f ns', () => {
    fs.utimesSync(p('f'), 1_000_000_000.123456, 1_200_000_000.987654);
  });
  step('set mtime ns exactly', () => {
    const r = native.utimensat(AT_FDCWD, p('f'), 1_600_000_000, 123_456_789, 1_700_000_000, 987_654_321, 0);
    return r;
  });
  step('mtimeNs f', () => String(fs.statSync(p('f'), { bigint: true }).mtimeNs));
  lst('f', 'f');
  step('ctime advances on chmod', () => {
    const before = fs.statSync(p('f'), { bigint: true }).ctimeNs;
    const t = Date.now();
    while (Date.now() - t < 15) { /* let the clock move */ }
    fs.chmodSync(p('f'), 0o644);
    return fs.statSync(p('f'), { bigint: true }).ctimeNs > before;
  });
  step('open missing (ENOENT)', () => fs.openSync(p('nope'), 'r'));
  step('mkdir d', () => fs.mkdirSync(p('d'), 0o750));
  step('mkdir d again (EEXIST)', () => fs.mkdirSync(p('d')));
  step('mkdir in missing (ENOENT)', () => fs.mkdirSync(p('missing', 'x')));
  step('create d/g', () => fs.writeFileSync(p('d', 'g'), 'g'));
  step('rmdir non-empty (ENOTEMPTY)', () => fs.rmdirSync(p('d')));
  step('rmdir a file (ENOTDIR)', () => fs.rmdirSync(p('f')));
  step('unlink a dir (EISDIR)', () => fs.unlinkSync(p('d')));
  step('open dir for writing (EISDIR)', () => fs.openSync(p('d'), 'w'));
  step('file as dir (ENOTDIR)', () => fs.statSync(p('f', 'x')));
  lst('d', 'd');
  step('symlink s -> f', () => fs.symlinkSync('f', p('s')));
  step('symlink dangling', () => fs.symlinkSync('../outside/none', p('dangling')));
  step('readlink s', () => fs.readlinkSync(p('s')));
  step('readlink dangling', () => fs.readlinkSync(p('dangling')));
  step('read through s', () => fs.readFileSync(p('s')).length);
  step('lstat s type', () => fs.lstatSync(p('s')).isSymbolicLink());
  step('readlink a file (EINVAL)', () => fs.readlinkSync(p('f')));
  step('link f -> h', () => fs.linkSync(p('f'), p('h')));
  step('nlink f', () => fs.statSync(p('f')).nlink);
  step('same ino f/h', () => fs.statSync(p('f')).ino === fs.statSync(p('h')).ino);
  step('link onto existing (EEXIST)', () => fs.linkSync(p('f'), p('h')));
  step('link a dir (EPERM)', () => fs.linkSync(p('d'), p('dl')));
  step('unlink h', () => fs.unlinkSync(p('h')));
  step('nlink f after unlink', () => fs.statSync(p('f')).nlink);
  step('rename f -> f2', () => fs.renameSync(p('f'), p('f2')));
  step('f gone', () => fs.existsSync(p('f')));
  step('create t', () => fs.writeFileSync(p('t'), 'tee'));
  step('rename t over f2', () => fs.renameSync(p('t'), p('f2')));
  step('read f2', () => fs.readFileSync(p('f2'), 'utf8'));
  step('create u', () => fs.writeFileSync(p('u'), 'you'));
  sys('renameat2 NOREPLACE onto existing', native.renameat2(AT_FDCWD, p('u'), AT_FDCWD, p('f2'), RENAME_NOREPLACE));
  sys('renameat2 NOREPLACE to new', native.renameat2(AT_FDCWD, p('u'), AT_FDCWD, p('u2'), RENAME_NOREPLACE));
  sys('renameat2 EXCHANGE', native.renameat2(AT_FDCWD, p('u2'), AT_FDCWD, p('f2'), RENAME_EXCHANGE));
  step('after exchange', () => [fs.readFileSync(p('u2'), 'utf8'), fs.readFileSync(p('f2'), 'utf8')]);
  sys('renameat2 EXCHANGE with missing', native.renameat2(AT_FDCWD, p('u2'), AT_FDCWD, p('zz'), RENAME_EXCHANGE));
  step('rename dir over non-empty dir (ENOTEMPTY)', () => {
    fs.mkdirSync(p('e'));
    fs.renameSync(p('e'), p('d'));
  });
  step('rename dir into itself (EINVAL)', () => fs.renameSync(p('d'), p('d', 'sub')));
  step('rename file over dir (EISDIR)', () => fs.renameSync(p('f2'), p('d')));
  sys('setxattr user.a', native.setxattr(p('f2'), 'user.a', Buffer.from('va'), 0, 1));
  sys('setxattr user.b', native.setxattr(p('f2'), 'user.b', Buffer.alloc(3000, 7), 0, 1));
  sys('getxattr user.a', native.getxattr(p('f2'), 'user.a', 1));
  step('listxattr', () => {
    const r = native.listxattr(p('f2'), 1);
    return typeof r === 'number' ? errnoName(-r) : r.toString().split('\0').filter(Boolean).sort();
  });
  sys('getxattr missing (ENODATA)', native.getxattr(p('f2'), 'user.none', 1));
  sys('setxattr CREATE existing (EEXIST)', native.setxattr(p('f2'), 'user.a', Buffer.from('x'), 1, 1));
  sys('setxattr REPLACE missing (ENODATA)', native.setxattr(p('f2'), 'user.c', Buffer.from('x'), 2, 1));
  sys('removexattr user.a', native.removexattr(p('f2'), 'user.a', 1));
  sys('removexattr again (ENODATA)', native.removexattr(p('f2'), 'user.a', 1));
  sys('setxattr on dir', native.setxattr(p('d'), 'user.dir', Buffer.from('1'), 0, 1));
  sys('getxattr on dir', native.getxattr(p('d'), 'user.dir', 1));
  step('mkfifo', () => {
    const r = native.mknodat(AT_FDCWD, p('fifo'), 0o10644, 0);
    if (r < 0) throw Object.assign(new Error(), { code: errnoName(-r) });
  });
  lst('fifo', 'fifo');
  if (asRoot) {
    sys('mknod char 1:3', native.mknodat(AT_FDCWD, p('null'), 0o20600, native.makedev(1, 3)));
    lst('char dev', 'null');
    sys('mknod block 7:0', native.mknodat(AT_FDCWD, p('blk'), 0o60600, native.makedev(7, 0)));
    lst('block dev', 'blk');
  }
  await new Promise<void>((resolve) => {
    const srv = net.createServer();
    srv.on('error', (e) => {
      log.push(['bind socket', code(e)]);
      resolve();
    });
    srv.listen(p('sock'), () => {
      log.push(['bind socket', fs.lstatSync(p('sock')).isSocket()]);
      srv.close(() => resolve());
    });
  });
  step('fallocate + holes', () => {
    const fd = fs.openSync(p('sparse'), 'w+');
    try {
      const res: unknown[] = [];
      res.push(native.fallocate(fd, 0, 0, 1 << 20));
      fs.writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 0);
      res.push(native.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 65536, 65536));
      res.push(native.lseek(fd, 0, SEEK_HOLE) <= 65536);
      res.push(native.lseek(fd, 65536, SEEK_DATA));
      res.push(fs.fstatSync(fd).size);
      return res;
    } finally {
      fs.closeSync(fd);
    }
  });
  step('big write/read 3 MiB', () => {
    const b = Buffer.alloc(3 << 20);
    for (let i = 0; i < b.length; i += 4096) b.writeUInt32LE(i, i);
    fs.writeFileSync(p('big'), b);
    return fs.readFileSync(p('big')).equals(b);
  });
  step('copy_file_range', () => {
    const a = fs.openSync(p('big'), 'r'), b = fs.openSync(p('big.copy'), 'w');
    const n = native.copyFileRange(a, 4096, b, 0, 1 << 20);
    fs.closeSync(a);
    fs.closeSync(b);
    return [n, fs.readFileSync(p('big.copy')).equals(fs.readFileSync(p('big')).subarray(4096, 4096 + (1 << 20)))];
  });
  step('readdir root', () => fs.readdirSync(root, { withFileTypes: true })
    .map((d) => `${d.name}:${d.isDirectory() ? 'd' : d.isSymbolicLink() ? 'l' : d.isFIFO() ? 'p' : d.isSocket() ? 's' : d.isCharacterDevice() ? 'c' : d.isBlockDevice() ? 'b' : 'f'}`).sort());
  step('unlink s', () => fs.unlinkSync(p('s')));
  step('unlink missing (ENOENT)', () => fs.unlinkSync(p('s')));
  step('rm -r d', () => fs.rmSync(p('d'), { recursive: true }));
  step('readdir after', () => fs.readdirSync(root).sort());
  for (const n of ['f2', 'u2', 'fifo', 'sparse', 'big']) lst(n, n);
  return log;
}

/** d_ino of every entry of dir, as the kernel reports it (getdents), against lstat's st_ino. */
export function dinoMismatches(dir: string): string[] {
  const fd = fs.openSync(dir, 'r');
  try {
    const r = native.readdir(fd);
    if (typeof r === 'number') throw new Error(`readdir: ${errnoName(-r)}`);
    const bad: string[] = [];
    r.names.forEach((name, i) => {
      if (name === '.' || name === '..') return;
      const ino = fs.lstatSync(path.join(dir, name)).ino;
      if (ino !== r.inos[i]) bad.push(`${name}: d_ino ${r.inos[i]} st_ino ${ino}`);
    });
    return bad;
  } finally {
    fs.closeSync(fd);
  }
}
