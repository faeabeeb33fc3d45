// Renamed directories across layer rotations: an upper that holds a directory rename (a
// redirect) becomes a lower of the next mount, and the renamed directory is renamed again —
// chains of depth 1 to 3. The live view after every step, after a remount, and each finished
// stack mounted by the other implementation are compared with kernel overlayfs.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { layerfs, requireFuse, tempDir, unmountAll } from './helpers/mount';
import { mountSide, unmountSide, upperView, view, type Side } from './helpers/overlay';

type Impl = Side['name'];
type Step = [string, (mnt: string) => void];

const mv = (a: string, b: string): Step => [`mv ${a} ${b}`, (m) => fs.renameSync(path.join(m, a), path.join(m, b))];
const write = (a: string): Step => [`write ${a}`, (m) => fs.writeFileSync(path.join(m, a), a)];
const mkdir = (a: string): Step => [`mkdir ${a}`, (m) => fs.mkdirSync(path.join(m, a))];

/** One mount per round, each round's upper a lower of the next. */
const CHAINS: Record<string, Step[][]> = {
  'depth 1': [[mv('a/d1', 'a/d1x')]],
  'depth 2': [[mv('a/d1', 'a/d1x')], [mv('a/d1x', 'a/e/d1')]],
  'depth 3': [[mv('a/d1', 'a/d1x'), write('a/d1x/u1')], [mv('a/d1x', 'a/e/d1'), write('a/e/d1/u2')],
    [mv('a/e/d1', 'top'), mv('a/e', 'a/e2'), write('top/sub/u3')]],
  'parent renamed, then child': [[mv('a', 'b')], [mv('b/d1', 'b/e/d1')], [mv('b/e', 'c'), mkdir('c/d1/new')]],
  'renamed twice in one mount, then again': [[mv('a/d1', 'x1'), mv('x1', 'a/e/x2')], [mv('a/e/x2', 'a/d1')], [mv('a/d1/sub', 'sub')]],
};

function buildBase(dir: string): void {
  const f = (rel: string): void => {
    fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    fs.writeFileSync(path.join(dir, rel), rel);
  };
  for (const rel of ['a/d1/f1', 'a/d1/f2', 'a/d1/sub/g', 'a/e/keep', 'a/other']) f(rel);
}

function runChain(base: string, impl: Impl, rounds: Step[][]): { views: unknown[]; layers: string[] } {
  const root = path.join(base, impl);
  const layers = [path.join(root, 'L0')];
  fs.mkdirSync(root, { recursive: true });
  buildBase(layers[0]);
  const views: unknown[] = [];
  rounds.forEach((steps, r) => {
    const s: Side = {
      name: impl, lowers: [...layers].reverse(), upper: path.join(root, `U${r + 1}`), work: path.join(root, `W${r + 1}`),
      mnt: path.join(root, 'mnt'),
    };
    for (const d of [s.upper, s.work, s.mnt]) fs.mkdirSync(d, { recursive: true });
    mountSide(s);
    try {
      views.push(view(s.mnt));
      for (const [name, fn] of steps) {
        fn(s.mnt);
        views.push({ after: name, view: view(s.mnt) });  // the live view, right after the step
      }
    } finally {
      unmountSide(s);
    }
    mountSide(s);
    try {
      views.push({ remounted: r + 1, view: view(s.mnt) });
    } finally {
      unmountSide(s);
    }
    layers.push(s.upper);
  });
  return { views, layers };
}

/** The finished stack, read-only, under the given implementation. */
function stackView(layers: string[], impl: Impl, mnt: string): unknown {
  const s: Side = { name: impl, lowers: [...layers].reverse(), upper: '', work: '', mnt };
  const r = mountRo(s);
  try {
    return view(mnt);
  } finally {
    r();
  }
}

function mountRo(s: Side): () => void {
  fs.mkdirSync(s.mnt, { recursive: true });
  // lowerdir only: mountSide's options without an upper
  const opts = `lowerdir=${s.lowers.join(':')}`;
  const r = s.name === 'kernel'
    ? spawnSync('mount', ['-t', 'overlay', 'overlay', '-o', `${opts},redirect_dir=on`, s.mnt], { encoding: 'utf8' })
    : layerfs(['mount', '-o', opts, s.mnt]);
  if (r.status !== 0) throw new Error(`${s.name} mount: ${r.stderr}`);
  return () => unmountSide(s);
}

describe('renamed directories across layer rotations (kernel overlayfs as oracle)', () => {
  let base: string;
  beforeAll(() => {
    requireFuse();
    base = tempDir('redirects');
  });
  afterAll(() => unmountAll(base));

  test.each(Object.entries(CHAINS))('%s', (name, rounds) => {
    const dir = path.join(base, name.replace(/\W+/g, '-'));
    const k = runChain(dir, 'kernel', rounds);
    const l = runChain(dir, 'layerfs', rounds);
    expect(l.views).toEqual(k.views);
    // the uppers hold the same redirects (relative within a dir, else the kernel's union path)
    for (let r = 1; r < k.layers.length; r++) expect(upperView(l.layers[r]), `U${r}`).toEqual(upperView(k.layers[r]));
    // each stack of uppers, read by the other implementation, shows the kernel's final view
    const final = k.views[k.views.length - 1] as { view: unknown };
    expect(stackView(l.layers, 'kernel', path.join(dir, 'x1')), "layerfs's layers under the kernel").toEqual(final.view);
    expect(stackView(k.layers, 'layerfs', path.join(dir, 'x2')), "the kernel's layers under layerfs").toEqual(final.view);
  });
});
