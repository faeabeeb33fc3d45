// Harness mode, first part: a throwaway copy-on-write view of a fixture — diff (A/C/D with
// sizes) of what a program changed, O(1) reset back to the fixture, checkpoint/restore, commit
// as an image-layer tar (read back as aufs branches over the fixture), the TypeScript API, and
// bad input. The fixture (BASE) is never modified; a symlink in it to /etc never exposes the host.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CLI, isMounted, layerfs, mountOk, requireFuse, tempDir, unmountAll } from './helpers/mount';
import { shown, treeHash } from './helpers/overlay';
import { run } from './helpers/union-ops';
import { Harness } from '../src/harness/api';

function write(base: string, rel: string, data: string): void {
  fs.mkdirSync(path.dirname(path.join(base, rel)), { recursive: true });
  fs.writeFileSync(path.join(base, rel), data);
}

function fixture(dir: string): string {
  write(dir, 'etc/a', 'aaaa'); write(dir, 'etc/b', 'bb'); write(dir, 'etc/sub/x', 'x');
  write(dir, 'var/lib/db', 'db'); write(dir, 'var/lib/old', 'o'); write(dir, 'keep', 'k');
  fs.symlinkSync('/etc', path.join(dir, 'hostetc'));
  return dir;
}

const harness = (...args: string[]): ReturnType<typeof layerfs> => layerfs(['harness', ...args]);
const ctl = (mnt: string, ...args: string[]): ReturnType<typeof layerfs> => harness('ctl', mnt, ...args);
const ok = (r: ReturnType<typeof layerfs>): string => {
  expect(r.status, r.stderr).toBe(0);
  return r.stdout;
};

