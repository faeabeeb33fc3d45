// Kernel overlayfs as the oracle: identical copies of the same layers mounted by the kernel
// and by layerfs, the same steps on both, and views of the results to compare.
import { spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native } from '../../src/sys/native';
import { AT_FDCWD, S_IFCHR } from '../../src/sys/constants';
import { errnoName } from '../../src/sys/errors';
import { layerfs } from './mount';

export const KERNEL_OPTS = 'redirect_dir=on';

function sh(cmd: string): void {
  const r = spawnSync('bash', ['-c', cmd], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr}`);
}

function setx(p: string, name: string, value: string): void {
  const r = native.setxattr(p, name, Buffer.from(value), 0, 0);
  if (r < 0) throw new Error(`setxattr ${p} ${name}: ${errnoName(-r)}`);
}

/** Three lower layers in the kernel's formats, owners, modes, xattrs, times, links, specials. */
export function buildLowers(dir: string): string[] {
  const L = ['L1', 'L2', 'L3'].map((l) => path.join(dir, l));
  for (const l of L) fs.mkdirSync(l, { recursive: true });
  const [l1, l2, l3] = L;
  const w = (p: string, data: string, mode = 0o644): void => {
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, data, { mode });
    fs.chmodSync(p, mode);
  };
  // bottom layer
  w(`${l3}/base.txt`, 'base\n');
  w(`${l3}/etc/passwd`, 'root:x:0:0\n');
  w(`${l3}/etc/group`, 'root:x:0\n');
  w(`${l3}/etc/conf.d/a.conf`, 'a=1\n');
  w(`${l3}/usr/bin/tool`, '#!/bin/sh\necho tool\n', 0o755);
  w(`${l3}/usr/lib/libx.so`, 'x'.repeat(70000));
  w(`${l3}/var/log/old.log`, 'old\n');
  w(`${l3}/deep/a/b/c/d/e/f.txt`, 'deep\n');
  w(`${l3}/gone3`, 'will be whited out by L1\n');
  w(`${l3}/opq/hidden3`, 'hidden by L2 opaque\n');
  fs.mkdirSync(`${l3}/emptydir`);
  // middle
  w(`${l2}/etc/passwd`, 'root:x:0:0\nuser:x:1000:1000\n');
  w(`${l2}/etc/hosts`, '127.0.0.1 localhost\n');
  w(`${l2}/usr/lib/liby.so`, 'y'.repeat(5000));
  w(`${l2}/opq/kept2`, 'in the opaque dir\n');
  setx(`${l2}/opq`, 'trusted.overlay.opaque', 'y');
  w(`${l2}/home/user/.profile`, 'PATH=/bin\n', 0o600);
  fs.chownSync(`${l2}/home/user`, 1000, 1000);
  fs.chownSync(`${l2}/home/user/.profile`, 1000, 1000);
  w(`${l2}/sparse.img`, '');
  fs.truncateSync(`${l2}/sparse.img`, 4 << 20);
  const fd = fs.openSync(`${l2}/sparse.img`, 'r+');
  fs.writeSync(fd, 'data in the middle', 2 << 20);
  fs.closeSync(fd);
  w(`${l2}/xw/stay`, 'stays\n');
  w(`${l2}/xw/gone2`, 'whited out by an xattr whiteout in L1\n');
  w(`${l2}/hard1`, 'hard linked\n');
  fs.linkSync(`${l2}/hard1`, `${l2}/hard2`);
  w(`${l2}/gone2`, 'whited out by L1\n');
  // top
  w(`${l1}/etc/hosts`, '127.0.0.1 localhost top\n');
  w(`${l1}/top.txt`, 'top\n', 0o640);
  fs.chownSync(`${l1}/top.txt`, 1234, 5678);
  setx(`${l1}/top.txt`, 'user.comment', 'hello');
  fs.symlinkSync('etc/hosts', `${l1}/hosts-link`);
  fs.symlinkSync('/etc', `${l1}/host-etc`);
  fs.symlinkSync('../../../..', `${l1}/up-link`);
  sh(`mkfifo ${l1}/fifo`);
  fs.mkdirSync(`${l1}/xw`);
  setx(`${l1}/xw`, 'trusted.overlay.opaque', 'x');
  w(`${l1}/xw/gone2`, '');
  setx(`${l1}/xw/gone2`, 'trusted.overlay.whiteout', '');
  for (const g of ['gone2', 'gone3']) {
    const r = native.mknodat(AT_FDCWD, `${l1}/${g}`, S_IFCHR, 0);
    if (r < 0) throw new Error(`mknod whiteout: ${errnoName(-r)}`);
  }
  fs.mkdirSync(`${l1}/var/log`, { recursive: true });
  w(`${l1}/var/log/new.log`, 'new\n');
  fs.utimesSync(`${l1}/top.txt`, 1_500_000_000, 1_500_000_000);
  fs.utimesSync(`${l3}/base.txt`, 1_400_000_000, 1_400_000_000);
  return L;
}

export interface Side {
  name: 'kernel' | 'layerfs';
  lowers: string[];
  upper: string;
  work: string;
  mnt: string;
}

/** Copies the lowers for one side (cp -a keeps owners, modes, times, xattrs, devices, links). */
export function prepareSide(base: string, name: Side['name'], lowers: string[]): Side {
  const dir = path.join(base, name);
  fs.mkdirSync(dir, { recursive: true });
  const ls = lowers.map((l) => {
    const to = path.join(dir, path.basename(l));
    sh(`cp -a ${l} ${to}`);
    return to;
  });
  const s: Side = { name, lowers: ls, upper: path.join(dir, 'upper'), work: path.join(dir, 'work'), mnt: path.join(dir, 'mnt') };
  for (const d of [s.upper, s.work, s.mnt]) fs.mkdirSync(d, { recursive: true });
  return s;
}

export function mountSide(s: Side, upper = s.upper, work = s.work, impl: Side['name'] = s.name): void {
  const opts = `lowerdir=${s.lowers.join(':')},upperdir=${upper},workdir=${work}`;
  if (impl === 'kernel') sh(`mount -t overlay overlay -o ${opts},${KERNEL_OPTS} ${s.mnt}`);
  else {
    const r = layerfs(['mount', '-o', opts, s.mnt]);
    if (r.status !== 0) throw new Error(`layerfs mount: ${r.stderr}`);
  }
}

export function unmountSide(s: Side): void {
  for (let i = 0; i < 3; i++) {
    if (spawnSync('umount', [s.mnt]).status === 0) return;
    if (!fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${s.mnt} `)) return;
    spawnSync('sleep', ['0.1']);
  }
  spawnSync('umount', ['-l', s.mnt]);
}

