// Oracle tests: every scenario runs on kernel overlayfs and on layerfs over identical copies of
// the same layers. Compared: each step's result or errno, the merged view (names, types, modes,
// owners, sizes, content hashes, link counts, xattrs, untouched mtimes), which objects kept
// their st_ino, the upper dirs (normalised), and each upper mounted by the other implementation.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { native } from '../src/sys/native';
import { AT_FDCWD, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT } from '../src/sys/constants';
import { requireFuse, tempDir, unmountAll } from './helpers/mount';
import {
  buildLowers, fixtureTimes, mountSide, prepareSide, runSteps, sysCall, unmountSide, upperView, view,
  type Side, type StepFn,
} from './helpers/overlay';

type Scenario = [string, [string, StepFn][]];

const w = (rel: string, data: string): StepFn => (r) => fs.writeFileSync(path.join(r, rel), data);
const a = (rel: string, data: string): StepFn => (r) => fs.appendFileSync(path.join(r, rel), data);
const rd = (rel: string): StepFn => (r) => fs.readFileSync(path.join(r, rel), 'utf8');
const ls = (rel: string): StepFn => (r) => fs.readdirSync(path.join(r, rel)).sort();
const rm = (rel: string): StepFn => (r) => fs.unlinkSync(path.join(r, rel));
const rmdir = (rel: string): StepFn => (r) => fs.rmdirSync(path.join(r, rel));
const rmrf = (rel: string): StepFn => (r) => fs.rmSync(path.join(r, rel), { recursive: true });
const mkdir = (rel: string): StepFn => (r) => fs.mkdirSync(path.join(r, rel));
const mv = (x: string, y: string): StepFn => (r) => fs.renameSync(path.join(r, x), path.join(r, y));
const mv2 = (x: string, y: string, flags: number): StepFn => (r) =>
  sysCall(native.renameat2(AT_FDCWD, path.join(r, x), AT_FDCWD, path.join(r, y), flags));
const st = (rel: string): StepFn => (r) => {
  const s = fs.lstatSync(path.join(r, rel));
  return { mode: s.mode.toString(8), size: s.size, uid: s.uid, gid: s.gid, nlink: s.isDirectory() ? undefined : s.nlink };
};
const exists = (rel: string): StepFn => (r) => fs.existsSync(path.join(r, rel));

const N255 = 'n'.repeat(255), N256 = 'n'.repeat(256);

/** Every call on a name of 256 bytes fails with ENAMETOOLONG before anything else; 255 works. */
function longNameSteps(): [string, StepFn][] {
  const at = (r: string, rel: string): string => path.join(r, rel);
  const out: [string, StepFn][] = [];
  for (const [tag, name] of [['256', N256], ['256 component', `${N256}/x`], ['256 under lower dir', `etc/${N256}`]] as const) {
    out.push([`stat ${tag}`, st(name)], [`chmod ${tag}`, (r) => fs.chmodSync(at(r, name), 0o600)],
      [`chown ${tag}`, (r) => fs.chownSync(at(r, name), 1, 1)], [`lchown ${tag}`, (r) => fs.lchownSync(at(r, name), 1, 1)],
      [`truncate ${tag}`, (r) => fs.truncateSync(at(r, name), 1)], [`unlink ${tag}`, rm(name)], [`rmdir ${tag}`, rmdir(name)],
      [`rename from ${tag}`, mv(name, 'x')], [`rename to ${tag}`, mv('top.txt', name)], [`open ${tag}`, rd(name)],
      [`create ${tag}`, w(name, 'x')], [`mkdir ${tag}`, mkdir(name)], [`symlink ${tag}`, (r) => fs.symlinkSync('t', at(r, name))],
      [`link ${tag}`, (r) => fs.linkSync(at(r, 'base.txt'), at(r, name))], [`mkfifo ${tag}`, (r) => sysCall(native.mknodat(AT_FDCWD, at(r, name), 0o10600, 0))],
      [`getxattr ${tag}`, (r) => sysCall(native.getxattr(at(r, name), 'user.x', 0))]);
  }
  out.push(['create 255', w(N255, 'long')], ['stat 255', st(N255)], ['read 255', rd(N255)], ['mkdir 255 in lower dir', mkdir(`etc/${N255}`)],
    ['mv 255', mv(N255, `etc/${N255}/${N255}`)], ['ls', ls(`etc/${N255}`)], ['rm 255', rm(`etc/${N255}/${N255}`)]);
  return out;
}