describe('harness mode', () => {
  let base: string;
  const d = (n: string): string => path.join(base, n);

  beforeAll(() => {
    requireFuse();
    base = tempDir('harness');
  });
  afterAll(() => {
    unmountAll(base);
    fs.rmSync(base, { recursive: true, force: true });
  });

  function setup(tag: string, prep: (fix: string) => void = () => {}): { fix: string; mnt: string; state: string } {
    const fix = fixture(d(`${tag}/base`));
    prep(fix);
    const mnt = d(`${tag}/mnt`), state = d(`${tag}/state`);
    fs.mkdirSync(mnt, { recursive: true });
    ok(harness(fix, mnt, '-o', `state=${state}`));
    return { fix, mnt, state };
  }

  test('diff lists what a program changed (A/C/D with sizes); reset brings back the fixture; BASE never changes', () => {
    const { fix, mnt, state } = setup('diff');
    const before = treeHash(fix), fixView = shown(fix);
    try {
      expect(shown(mnt)).toEqual(fixView);
      expect(fs.readFileSync('/proc/self/mounts', 'utf8')).toContain(`harness:${state} ${mnt} fuse.layerfs `);
      const got = run(mnt, [
        { op: 'write', a: 'etc/new', data: 'hello' },
        { op: 'append', a: 'etc/a', data: '++' },
        { op: 'unlink', a: 'etc/b' },
        { op: 'rmrf', a: 'var/lib' },
        { op: 'mkdir', a: 'var/lib' },
        { op: 'write', a: 'var/lib/db', data: 'fresh' },
        { op: 'chmod', a: 'keep', mode: 0o600 },
        { op: 'mkdir', a: 'newdir' },
        { op: 'symlink', a: 'newdir/l', b: 'x' },
      ]);
      expect(got.every((r) => r === 'ok')).toBe(true);
      const diff = JSON.parse(ok(ctl(mnt, 'diff', '--json'))) as { kind: string; path: string; type: string; size: number }[];
      expect(diff.map((c) => `${c.kind} ${c.path} ${c.type} ${c.size}`)).toEqual([
        'C /etc dir 0', 'C /etc/a file 6', 'D /etc/b file 0', 'A /etc/new file 5', 'C /keep file 1',
        'A /newdir dir 0', 'A /newdir/l symlink 1', 'C /var dir 0', 'C /var/lib dir 0', 'C /var/lib/db file 5', 'D /var/lib/old file 0',
      ]);
      // the text form: KIND SIZE PATH, one line each
      expect(ok(ctl(mnt, 'diff')).split('\n')).toContain('A\t5\t/etc/new');
      // the fixture's symlink to /etc is shown as a link, never followed
      expect(fs.readlinkSync(path.join(mnt, 'hostetc'))).toBe('/etc');
      expect(treeHash(fix)).toBe(before);
      ok(ctl(mnt, 'reset'));
      expect(isMounted(mnt)).toBe(true);
      expect(shown(mnt)).toEqual(fixView);
      expect(JSON.parse(ok(ctl(mnt, 'diff', '--json')))).toEqual([]);
      // while a process uses the mount, reset is refused in one line and changes nothing
      write(mnt, 'etc/again', 'x');
      const fd = fs.openSync(path.join(mnt, 'etc/again'), 'r');
      try {
        const r = ctl(mnt, 'reset');
        expect(r.status).toBe(1);
        expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/is busy/)]);
        expect(fs.readFileSync(path.join(mnt, 'etc/again'), 'utf8')).toBe('x');
      } finally {
        fs.closeSync(fd);
      }
      ok(ctl(mnt, 'reset'));
      expect(fs.existsSync(path.join(mnt, 'etc/again'))).toBe(false);
      expect(treeHash(fix)).toBe(before);
    } finally {
      layerfs(['umount', mnt]);
    }
  });

  test('checkpoint and restore: the view as it was; hard links of the fixture copied up stay linked', () => {
    const { mnt } = setup('cp', (fix) => fs.linkSync(path.join(fix, 'etc/a'), path.join(fix, 'etc/a-link')));
    try {
      write(mnt, 'etc/one', '1');
      fs.appendFileSync(path.join(mnt, 'etc/a'), '!');   // a lower hard link copied up (the index)
      ok(ctl(mnt, 'checkpoint', 'c1'));
      const at = shown(mnt);
      write(mnt, 'etc/two', '2');
      fs.rmSync(path.join(mnt, 'var'), { recursive: true });
      fs.chmodSync(path.join(mnt, 'keep'), 0o600);
      // what changed since the checkpoint (not since BASE: etc/one and etc/a are not listed)
      const since = JSON.parse(ok(ctl(mnt, 'diff', '--since', 'c1', '--json'))) as { kind: string; path: string; type: string; size: number }[];
      expect(since.map((c) => `${c.kind} ${c.path} ${c.type} ${c.size}`)).toEqual(['C /etc dir 0', 'A /etc/two file 1', 'C /keep file 1', 'D /var dir 0']);
      expect(ctl(mnt, 'diff', '--since', 'nope').stderr.trim()).toBe('layerfs: no checkpoint nope (c1)');
      ok(ctl(mnt, 'restore', 'c1'));
      expect(shown(mnt)).toEqual(at);
      expect(fs.readFileSync(path.join(mnt, 'etc/a-link'), 'utf8')).toBe('aaaa!');
      fs.appendFileSync(path.join(mnt, 'etc/a-link'), '?');
      expect(fs.readFileSync(path.join(mnt, 'etc/a'), 'utf8')).toBe('aaaa!?');
      expect(JSON.parse(ok(ctl(mnt, 'checkpoints', '--json')))).toEqual(['c1']);
      // restore works more than once, and after a reset
      ok(ctl(mnt, 'reset'));
      ok(ctl(mnt, 'restore', 'c1'));
      expect(fs.readFileSync(path.join(mnt, 'etc/one'), 'utf8')).toBe('1');
    } finally {
      layerfs(['umount', mnt]);
    }
  });

  test('commit: the changes as an image-layer tar, which over the fixture gives the same view', () => {
    const { fix, mnt } = setup('commit');
    const tar = d('commit/layer.tar'), layer = d('commit/layer');
    try {
      write(mnt, 'etc/new', 'n');
      fs.unlinkSync(path.join(mnt, 'etc/b'));
      fs.rmSync(path.join(mnt, 'var/lib'), { recursive: true });
      fs.mkdirSync(path.join(mnt, 'var/lib'));
      ok(ctl(mnt, 'commit', tar));
      const names = spawnSync('tar', ['-tf', tar], { encoding: 'utf8' }).stdout.split('\n');
      expect(names).toEqual(expect.arrayContaining(['etc/.wh.b', 'var/lib/.wh..wh..opq', 'etc/new']));
      const want = shown(mnt);
      fs.mkdirSync(layer);
      ok(layerfs(['layer', 'unpack', '--oci', '-f', tar, layer]));
      const amnt = d('commit/amnt');
      fs.mkdirSync(amnt);
      mountOk(['-t', 'aufs', '-o', `br=${layer}=ro+wh:${fix}=ro`, amnt]);
      try {
        expect(shown(amnt)).toEqual(want);
      } finally {
        layerfs(['umount', amnt]);
      }
      // as an overlay upper: kernel overlayfs over the fixture shows the same view
      const up = d('commit/upper');
      ok(ctl(mnt, 'commit', '--upper', up));
      expect(ctl(mnt, 'commit', '--upper', up).stderr.trim()).toBe(`layerfs: ${up} exists (commit makes a new upper dir)`);
      const kmnt = d('commit/kmnt');
      fs.mkdirSync(kmnt);
      expect(spawnSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${up}:${fix}`, kmnt]).status).toBe(0);
      try {
        expect(shown(kmnt)).toEqual(want);
      } finally {
        spawnSync('umount', [kmnt]);
      }
    } finally {
      layerfs(['umount', mnt]);
    }
  });

  test('fault rules: an errno on the Nth matching call for COUNT calls, latency, a seeded probability; listed with their counts', () => {
    const { mnt } = setup('faults');
    try {
      ok(ctl(mnt, 'inject', 'write', '/etc/*', 'ENOSPC', '--nth', '2', '--count', '1'));
      expect(run(mnt, [1, 2, 3].map((i) => ({ op: 'write', a: `etc/w${i}`, data: 'x' })))).toEqual(['ok', 'ENOSPC', 'ok']);
      const rules = JSON.parse(ok(ctl(mnt, 'faults'))) as { op: string; seen: number; fired: number }[];
      expect(rules.map((r) => [r.op, r.seen, r.fired])).toEqual([['write', 3, 1]]);
      ok(ctl(mnt, 'clear'));
      ok(ctl(mnt, 'inject', 'open', '/keep', 'EIO'));
      expect(run(mnt, [{ op: 'read', a: 'keep' }, { op: 'read', a: 'etc/a' }])).toEqual(['EIO', 'aaaa']);
      ok(ctl(mnt, 'clear'));
      expect(run(mnt, [{ op: 'read', a: 'keep' }])).toEqual(['k']);
      // latency: the call waits, then runs
      ok(ctl(mnt, 'inject', 'read', '/keep', 'delay=400'));
      const t = Date.now();
      expect(run(mnt, [{ op: 'read', a: 'keep' }])).toEqual(['k']);
      expect(Date.now() - t).toBeGreaterThanOrEqual(400);
      ok(ctl(mnt, 'clear'));
      // a seeded probability gives the same failures in the same order each time
      const trial = (): string[] => {
        ok(ctl(mnt, 'inject', 'open', '/etc/a', 'EIO', '--prob', '0.5', '--seed', '7'));
        const r = run(mnt, Array.from({ length: 24 }, () => ({ op: 'read', a: 'etc/a' })));
        ok(ctl(mnt, 'clear'));
        return r;
      };
      const first = trial();
      expect(first).toEqual(trial());
      expect(first).toContain('EIO');
      expect(first).toContain('aaaa');
      // bad rules: one line each, nothing injected
      for (const [args, re] of [
        [['frob', '/x', 'EIO'], /unknown operation 'frob'/], [['write', 'x', 'EIO'], /bad path glob 'x'/],
        [['write', '/x', 'EFOO'], /unknown errno 'EFOO'/], [['write', '/x', 'EIO', '--prob', '2'], /bad prob: 2/],
      ] as [string[], RegExp][]) {
        const r = ctl(mnt, 'inject', ...args);
        expect(r.status, args.join(' ')).toBe(1);
        expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(re)]);
      }
      expect(JSON.parse(ok(ctl(mnt, 'faults')))).toEqual([]);
    } finally {
      layerfs(['umount', mnt]);
    }
  });

  test('trace: every operation a JSON line (time, pid, op, paths, result, duration), from a mark, filtered', () => {
    const { mnt } = setup('trace');
    try {
      ok(ctl(mnt, 'mark', 'm1'));
      const py = spawnSync('python3', ['-c', [
        'import os', `os.chdir("${mnt}")`, 'fd = os.open("etc/t", os.O_CREAT | os.O_WRONLY, 0o644)', 'os.write(fd, b"hello")',
        'os.fsync(fd)', 'os.close(fd)', 'os.unlink("etc/b")', 'os.rename("etc/a", "etc/a2")', 'print(os.getpid())',
      ].join('\n')], { encoding: 'utf8' });
      expect(py.status, py.stderr).toBe(0);
      const pid = Number(py.stdout.trim());
      const lines = ok(ctl(mnt, 'trace', '--since', 'm1')).trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      const of = (op: string): Record<string, unknown> | undefined => lines.find((l) => l.op === op && l.pid === pid);
      expect(of('create')).toMatchObject({ path: '/etc/t', result: 'ok' });
      expect(of('write')).toMatchObject({ path: '/etc/t', result: 'ok', bytes: 5, args: { offset: 0, size: 5 } });
      expect(of('fsync')).toMatchObject({ path: '/etc/t', result: 'ok' });
      expect(of('unlink')).toMatchObject({ path: '/etc/b', result: 'ok' });
      expect(of('rename')).toMatchObject({ path: '/etc/a', path2: '/etc/a2', result: 'ok' });
      for (const l of lines) {
        expect(typeof l.t).toBe('number');
        expect(l.ms as number).toBeGreaterThanOrEqual(0);
      }
      // in order: the create before its write, the write before the fsync
      const idx = (op: string): number => lines.findIndex((l) => l.op === op && l.pid === pid);
      expect(idx('create')).toBeLessThan(idx('write'));
      expect(idx('write')).toBeLessThan(idx('fsync'));
      const unl = ok(ctl(mnt, 'trace', '--since', 'm1', '--op', 'unlink')).trim().split('\n').map((l) => JSON.parse(l) as { op: string });
      expect(unl.map((l) => l.op)).toEqual(['unlink']);
      const failed = run(mnt, [{ op: 'unlink', a: 'etc/nope' }]);
      expect(failed).toEqual(['ENOENT']);
      expect(ok(ctl(mnt, 'trace', '--op', 'lookup', '--path', '/etc/nope'))).toMatch(/"result":"ok"|"result":"ENOENT"/);
      const bad = ctl(mnt, 'trace', '--since', 'never');
      expect(bad.status).toBe(1);
      expect(bad.stderr.trim()).toMatch(/no mark never in the trace$/);
    } finally {
      layerfs(['umount', mnt]);
    }
  });

  test('the TypeScript API: mount, diff, checkpoint, restore, reset, unmount (its state goes too)', async () => {
    const fix = fixture(d('api/base'));
    const mnt = d('api/mnt'), state = d('api/state');
    fs.mkdirSync(mnt, { recursive: true });
    const h = await Harness.mount(fix, mnt, { state });
    try {
      fs.writeFileSync(path.join(mnt, 'etc/new'), 'abc');
      expect(await h.diff()).toEqual([
        { kind: 'C', path: '/etc', type: 'dir', size: 0 }, { kind: 'A', path: '/etc/new', type: 'file', size: 3 },
      ]);
      await h.checkpoint('one');
      await h.reset();
      expect(fs.existsSync(path.join(mnt, 'etc/new'))).toBe(false);
      await h.restore('one');
      expect(fs.readFileSync(path.join(mnt, 'etc/new'), 'utf8')).toBe('abc');
      await expect(h.restore('nope')).rejects.toThrow(/no checkpoint nope \(one\)/);
      await h.inject({ op: 'unlink', path: '/etc/**', errno: 'EPERM' });
      expect(() => fs.unlinkSync(path.join(mnt, 'etc/b'))).toThrow(/EPERM/);
      expect((await h.faults()).map((r) => [r.op, r.fired])).toEqual([['unlink', 1]]);
      await h.clearFaults();
      await h.mark('x');
      fs.unlinkSync(path.join(mnt, 'etc/b'));
      expect((await h.trace({ since: 'x', op: 'unlink' })).map((l) => [l.path, l.result])).toEqual([['/etc/b', 'ok']]);
      await expect(h.inject({ op: 'nope', path: '/', errno: 'EIO' })).rejects.toThrow(/unknown operation 'nope'/);
    } finally {
      await h.unmount();
    }
    expect(isMounted(mnt)).toBe(false);
    expect(fs.existsSync(state)).toBe(false);
  });

  test('bad input: one line, exit 1, nothing mounted or made', () => {
    const fix = fixture(d('bad/base'));
    const mnt = d('bad/mnt');
    fs.mkdirSync(mnt, { recursive: true });
    const cases: [string[], RegExp][] = [
      [[d('bad/none'), mnt], /base .*none does not exist/],
      [[fix, path.join(fix, 'etc')], /mountpoint .* is inside base/],
      [[fix, mnt, '-o', 'size=1'], /unknown harness option 'size=1'/],
      [[fix, mnt, '-o', `state=${path.join(fix, 'st')}`], /must not contain each other/],
      [['ctl', mnt, 'reset'], /is not mounted/],
      [['ctl', base, 'reset'], /is not mounted|is not a layerfs harness mount/],
    ];
    for (const [args, re] of cases) {
      const before = treeHash(fix);
      const r = harness(...args);
      expect(r.status, args.join(' ')).toBe(1);
      expect(r.stderr.trim().split('\n'), args.join(' ')).toEqual([expect.stringMatching(re)]);
      expect(isMounted(mnt)).toBe(false);
      expect(treeHash(fix)).toBe(before);
    }
    // a mount of another kind is not a harness; unknown verbs and names
    const state = d('bad/state');
    ok(harness(fix, mnt, '-o', `state=${state}`));
    try {
      for (const [args, re] of [
        [['frob'], /unknown harness verb 'frob'/], [['checkpoint', '../x'], /bad checkpoint name/],
        [['restore', 'none'], /no checkpoint none \(none made\)/], [['checkpoint'], /usage: layerfs harness ctl MNT checkpoint NAME/],
      ] as [string[], RegExp][]) {
        const r = ctl(mnt, ...args);
        expect(r.status, args.join(' ')).toBe(1);
        expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(re)]);
      }
      const again = harness(fix, mnt, '-o', `state=${d('bad/state2')}`);
      expect(again.status).toBe(1);
      expect(again.stderr).toMatch(/already a mountpoint/);
    } finally {
      ok(ctl(mnt, 'umount'));
    }
    expect(fs.existsSync(state)).toBe(false);
    expect(spawnSync(process.execPath, [CLI, 'harness', 'ctl', mnt, 'diff']).status).toBe(1);
  });

  test('the socket protocol: one JSON command a line, each answered (errors too), from another language; the server ends with the harness', () => {
    const { mnt, state } = setup('socket');
    ok(ctl(mnt, 'umount'));
    const sock = d('socket/ctl.sock');
    ok(harness(d('socket/base'), mnt, '-o', `state=${state},socket=${sock}`));
    expect(fs.statSync(sock).isSocket()).toBe(true);
    const client = spawnSync('python3', ['-c', `
import json, os, socket, sys
s=socket.socket(socket.AF_UNIX); s.connect(${JSON.stringify(sock)})
f=s.makefile('rw')
def ask(line):
    f.write(line+'\\n'); f.flush()
    return json.loads(f.readline())
out=[]
out.append(ask(json.dumps({'id': 1, 'cmd': 'inject', 'rule': {'op': 'create', 'path': '/etc/*.db', 'errno': 'EROFS'}})))
try:
    open(${JSON.stringify(mnt)}+'/etc/x.db','w'); out.append('created')
except OSError as e: out.append(e.errno)
out.append(ask('{"id": 2, "cmd": "clear"}'))
with open(${JSON.stringify(mnt)}+'/etc/new','w') as w: w.write('abc')
out.append(ask('{"id": 3, "cmd": "diff"}'))
out.append(ask('{bad json'))
out.append(ask('{"id": 4, "cmd": "explode"}'))
out.append(ask('{"id": 5, "cmd": "inject", "rule": {"op": "write", "path": "/**", "errno": "EWHAT"}}'))
out.append(ask('{"id": 6, "cmd": "reset", "force": true}'))
out.append(ask('{"id": 7, "cmd": "crash", "keepLast": 1}'))
out.append(ask('{"id": 8, "cmd": "status"}'))
out.append(os.path.exists(${JSON.stringify(mnt)}+'/etc/new'))
out.append(ask('{"id": 9, "cmd": "umount"}'))
print(json.dumps(out))
`], { encoding: 'utf8', timeout: 60_000 });
    expect(client.stderr).toBe('');
    const r = JSON.parse(client.stdout) as unknown[];
    expect(r[0]).toEqual({ id: 1, ok: true });
    expect(r[1]).toBe(30);   // EROFS
    expect(r[2]).toEqual({ id: 2, ok: true });
    expect((r[3] as { result: { path: string; kind: string }[] }).result.map((c) => `${c.kind} ${c.path}`)).toEqual(['C /etc', 'A /etc/new']);
    expect(r[4]).toEqual({ id: null, ok: false, error: 'not a JSON command: {bad json' });
    expect(r[5]).toEqual({ id: 4, ok: false, error: expect.stringMatching(/^unknown command 'explode' \(reset, diff, /) });
    expect(r[6]).toEqual({ id: 5, ok: false, error: "unknown errno 'EWHAT'" });
    expect(r[7]).toEqual({ id: 6, ok: false, error: "unknown field 'force' of reset" });
    expect(r[8]).toEqual({ id: 7, ok: true });
    expect(r[9]).toMatchObject({ id: 8, ok: true, result: { crashed: false, pendingChanges: 0 } });
    expect(r[10]).toBe(false);   // the new file's name was never made durable: the crash took it
    expect(r[11]).toEqual({ id: 9, ok: true });
    expect(isMounted(mnt)).toBe(false);
    // the server saw its harness go, and went
    const gone = spawnSync('sh', ['-c', `for i in $(seq 50); do [ -e ${sock} ] || exit 0; sleep 0.1; done; exit 1`]);
    expect(gone.status).toBe(0);
  });

  test('reset of a 50,000-file fixture after a test changed 10,000 of them: the fixture is back whole (the time goes to make bench)', async () => {
    const fix = d('big/base'), mnt = d('big/mnt');
    for (let k = 0; k < 500; k++) {
      fs.mkdirSync(path.join(fix, `d${k}`), { recursive: true });
      for (let f = 0; f < 100; f++) fs.writeFileSync(path.join(fix, `d${k}`, `f${f}`), 'x');
    }
    fs.mkdirSync(mnt, { recursive: true });
    const before = treeHash(fix);
    const h = await Harness.mount(fix, mnt, { state: d('big/state') });
    try {
      const py = spawnSync('python3', ['-c', `
import os
m=${JSON.stringify(mnt)}
for k in range(100):
    for f in range(100): open(m+'/d%d/f%d' % (k, f), 'w').write('y')
`]);
      expect(py.status).toBe(0);
      expect((await h.diff()).filter((c) => c.kind === 'C' && c.type === 'file')).toHaveLength(10_000);
      const t = performance.now();
      await h.reset();
      const ms = performance.now() - t;
      process.stdout.write(`reset after 10,000 of 50,000 files changed: ${ms.toFixed(1)} ms\n`);
      expect(await h.diff()).toEqual([]);
      expect(fs.readFileSync(path.join(mnt, 'd42/f7'), 'utf8')).toBe('x');
      expect(treeHash(mnt)).toBe(before);
      expect(treeHash(fix)).toBe(before);
    } finally {
      await h.unmount();
    }
  }, 300_000);
});