export interface Rec {
  type: string;
  mode: string;
  uid: number;
  gid: number;
  size?: number;
  nlink?: number;
  hash?: string;
  target?: string;
  rdev?: number;
  xattrs?: Record<string, string>;
  mtimeFixture?: boolean;
}

function typeOf(st: fs.Stats): string {
  return st.isDirectory() ? 'd' : st.isFile() ? 'f' : st.isSymbolicLink() ? 'l' : st.isFIFO() ? 'p'
    : st.isCharacterDevice() ? 'c' : st.isBlockDevice() ? 'b' : st.isSocket() ? 's' : '?';
}

function userXattrs(p: string, privateToo: boolean): Record<string, string> {
  const out: Record<string, string> = {};
  const list = native.listxattr(p, 0);
  if (typeof list === 'number') return out;
  for (const n of list.toString().split('\0').filter(Boolean).sort()) {
    if (!privateToo && /^(trusted|user)\.(overlay|fuseoverlayfs)\./.test(n)) continue;
    if (n.startsWith('security.selinux')) continue;
    const v = native.getxattr(p, n, 0);
    out[n] = typeof v === 'number' ? errnoName(-v) : v.toString('base64');
  }
  return out;
}

/** Everything visible below root, keyed by relative path. */
export function view(root: string, opts: { fixtureTimes?: Map<string, number>; xattrs?: boolean; skip?: (rel: string) => boolean } = {}): Record<string, Rec> {
  const out: Record<string, Rec> = {};
  const walk = (rel: string): void => {
    const p = path.join(root, rel);
    const st = fs.lstatSync(p);
    const r: Rec = { type: typeOf(st), mode: (st.mode & 0o7777).toString(8), uid: st.uid, gid: st.gid };
    if (r.type === 'f') {
      r.size = st.size;
      r.nlink = st.nlink;
      r.hash = crypto.createHash('sha1').update(fs.readFileSync(p)).digest('hex').slice(0, 12);
    } else if (r.type === 'l') r.target = fs.readlinkSync(p);
    else if (r.type === 'c' || r.type === 'b') r.rdev = st.rdev;
    else if (r.type === 'd') r.nlink = st.nlink;
    if (opts.xattrs !== false) {
      const x = userXattrs(p, false);
      if (Object.keys(x).length) r.xattrs = x;
    }
    if (opts.fixtureTimes && r.type !== 'd') {
      const t = opts.fixtureTimes.get(rel);
      if (t !== undefined) r.mtimeFixture = t === Number(fs.lstatSync(p, { bigint: true }).mtimeNs);
    }
    out[rel || '.'] = r;
    if (r.type === 'd') for (const n of fs.readdirSync(p).sort()) if (!opts.skip?.(rel ? `${rel}/${n}` : n)) walk(rel ? `${rel}/${n}` : n);
  };
  walk('');
  return out;
}

