// A directory (or file) held open or used as a cwd while it is removed or replaced by rename:
// fstat, stat(".") and chdir("..") give what the kernel gives, never ESTALE. Kernel overlayfs
// is the oracle for overlay mode, the plain directory for passthrough mode.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { mountOk, requireFuse, tempDir, unmountAll } from './helpers/mount';
import { buildLowers, mountSide, prepareSide, unmountSide } from './helpers/overlay';

const SCRIPT = path.join(__dirname, 'helpers/held-open.py');

function run(dir: string): Record<string, unknown> {
  const r = spawnSync('/usr/bin/python3', [SCRIPT, dir], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`held-open.py: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

describe('objects removed or replaced while held open', () => {
  let base: string;
  beforeAll(() => {
    requireFuse();
    base = tempDir('held');
  });
  afterAll(() => unmountAll(base));

  test('overlay mode matches kernel overlayfs', () => {
    const lowers = buildLowers(path.join(base, 'template'));
    const got: Record<string, Record<string, unknown>> = {};
    for (const name of ['kernel', 'layerfs'] as const) {
      const s = prepareSide(base, name, lowers);
      mountSide(s);
      try {
        got[name] = run(s.mnt);
      } finally {
        unmountSide(s);
      }
    }
    expect(Object.keys(got.kernel)).toHaveLength(7);
    expect(got.layerfs).toEqual(got.kernel);
  });

  test('passthrough mode matches the plain directory', () => {
    const plain = path.join(base, 'plain'), back = path.join(base, 'back'), mnt = path.join(base, 'mnt');
    for (const d of [plain, back, mnt]) fs.mkdirSync(d);
    const want = run(plain);
    mountOk(['--passthrough', back, mnt]);
    try {
      expect(run(mnt)).toEqual(want);
    } finally {
      spawnSync('umount', [mnt]);
    }
  });
});
