// Hard links in a lower layer stay hard links after one name is copied up, and nlink stays
// right: layerfs against kernel overlayfs with index=on (its hard-link index), merged views and
// every step compared; then the same upper remounted by layerfs shows the same.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { mountOk, requireFuse, tempDir, unmountAll } from './helpers/mount';
import { runSteps, view, type StepFn } from './helpers/overlay';

const st = (rel: string): StepFn => (r) => {
  const s = fs.statSync(path.join(r, rel));
  return { nlink: s.nlink, size: s.size };
};
const same = (a: string, b: string): StepFn => (r) => fs.statSync(path.join(r, a)).ino === fs.statSync(path.join(r, b)).ino;
const rd = (rel: string): StepFn => (r) => fs.readFileSync(path.join(r, rel), 'utf8');

const steps: [string, StepFn][] = [
  ['nlink before', st('a')], ['same ino a b', same('a', 'b')],
  ['append via a', (r) => fs.appendFileSync(path.join(r, 'a'), 'more\n')],
  ['read b', rd('b')], ['read d/c', rd('d/c')], ['nlink a', st('a')], ['nlink b', st('b')], ['same ino a b after', same('a', 'b')],
  ['ln a e', (r) => fs.linkSync(path.join(r, 'a'), path.join(r, 'e'))], ['nlink after ln', st('b')],
  ['rm b', (r) => fs.unlinkSync(path.join(r, 'b'))], ['nlink after rm', st('a')],
  ['mv d/c f', (r) => fs.renameSync(path.join(r, 'd/c'), path.join(r, 'f'))], ['read f', rd('f')], ['same ino a f', same('a', 'f')],
  ['write via f', (r) => fs.writeFileSync(path.join(r, 'f'), 'rewritten\n')], ['read a', rd('a')], ['read e', rd('e')],
  ['chmod via e', (r) => fs.chmodSync(path.join(r, 'e'), 0o600)], ['mode a', (r) => (fs.statSync(path.join(r, 'a')).mode & 0o777).toString(8)],
];

describe('lower hard links across copy-up', () => {
  let base: string;
  beforeAll(() => {
    requireFuse();
    base = tempDir('hardlink');
  });
  afterAll(() => unmountAll(base));

  test('stay linked, with nlink right (kernel overlayfs index=on as the oracle)', () => {
    const res: Record<string, unknown> = {}, views: Record<string, unknown> = {};
    const dirs: Record<string, string[]> = {};
    for (const side of ['kernel', 'layerfs']) {
      const [lower, up, work, mnt] = ['lower', 'up', 'work', 'mnt'].map((d) => path.join(base, side, d));
      for (const d of [lower, up, work, mnt]) fs.mkdirSync(d, { recursive: true });
      fs.mkdirSync(path.join(lower, 'd'));
      fs.writeFileSync(path.join(lower, 'a'), 'original\n');
      fs.linkSync(path.join(lower, 'a'), path.join(lower, 'b'));
      fs.linkSync(path.join(lower, 'a'), path.join(lower, 'd', 'c'));
      const opts = `lowerdir=${lower},upperdir=${up},workdir=${work}`;
      if (side === 'kernel') {
        const r = spawnSync('mount', ['-t', 'overlay', 'overlay', '-o', `${opts},redirect_dir=on,index=on`, mnt], { encoding: 'utf8' });
        expect(r.status, r.stderr).toBe(0);
      } else mountOk(['-o', opts, mnt]);
      try {
        res[side] = runSteps(mnt, steps);
        views[side] = view(mnt);
      } finally {
        spawnSync('umount', [mnt]);
      }
      dirs[side] = [lower, up, work, mnt];
      expect(fs.readFileSync(path.join(lower, 'b'), 'utf8')).toBe('original\n');   // the lower is untouched
    }
    expect(res.layerfs).toEqual(res.kernel);
    expect(views.layerfs).toEqual(views.kernel);
    // the same upper and work, mounted again: links and counts are still there
    const [lower, up, work, mnt] = dirs.layerfs;
    mountOk(['-o', `lowerdir=${lower},upperdir=${up},workdir=${work}`, mnt]);
    try {
      expect(view(mnt)).toEqual(views.layerfs);
      expect(fs.statSync(path.join(mnt, 'a')).ino).toBe(fs.statSync(path.join(mnt, 'e')).ino);
    } finally {
      spawnSync('umount', [mnt]);
    }
  });
});
