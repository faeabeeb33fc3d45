// Access times under the mount's atime policy: reading a file, executing it and listing a
// directory move atime exactly where kernel overlayfs moves it (upper objects, as the mount's
// strictatime/relatime/noatime/nodiratime says; lower objects never) — and never because the
// daemon itself read something. Passthrough mode is compared with a bind mount of a plain dir
// carrying the same flags.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { layerfs, requireFuse, tempDir, unmountAll } from './helpers/mount';
import { prepareSide, unmountSide, KERNEL_OPTS, type Side } from './helpers/overlay';

const POLICIES = ['', 'relatime', 'strictatime', 'noatime', 'nodiratime'];
const AGES = { old: [3 * 86400, 4 * 86400], recent: [60, 3600] } as const;  // [atime, mtime] seconds ago
type Kind = 'file' | 'exec' | 'dir';

function setTimes(p: string, age: keyof typeof AGES): void {
  const now = Date.now() / 1000;
  fs.utimesSync(p, now - AGES[age][0], now - AGES[age][1]);
}

function access(p: string, kind: Kind): void {
  if (kind === 'dir') fs.readdirSync(p);
  else if (kind === 'exec') {
    const r = spawnSync(p, [], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`exec ${p}: ${r.error ?? r.stderr}`);
  } else fs.readFileSync(p);
}

const atimeNs = (p: string): bigint => fs.lstatSync(p, { bigint: true }).atimeNs;

/** Objects made below root by `make` (name -> kind), aged, accessed: which atimes moved. */
function moved(root: string, objects: Record<string, Kind>): Record<string, boolean> {
  const before: Record<string, bigint> = {};
  for (const n of Object.keys(objects)) before[n] = atimeNs(path.join(root, n));
  for (const [n, k] of Object.entries(objects)) access(path.join(root, n), k);
  return Object.fromEntries(Object.keys(objects).map((n) => [n, atimeNs(path.join(root, n)) !== before[n]]));
}

function makeFile(p: string, kind: Kind): void {
  if (kind === 'dir') {
    fs.mkdirSync(p);
    fs.writeFileSync(path.join(p, 'x'), 'x');
  } else fs.writeFileSync(p, kind === 'exec' ? '#!/bin/sh\nexit 0\n' : 'data', { mode: kind === 'exec' ? 0o755 : 0o644 });
}

const KINDS: Kind[] = ['file', 'exec', 'dir'];

describe('atime follows the mount\'s policy', () => {
  let base: string, lower: string;
  beforeAll(() => {
    requireFuse();
    base = tempDir('atime');
    lower = path.join(base, 'template', 'L1');
    fs.mkdirSync(lower, { recursive: true });
    for (const k of KINDS) for (const w of ['lower', 'copied', 'merged']) {
      if (w === 'merged' && k !== 'dir') continue;
      for (const age of Object.keys(AGES)) makeFile(path.join(lower, `${w}-${k}-${age}`), k);
    }
  });
  afterAll(() => unmountAll(base));

  test.each(POLICIES)('overlay mode, mount option "%s", matches kernel overlayfs', (policy) => {
    const got: Record<string, Record<string, boolean>> = {};
    // lower objects are aged in the layer before it is copied for each side (cp -a keeps the
    // times): aged while mounted, the union's cached attributes would race with its inotify
    for (const n of fs.readdirSync(lower)) if (n.startsWith('lower-')) setTimes(path.join(lower, n), n.endsWith('old') ? 'old' : 'recent');
    for (const name of ['kernel', 'layerfs'] as const) {
      const s: Side = prepareSide(path.join(base, `ov-${policy || 'default'}`), name, [lower]);
      const flags = policy ? `,${policy}` : '';
      const opts = `lowerdir=${s.lowers[0]},upperdir=${s.upper},workdir=${s.work}${flags}`;
      const r = name === 'kernel' ? spawnSync('mount', ['-t', 'overlay', 'overlay', '-o', `${opts},${KERNEL_OPTS}`, s.mnt], { encoding: 'utf8' })
        : layerfs(['mount', '-o', opts, s.mnt]);
      if (r.status !== 0) throw new Error(`${name} mount: ${r.stderr}`);
      try {
        const objects: Record<string, Kind> = {};
        for (const k of KINDS) for (const age of Object.keys(AGES) as (keyof typeof AGES)[]) {
          const up = `upper-${k}-${age}`;
          makeFile(path.join(s.mnt, up), k);
          if (k !== 'dir') fs.chmodSync(path.join(s.mnt, `copied-${k}-${age}`), k === 'exec' ? 0o775 : 0o664);  // copy-up
          else fs.writeFileSync(path.join(s.mnt, `merged-dir-${age}`, 'new'), 'n');
          for (const w of ['upper', 'copied', 'merged', 'lower']) {
            const n = `${w}-${k}-${age}`;
            if (!fs.existsSync(path.join(s.mnt, n))) continue;
            if (w !== 'lower') setTimes(path.join(s.mnt, n), age);
            objects[n] = k;
          }
        }
        got[name] = moved(s.mnt, objects);
      } finally {
        unmountSide(s);
      }
    }
    if (policy !== 'noatime') expect(Object.values(got.kernel)).toContain(true);  // the oracle did move some
    expect(got.layerfs).toEqual(got.kernel);
  });

  test.each(POLICIES)('passthrough mode, mount option "%s", matches a bind mount with it', (policy) => {
    const dir = path.join(base, `pt-${policy || 'default'}`);
    const got: Record<string, Record<string, boolean>> = {};
    for (const name of ['bind', 'layerfs']) {
      const back = path.join(dir, `${name}-back`), mnt = path.join(dir, `${name}-mnt`);
      fs.mkdirSync(back, { recursive: true });
      fs.mkdirSync(mnt, { recursive: true });
      const objects: Record<string, Kind> = {};
      for (const k of KINDS) for (const age of Object.keys(AGES) as (keyof typeof AGES)[]) {
        makeFile(path.join(back, `${k}-${age}`), k);
        objects[`${k}-${age}`] = k;
      }
      let r;
      if (name === 'bind') {
        r = spawnSync('mount', ['--bind', back, mnt], { encoding: 'utf8' });
        if (r.status === 0 && policy) r = spawnSync('mount', ['-o', `remount,bind,${policy}`, mnt], { encoding: 'utf8' });
      } else r = layerfs(['mount', '--passthrough', ...(policy ? ['-o', policy] : []), back, mnt]);
      if (r.status !== 0) throw new Error(`${name} mount: ${r.stderr}`);
      try {
        for (const [n] of Object.entries(objects)) setTimes(path.join(back, n), n.endsWith('old') ? 'old' : 'recent');
        got[name] = moved(mnt, objects);
      } finally {
        spawnSync('umount', [mnt]);
      }
    }
    expect(got.layerfs).toEqual(got.bind);
  });
});
