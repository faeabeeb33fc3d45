// Branches changed while mounted — aufs's remount verbs, sent as `layerfs aufs MNT VERB…` (a
// setxattr of user.aufs.ctl on the mount's root: FUSE does not pass `mount -o remount,…`
// options to the daemon): add:INDEX:BRANCH, ins:INDEX:BRANCH, append:BRANCH, prepend:BRANCH,
// del:BRANCH, mod:BRANCH=PERM. The union looks every known name up again and the kernel drops
// what it cached (Union.relayer), so a removed branch's objects never show afterwards.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FsError } from '../sys/errors';
import { E } from '../sys/constants';
import { openLayer, setWritable, type Layer } from '../union/layers';
import { freshWork } from '../overlay/mount';
import { AUFS_POLICY, prepareBranch } from './mount';
import type { Union } from '../union/union';
import { within } from '../mount/dirs';
import { native } from '../sys/native';
import { branch, branchRow, type BranchRow } from './options';

/** A verb refused: errno for the setxattr, the message for user.aufs.error. */
const refuse = (errno: number, text: string): never => {
  throw new FsError(errno, text);
};

function sameDir(a: string, b: string): boolean {
  try {
    const x = fs.statSync(a), y = fs.statSync(b);
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false;
  }
}

function indexOf(table: BranchRow[], p: string): number {
  const i = table.findIndex((b) => b.path === p || sameDir(b.path, p));
  if (i < 0) refuse(E.ENOENT, `${p} is not a branch of this mount`);
  return i;
}

/** Who holds files or a cwd in branch idx of the mount at mnt: "pid N (comm) has PATH open". */
function holders(u: Union, mnt: string, idx: number): string[] {
  const out: string[] = [];
  const inBranch = (target: string): string | null => {
    const t = target.replace(/ \(deleted\)$/, '');
    if (t !== mnt && !t.startsWith(`${mnt}/`)) return null;
    const rel = t.slice(mnt.length + 1);
    const n = u.nodeAt(rel);
    return n && u.topLayer(n) === idx ? (rel || '/') : null;
  };
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    let comm = '?';
    try { comm = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim(); } catch { continue; }
    try {
      const cwd = inBranch(fs.readlinkSync(`/proc/${pid}/cwd`));
      if (cwd) out.push(`pid ${pid} (${comm}) has its cwd in ${cwd}`);
    } catch { /* gone, or not ours to see */ }
    let fds: string[] = [];
    try { fds = fs.readdirSync(`/proc/${pid}/fd`); } catch { continue; }
    for (const fd of fds) {
      try {
        const f = inBranch(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (f) out.push(`pid ${pid} (${comm}) has ${f} open`);
      } catch { /* closed meanwhile */ }
    }
  }
  return out;
}

/** A branch the union now writes in place: its work dir and aufs's own entries are made. */
function makeWritable(l: Layer): void {
  setWritable(l, true);
  prepareBranch(l.fd);
  l.workFd = freshWork(l.fd, AUFS_POLICY.workName!);
}

function makeReadOnly(l: Layer): void {
  setWritable(l, false);
  if (l.workFd >= 0) native.close(l.workFd);
  l.workFd = -1;
}