/** renameat2 with every flag combination, on lower and upper files and dirs. */
function renameFlagSteps(): [string, StepFn][] {
  const out: [string, StepFn][] = [['make upper', w('up1', 'u1')], ['make upper 2', w('up2', 'u2')], ['make dir', mkdir('ud')]];
  const flags = [0, RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT, RENAME_NOREPLACE | RENAME_EXCHANGE,
    RENAME_NOREPLACE | RENAME_WHITEOUT, RENAME_EXCHANGE | RENAME_WHITEOUT, 7, 8];
  const pairs: [string, string][] = [['base.txt', 'new-name'], ['up1', 'up2'], ['etc/hosts', 'etc/passwd'], ['ud', 'emptydir'],
    ['usr/bin', 'var/log'], ['nope', 'up2']];
  for (const f of flags) {
    for (const [x, y] of pairs) out.push([`renameat2 ${f} ${x} ${y}`, mv2(x, y, f)], [`ls after ${f} ${x}`, ls(path.dirname(x))]);
  }
  out.push(['ls /', ls('')]);
  return out;
}

const scenarios: Scenario[] = [
  ['read only', [['ls /', ls('')], ['ls etc', ls('etc')], ['read hosts', rd('etc/hosts')], ['read passwd', rd('etc/passwd')],
    ['ls opq', ls('opq')], ['ls xw', ls('xw')], ['gone2', exists('gone2')], ['gone3', exists('gone3')], ['stat top', st('top.txt')],
    ['read link target', rd('hosts-link')], ['ls deep', ls('deep/a/b/c/d/e')]]],
  ['create and write', [['create', w('new.txt', 'new\n')], ['create in lower dir', w('etc/new.conf', 'x=1\n')],
    ['create deep', w('deep/a/b/c/d/e/g.txt', 'g\n')], ['mkdir', mkdir('newdir')], ['file in new dir', w('newdir/f', 'f')],
    ['mkdir exists', mkdir('etc')], ['create over dir', w('etc', 'x')], ['read back', rd('etc/new.conf')]]],
  ['copy-up by write, append, truncate', [['append lower', a('etc/passwd', 'extra:x:2:2\n')], ['overwrite lower', w('base.txt', 'changed\n')],
    ['truncate lower', (r) => fs.truncateSync(path.join(r, 'usr/lib/libx.so'), 100)],
    ['extend lower', (r) => fs.truncateSync(path.join(r, 'etc/group'), 50000)],
    ['pwrite sparse', (r) => { const fd = fs.openSync(path.join(r, 'sparse.img'), 'r+'); fs.writeSync(fd, 'X', 100); fs.closeSync(fd); }],
    ['read passwd', rd('etc/passwd')], ['read sparse middle', (r) => fs.readFileSync(path.join(r, 'sparse.img')).subarray(2 << 20, (2 << 20) + 18).toString()]]],
  ['metadata copy-up', [['chmod', (r) => fs.chmodSync(path.join(r, 'usr/bin/tool'), 0o700)], ['chown', (r) => fs.chownSync(path.join(r, 'etc/hosts'), 42, 43)],
    ['utimes', (r) => fs.utimesSync(path.join(r, 'base.txt'), 1_300_000_000, 1_300_000_001)],
    ['setxattr', (r) => sysCall(native.setxattr(path.join(r, 'etc/group'), 'user.x', Buffer.from('v'), 0, 0))],
    ['getxattr top', (r) => { const v = native.getxattr(path.join(r, 'top.txt'), 'user.comment', 0); return typeof v === 'number' ? v : v.toString(); }],
    ['removexattr', (r) => sysCall(native.removexattr(path.join(r, 'top.txt'), 'user.comment', 0))],
    ['chmod dir', (r) => fs.chmodSync(path.join(r, 'etc/conf.d'), 0o700)], ['stat tool', st('usr/bin/tool')]]],
  ['unlink and rmdir', [['rm lower file', rm('base.txt')], ['rm upper-created', (r) => { fs.writeFileSync(path.join(r, 'u'), 'u'); fs.unlinkSync(path.join(r, 'u')); }],
    ['rm missing', rm('nope')], ['rmdir non-empty', rmdir('etc')], ['rmdir lower empty', rmdir('emptydir')],
    ['rm -r merged', rmrf('usr')], ['rm -r deep', rmrf('deep')], ['rmdir file', rmdir('top.txt')], ['unlink dir', rm('etc')],
    ['rm symlink', rm('hosts-link')], ['rm fifo', rm('fifo')], ['ls /', ls('')]]],
  ['whiteout then recreate', [['rm', rm('etc/hosts')], ['recreate', w('etc/hosts', 'again\n')], ['read', rd('etc/hosts')],
    ['rm -r dir', rmrf('etc')], ['mkdir again', mkdir('etc')], ['ls new etc', ls('etc')], ['file in it', w('etc/only', 'o')],
    ['ls', ls('etc')], ['rm gone dir then mkfile', (r) => { fs.rmSync(path.join(r, 'var'), { recursive: true }); fs.writeFileSync(path.join(r, 'var'), 'file now'); }],
    ['read var', rd('var')]]],
  ['opaque dirs', [['ls opq', ls('opq')], ['add to opq', w('opq/new', 'n')], ['rm kept', rm('opq/kept2')], ['ls opq after', ls('opq')],
    ['rmdir opq', rmdir('opq')], ['mkdir opq', mkdir('opq')], ['ls recreated', ls('opq')]]],
  ['rename files', [['mv lower file', mv('base.txt', 'base2.txt')], ['mv over lower', mv('etc/group', 'etc/passwd')],
    ['mv into other dir', mv('etc/hosts', 'var/hosts')], ['mv upper new', (r) => { fs.writeFileSync(path.join(r, 'n1'), '1'); fs.renameSync(path.join(r, 'n1'), path.join(r, 'n2')); }],
    ['noreplace existing', mv2('top.txt', 'base2.txt', RENAME_NOREPLACE)], ['noreplace new', mv2('top.txt', 'top2.txt', RENAME_NOREPLACE)],
    ['exchange', mv2('top2.txt', 'var/hosts', RENAME_EXCHANGE)], ['read x', rd('top2.txt')], ['read y', rd('var/hosts')],
    ['mv missing', mv('nope', 'x')], ['mv symlink', mv('hosts-link', 'hl2')], ['readlink', (r) => fs.readlinkSync(path.join(r, 'hl2'))],
    ['ls /', ls('')]]],
  ['rename directories', [['mv lower dir', mv('etc/conf.d', 'etc/conf2.d')], ['ls moved', ls('etc/conf2.d')], ['read in moved', rd('etc/conf2.d/a.conf')],
    ['mv there and back', (r) => { fs.renameSync(path.join(r, 'usr/lib'), path.join(r, 'usr/lib2')); fs.renameSync(path.join(r, 'usr/lib2'), path.join(r, 'usr/lib')); }],
    ['ls back', ls('usr/lib')], ['file back', (r) => { fs.renameSync(path.join(r, 'top.txt'), path.join(r, 't2')); fs.renameSync(path.join(r, 't2'), path.join(r, 'top.txt')); }],
    ['mv merged dir', mv('etc', 'etc2')], ['ls etc2', ls('etc2')], ['etc gone', exists('etc')], ['mkdir etc again', mkdir('etc')], ['ls etc new', ls('etc')],
    ['mv deep dir up', mv('deep/a/b', 'b')], ['ls b', ls('b/c/d/e')], ['write in moved', w('b/c/new', 'n')],
    ['mv dir over empty dir', (r) => { fs.mkdirSync(path.join(r, 'empty2')); fs.renameSync(path.join(r, 'var'), path.join(r, 'empty2')); }],
    ['ls empty2', ls('empty2/log')], ['mv dir over non-empty', mv('usr', 'etc2')], ['mv dir into itself', mv('b', 'b/c/x')],
    ['rmdir renamed', rmrf('etc2')], ['ls /', ls('')]]],
  ['hard links', [['nlink lower', st('hard1')], ['link lower', (r) => fs.linkSync(path.join(r, 'top.txt'), path.join(r, 'top-link'))],
    ['nlink after', st('top.txt')], ['same ino', (r) => fs.statSync(path.join(r, 'top.txt')).ino === fs.statSync(path.join(r, 'top-link')).ino],
    ['write via link', a('top-link', 'more\n')], ['read other', rd('top.txt')], ['rm one', rm('top.txt')], ['nlink left', st('top-link')],
    ['link new', (r) => { fs.writeFileSync(path.join(r, 'n'), 'n'); fs.linkSync(path.join(r, 'n'), path.join(r, 'n2')); return fs.statSync(path.join(r, 'n')).nlink; }],
    ['link onto existing', (r) => fs.linkSync(path.join(r, 'n'), path.join(r, 'n2'))]]],
  ['symlinks and specials', [['symlink', (r) => fs.symlinkSync('../x/y', path.join(r, 'sl'))], ['readlink', (r) => fs.readlinkSync(path.join(r, 'sl'))],
    ['readlink lower', (r) => fs.readlinkSync(path.join(r, 'host-etc'))], ['lstat up-link', st('up-link')],
    ['mkfifo', (r) => sysCall(native.mknodat(AT_FDCWD, path.join(r, 'f2'), 0o10600, 0))],
    ['mknod char', (r) => sysCall(native.mknodat(AT_FDCWD, path.join(r, 'cdev'), 0o20600, native.makedev(1, 3)))],
    ['chmod fifo', (r) => fs.chmodSync(path.join(r, 'fifo'), 0o600)], ['stat fifo', st('fifo')],
    ['lchown link', (r) => fs.lchownSync(path.join(r, 'hosts-link'), 7, 8)], ['stat link', st('hosts-link')]]],
  ['deep trees', [['mkdir -p', (r) => fs.mkdirSync(path.join(r, 'n/a/b/c/d/e/f/g/h'), { recursive: true })],
    ['files', (r) => { for (let i = 0; i < 50; i++) fs.writeFileSync(path.join(r, `n/a/b/c/d/f${i}`), String(i)); }],
    ['copy-up deep', a('deep/a/b/c/d/e/f.txt', 'more')], ['rm deep middle', rmrf('deep/a/b/c')], ['ls deep/a/b', ls('deep/a/b')],
    ['mv tree', mv('n/a', 'deep/a/b/c2')], ['ls moved', ls('deep/a/b/c2/b/c/d')]]],
  ['names of 255 and 256 bytes', longNameSteps()],
  ['rename flags, every combination', renameFlagSteps()],
];

