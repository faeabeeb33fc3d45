// Creation modes: an object gets the caller's mode masked by the caller's umask only — never
// the daemon's — and in a directory with a default ACL the ACL decides instead of the umask.
// Root, a non-root user and a root process that changed only its effective ids create every
// kind of object under umasks 0, 002, 022, 077, in plain dirs, dirs with a default ACL made
// through the mount, and lower dirs with a default ACL (copied up; over a whiteout too).
// Oracles: kernel overlayfs for overlay mode, the plain directory for passthrough mode.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { mountOk, requireFuse, tempDir, unmountAll } from './helpers/mount';
import { mountSide, prepareSide, unmountSide, type Side } from './helpers/overlay';
import { ensureUser, runAs } from './helpers/users';

const CREATOR = path.join(__dirname, 'helpers/creator.py');
const UMASKS = ['0', '002', '022', '077'];
type Who = 'root' | 'user' | 'euid';
const WHO: Who[] = ['root', 'user', 'euid'];
type AclKind = 'none' | 'acl' | 'lower-acl';

function sh(cmd: string): void {
  const r = spawnSync('bash', ['-c', cmd], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd}: ${r.stderr}`);
}

/** A case dir everyone may write; a default ACL on it for 'acl' (made where it stands). */
function caseDir(p: string, acl: boolean, uid: number): void {
  fs.mkdirSync(p);
  fs.chmodSync(p, 0o777);
  if (acl) sh(`setfacl -d -m u:${uid}:rwx,g::rwx,o::r-x,m::rwx '${p}'`);
}

function create(dir: string, who: Who, umask: string, uid: number): unknown {
  const argv = ['/usr/bin/python3', CREATOR, dir, umask];  // Debian's: a user can run it
  const r = who === 'user' ? runAs(uid, argv)
    : spawnSync(argv[0], who === 'euid' ? [...argv.slice(1), 'effective', String(uid), String(uid)] : argv.slice(1), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`creator as ${who}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

function cases(): [Who, string, AclKind][] {
  const out: [Who, string, AclKind][] = [];
  for (const w of WHO) for (const u of UMASKS) for (const a of ['none', 'acl', 'lower-acl'] as AclKind[]) out.push([w, u, a]);
  return out;
}
const caseName = (w: Who, u: string, a: AclKind): string => `${w}-${u}-${a}`;

/** Lower dirs for the 'lower-acl' cases: a default ACL and a file to re-create over. */
function lowerCaseDirs(lower: string, uid: number): void {
  for (const [w, u, a] of cases()) {
    if (a !== 'lower-acl') continue;
    const d = path.join(lower, caseName(w, u, a));
    caseDir(d, true, uid);
    fs.writeFileSync(path.join(d, 'old'), 'lower');
    fs.mkdirSync(path.join(d, 'olddir'));
  }
}

function runAll(root: string, uid: number): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [w, u, a] of cases()) {
    const d = path.join(root, caseName(w, u, a));
    if (a !== 'lower-acl') caseDir(d, a === 'acl', uid);
    out[caseName(w, u, a)] = create(d, w, u, uid);
  }
  // a dir made 0777 under umask 0 lets another user create and rename in it
  const shared = path.join(root, 'shared');
  sh(`umask 0; mkdir '${shared}'; umask 0; touch '${shared}/x'`);
  out.shared = runAs(uid, ['sh', '-c', `touch '${shared}/mine' && mv '${shared}/mine' '${shared}/moved' && echo ok`]).stdout.trim();
  return out;
}

describe('creation modes: the caller\'s mode and umask, default ACLs', () => {
  let base: string, uid: number;
  beforeAll(() => {
    requireFuse();
    uid = ensureUser();
    base = tempDir('modes');
    fs.chmodSync(base, 0o755);
  });
  afterAll(() => unmountAll(base));

  test('overlay mode matches kernel overlayfs', () => {
    const template = path.join(base, 'template', 'L1');
    fs.mkdirSync(template, { recursive: true });
    lowerCaseDirs(template, uid);
    const sides: Side[] = (['kernel', 'layerfs'] as const).map((n) => prepareSide(base, n, [template]));
    const got: Record<string, Record<string, unknown>> = {};
    for (const s of sides) {
      fs.chmodSync(path.dirname(s.mnt), 0o755);
      mountSide(s);
      try {
        got[s.name] = runAll(s.mnt, uid);
      } finally {
        unmountSide(s);
      }
    }
    // the oracle saw what it should: 0666 under umask 0; under umask 077 with the default ACL
    // (g::rwx, m::rwx, o::r-x) the ACL decides, not the umask: 0664, not 0600
    const f666 = (c: string): string => (got.kernel[c] as Record<string, { mode: string }>).f666.mode;
    expect(f666('root-0-none')).toBe('0o100666');
    expect(f666('user-077-none')).toBe('0o100600');
    expect(f666('user-077-acl')).toBe('0o100664');
    expect(got.kernel.shared).toBe('ok');
    expect(got.layerfs).toEqual(got.kernel);
  });

  test('passthrough mode matches the plain directory', () => {
    const plain = path.join(base, 'plain'), back = path.join(base, 'back'), mnt = path.join(base, 'ptmnt');
    for (const d of [plain, back, mnt]) fs.mkdirSync(d, { mode: 0o755 });
    lowerCaseDirs(plain, uid);
    lowerCaseDirs(back, uid);
    const want = runAll(plain, uid);
    mountOk(['--passthrough', back, mnt]);
    try {
      expect(runAll(mnt, uid)).toEqual(want);
    } finally {
      spawnSync('umount', [mnt]);
    }
  });
});