/** mtimes of the merged lower view, to tell untouched objects. */
export function fixtureTimes(root: string): Map<string, number> {
  const m = new Map<string, number>();
  const walk = (rel: string): void => {
    const p = path.join(root, rel);
    const st = fs.lstatSync(p, { bigint: true });
    m.set(rel, Number(st.mtimeNs));
    if (st.isDirectory()) for (const n of fs.readdirSync(p)) walk(rel ? `${rel}/${n}` : n);
  };
  walk('');
  return m;
}

/** An upper dir with what legitimately differs removed: origin/impure/uuid and layerfs's ino. */
export function upperView(upper: string): Record<string, Rec & { special?: string }> {
  const out: Record<string, Rec & { special?: string }> = {};
  const walk = (rel: string): void => {
    const p = path.join(upper, rel);
    const st = fs.lstatSync(p);
    const r: Rec & { special?: string } = { type: typeOf(st), mode: (st.mode & 0o7777).toString(8), uid: st.uid, gid: st.gid };
    if (r.type === 'f') {
      r.size = st.size;
      r.hash = crypto.createHash('sha1').update(fs.readFileSync(p)).digest('hex').slice(0, 12);
    } else if (r.type === 'l') r.target = fs.readlinkSync(p);
    else if (r.type === 'c') r.rdev = st.rdev;
    const x = userXattrs(p, true);
    for (const k of Object.keys(x)) {
      if (/\.overlay\.(origin|impure|uuid|layerfs\.)/.test(k) || k.endsWith('.overlay.layerfs.ino')) delete x[k];
    }
    for (const k of ['trusted.overlay.redirect', 'user.overlay.redirect']) {
      if (x[k]) {
        // relative redirects are relative to the directory's parent: compare absolute paths
        const v = Buffer.from(x[k], 'base64').toString();
        x[k] = v.startsWith('/') ? v : `/${path.posix.join(path.posix.dirname(rel), v)}`;
      }
    }
    if (Object.keys(x).length) r.xattrs = x;
    if (rel) out[rel] = r;
    if (r.type === 'd') for (const n of fs.readdirSync(p).sort()) walk(rel ? `${rel}/${n}` : n);
  };
  walk('');
  return out;
}

export type StepFn = (root: string) => unknown;

/** Runs steps; each result is its value or the errno code it failed with. */
export function runSteps(root: string, steps: [string, StepFn][]): [string, unknown][] {
  return steps.map(([name, fn]) => {
    try {
      let v = fn(root);
      if (typeof v === 'string') v = v.split(root).join('<root>');  // mkdir -p returns a path
      return [name, v === undefined ? 'ok' : v];
    } catch (e) {
      return [name, (e as NodeJS.ErrnoException).code ?? String(e)];
    }
  });
}

export function sysCall(r: number | string | Buffer): unknown {
  if (typeof r === 'number' && r < 0) throw Object.assign(new Error(errnoName(-r)), { code: errnoName(-r) });
  return r;
}

/** A tree's content, for "never changed" checks (names, modes, data, link targets). */
export function treeHash(root: string): string {
  const h = crypto.createHash('sha1');
  const walk = (rel: string): void => {
    const p = path.join(root, rel);
    const st = fs.lstatSync(p);
    h.update(`${rel}\0${st.mode}\0${st.isFile() ? fs.readFileSync(p).toString('hex') : st.isSymbolicLink() ? fs.readlinkSync(p) : ''}\n`);
    if (st.isDirectory()) for (const n of fs.readdirSync(p).sort()) walk(path.join(rel, n));
  };
  walk('');
  return h.digest('hex');
}

/** The view without dir link counts (a merged dir shows 1, a plain one its subdirs + 2). */
export function shown(root: string, skip?: (rel: string) => boolean): Record<string, Rec> {
  const v = view(root, { xattrs: false, skip });
  for (const r of Object.values(v)) if (r.type === 'd') delete r.nlink;
  return v;
}