describe('overlay mode against kernel overlayfs', () => {
  let base: string, lowers: string[];

  beforeAll(() => {
    requireFuse();
    base = tempDir('oracle');
    lowers = buildLowers(path.join(base, 'template'));
  });
  afterAll(() => unmountAll(base));

  test.each(scenarios)('%s', (name, steps) => {
    const dir = path.join(base, name.replace(/\W+/g, '-'));
    const k = prepareSide(dir, 'kernel', lowers);
    const l = prepareSide(dir, 'layerfs', lowers);
    const sides: Side[] = [k, l];
    const results: Record<string, unknown> = {};
    const views: Record<string, unknown> = {};
    const inoKept: Record<string, string[]> = {};
    try {
      for (const s of sides) {
        mountSide(s);
        const times = fixtureTimes(s.mnt);
        const before = new Map<string, number>();
        for (const [p] of times) before.set(p, fs.lstatSync(path.join(s.mnt, p)).ino);
        results[s.name] = runSteps(s.mnt, steps);
        views[s.name] = view(s.mnt, { fixtureTimes: times });
        inoKept[s.name] = [...before].filter(([p, ino]) => {
          try {
            return fs.lstatSync(path.join(s.mnt, p)).ino === ino;
          } catch {
            return false;
          }
        }).map(([p]) => p).sort();
        unmountSide(s);
      }
      expect(results.layerfs).toEqual(results.kernel);
      expect(views.layerfs).toEqual(views.kernel);
      expect(inoKept.layerfs).toEqual(inoKept.kernel);
      expect(upperView(l.upper)).toEqual(upperView(k.upper));
      // each upper under the other implementation shows the same tree
      for (const [s, impl] of [[k, 'layerfs'], [l, 'kernel']] as const) {
        const work2 = `${s.work}-x`;
        fs.mkdirSync(work2, { recursive: true });
        mountSide(s, s.upper, work2, impl);
        try {
          expect(view(s.mnt), `${s.name}'s upper mounted by ${impl}`).toEqual(stripTimes(views.kernel as Record<string, object>));
        } finally {
          unmountSide(s);
        }
      }
    } finally {
      for (const s of sides) unmountSide(s);
    }
  });
});

function stripTimes(v: Record<string, object>): Record<string, object> {
  return Object.fromEntries(Object.entries(v).map(([k, r]) => {
    const { mtimeFixture: _drop, ...rest } = r as { mtimeFixture?: boolean };
    return [k, rest];
  }));
}
