// Many processes churning one tree (the "dirstress" load): five processes, a thousand entries
// each — files, dirs, symlinks, char devices 0/0 — created, renamed, removed and re-created.
// One process per dir: each process's failures depend only on the seed, so layerfs must log
// exactly what kernel overlayfs logs. Five processes in one dir: only the errnos a filesystem
// gives under such races, and afterwards the live view equals a fresh mount's.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { requireFuse, tempDir, unmountAll } from './helpers/mount';
import { mountSide, prepareSide, unmountSide, view, type Side } from './helpers/overlay';

const SCRIPT = path.join(__dirname, 'helpers/dirstress.py');

function dirstress(root: string, nfiles: number, seed: number, perDir: number): Record<string, string[]> {
  const r = spawnSync('/usr/bin/python3', [SCRIPT, root, '5', String(nfiles), String(seed), String(perDir)], { encoding: 'utf8', timeout: 300_000 });
  if (r.status !== 0) throw new Error(`dirstress: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

const errnos = (log: Record<string, string[]>): Set<string> => new Set(Object.values(log).flat().map((l) => l.split(': ').pop()!));

describe('dirstress: concurrent churn of one tree (kernel overlayfs as oracle)', () => {
  let base: string, lower: string;
  beforeAll(() => {
    requireFuse();
    base = tempDir('dirstress');
    lower = path.join(base, 'template', 'L1');
    // a lower layer that already holds a stress dir: merged dirs, whiteouts, copy-ups
    fs.mkdirSync(path.join(lower, 'stressdir', 'stress.0', 'XXXXXXXXXXXX.1'), { recursive: true });
    fs.writeFileSync(path.join(lower, 'stressdir', 'stress.0', 'XXXXXXXXXXXX.0'), 'lower');
    fs.writeFileSync(path.join(lower, 'stressdir', 'stress.1'), 'a file where a dir will be wanted');
  });
  afterAll(() => unmountAll(base));

  function onBoth(tag: string, fn: (s: Side) => unknown): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const name of ['kernel', 'layerfs'] as const) {
      const s = prepareSide(path.join(base, tag), name, [lower]);
      mountSide(s);
      try {
        out[name] = fn(s);
      } finally {
        unmountSide(s);
      }
    }
    return out;
  }

  test('one process per dir: the same failures as the kernel, call for call', () => {
    const got = onBoth('own', (s) => dirstress(s.mnt, 1000, 20261130, 1));
    const k = got.kernel as Record<string, string[]>;
    expect(Object.keys(k)).toHaveLength(5);
    expect(errnos(k).has('EPERM')).toBe(true);  // mknod of a 0/0 char device is refused
    expect(got.layerfs).toEqual(k);
  });

  test('five processes in one dir: only race errnos, and a consistent tree afterwards', () => {
    const allowed = new Set(['EEXIST', 'EPERM', 'ENOENT', 'ENOTDIR', 'EISDIR', 'ELOOP', 'ENOTEMPTY', 'EINVAL']);
    const got = onBoth('shared', (s) => {
      const log = dirstress(s.mnt, 300, 7, 5);
      const live = view(s.mnt);
      unmountSide(s);
      mountSide(s);
      return { errnos: [...errnos(log)].sort(), consistent: JSON.stringify(view(s.mnt)) === JSON.stringify(live) };
    }) as Record<string, { errnos: string[]; consistent: boolean }>;
    for (const side of ['kernel', 'layerfs']) {
      expect(got[side].errnos.filter((e) => !allowed.has(e)), side).toEqual([]);
      expect(got[side].consistent, `${side}: live view equals a fresh mount's`).toBe(true);
    }
  });
});