/** Applies one verb to the union and the branch table (the introspection's, shared). */
export function applyVerb(u: Union, table: BranchRow[], mnt: string, verb: string): void {
  const m = /^(add|ins|append|prepend|del|mod):(.*)$/.exec(verb.trim());
  if (!m) refuse(E.EINVAL, `unknown verb '${verb}' (add:INDEX:BRANCH, ins:INDEX:BRANCH, append:BRANCH, prepend:BRANCH, del:BRANCH, mod:BRANCH=PERM)`);
  const [, op, arg] = m!;
  // a first rw branch holds the union's work and index dirs: it stays first and writable
  const hasRw = table[0]?.perm === 'rw';
  const lowers = (): Layer[] => u.layers.slice(hasRw ? 1 : 0);
  const lastWritable = (i: number): boolean => u.layers[i].writable && u.layers.filter((l) => l.writable).length === 1;
  if (op === 'del') {
    const i = indexOf(table, arg);
    if (lastWritable(i)) refuse(E.EINVAL, `${table[i].path} is the last writable branch: it cannot be deleted`);
    if (i === 0 && hasRw) refuse(E.EINVAL, 'the first writable branch cannot be deleted (it holds the work and index dirs)');
    if (table.length === 1) refuse(E.EINVAL, 'the last branch cannot be deleted');
    const busy = holders(u, mnt, i);
    if (busy.length) refuse(E.EBUSY, `branch ${table[i].path} is busy: ${busy.slice(0, 5).join('; ')}${busy.length > 5 ? ` (and ${busy.length - 5} more)` : ''}`);
    const gone = u.layers[i];
    u.relayer(lowers().filter((l) => l !== gone));
    native.close(gone.fd);
    if (gone.workFd >= 0) native.close(gone.workFd);
    table.splice(i, 1);
    return;
  }
  if (op === 'mod') {
    const eq = arg.lastIndexOf('=');
    if (eq < 0) refuse(E.EINVAL, `mod needs BRANCH=PERM: ${arg}`);
    const i = indexOf(table, arg.slice(0, eq));
    let b;
    try {
      b = branch(`${table[i].path}=${arg.slice(eq + 1)}`, i);
    } catch (e) {
      return refuse(E.EINVAL, (e as Error).message);
    }
    const l = u.layers[i];
    if ((b.perm === 'rw') !== l.writable) {
      if (!l.writable && !u.layers.some((x) => x.writable)) refuse(E.EROFS, 'this mount has no writable branch: it was mounted read-only');
      if (l.writable && lastWritable(i)) refuse(E.EINVAL, `${table[i].path} is the last writable branch: it stays rw`);
      if (i === 0) refuse(E.EINVAL, "the first branch's permission cannot change while mounted");
      if (b.perm === 'rw') makeWritable(l);
      else makeReadOnly(l);
      u.relayer(lowers());
    }
    table[i] = branchRow(b, table[i].path);
    return;
  }
  let index: number, spec: string;
  if (op === 'append') [index, spec] = [table.length, arg];
  else if (op === 'prepend') [index, spec] = [0, arg];
  else {
    const c = arg.indexOf(':');
    index = Number(arg.slice(0, c));
    spec = arg.slice(c + 1);
    if (c < 0 || !Number.isInteger(index) || index < 0 || index > table.length) refuse(E.EINVAL, `bad branch index in '${verb}' (0 to ${table.length})`);
  }
  let b;
  try {
    b = branch(spec, index === 0 ? 1 : index);   // an added branch is ro unless said otherwise
  } catch (e) {
    return refuse(E.EINVAL, (e as Error).message);
  }
  if (index === 0 && hasRw) refuse(E.EINVAL, 'a branch above the first writable one is not supported in aufs mode');
  if (b.perm === 'rw' && !u.layers.some((x) => x.writable)) refuse(E.EROFS, 'this mount has no writable branch: it was mounted read-only');
  let layer: Layer;
  try {
    layer = openLayer(index, path.resolve(b.path), false);
  } catch (e) {
    const errno = e instanceof FsError ? e.errno : E.EIO;
    return refuse(errno, errno === E.ENOENT ? `branch ${b.path} does not exist` : `branch ${b.path}: ${(e as Error).message}`);
  }
  for (const l of u.layers) {
    const a = { what: 'branch', path: layer.path, fd: layer.fd }, o = { what: 'branch', path: l.path, fd: l.fd };
    const same = layer.dev === l.dev && layer.rootIno === l.rootIno;
    if (same || within(a, o) || within(o, a)) {
      native.close(layer.fd);
      refuse(E.EINVAL, same ? `${b.path} is already a branch` : `branches overlap: ${within(a, o) ? `${b.path} is inside ${l.path}` : `${l.path} is inside ${b.path}`}`);
    }
  }
  if (b.perm === 'rw') makeWritable(layer);
  const ls = lowers();
  ls.splice(index - (hasRw ? 1 : 0), 0, layer);
  u.relayer(ls, [layer]);
  table.splice(index, 0, branchRow(b, layer.path));
}
