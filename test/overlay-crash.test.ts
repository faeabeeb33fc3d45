// Crash tests: SIGKILL the daemon during large copy-ups and during renames of lower
// directories and files. Afterwards the lowers are byte-identical, and a fresh mount shows every
// object in its old or its new state, never a half-copied file or a directory in two places.
import { spawn, spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { daemonPid, isMounted, layerfs, mountOk, requireFuse, tempDir, unmountAll, waitFor } from './helpers/mount';

function sha(p: string): string {
  const r = spawnSync('sha256sum', [p], { encoding: 'utf8' });
  return r.stdout.split(' ')[0];
}

function treeSha(dir: string): string {
  const r = spawnSync('bash', ['-c', `cd ${dir} && find . -printf '%p %y %m %s %T@\\n' | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum`], { encoding: 'utf8', maxBuffer: 1 << 26 });
  return crypto.createHash('sha256').update(r.stdout).digest('hex');
}

function killDaemon(mnt: string): void {
  const pid = daemonPid(mnt);
  process.kill(pid, 'SIGKILL');
  waitFor(() => !fs.existsSync(`/proc/${pid}`));
  expect(layerfs(['umount', mnt]).status).toBe(0);
  expect(isMounted(mnt)).toBe(false);
}

describe('crash consistency', () => {
  let base: string, lower: string, up: string, work: string, mnt: string;
  const opts = (): string => `lowerdir=${lower},upperdir=${up},workdir=${work}`;

  beforeAll(() => {
    requireFuse();
    base = tempDir('crash');
    [lower, up, work, mnt] = ['lower', 'up', 'work', 'mnt'].map((d) => path.join(base, d));
    for (const d of [lower, up, work, mnt]) fs.mkdirSync(d);
    spawnSync('dd', ['if=/dev/urandom', `of=${lower}/big`, 'bs=1M', 'count=192', 'status=none']);
    for (let i = 0; i < 12; i++) {
      fs.mkdirSync(path.join(lower, `d${i}`));
      for (let j = 0; j < 20; j++) fs.writeFileSync(path.join(lower, `d${i}`, `f${j}`), `d${i}/f${j}\n`);
      fs.writeFileSync(path.join(lower, `file${i}`), `file${i}\n`);
    }
  });
  afterAll(() => unmountAll(base));

  test('SIGKILL during large copy-ups: lowers intact, the file old or new', async () => {
    const oldSha = sha(path.join(lower, 'big'));
    const lowerTree = treeSha(lower);
    const tail = 'appended after copy-up\n';
    const newSha = crypto.createHash('sha256').update(fs.readFileSync(path.join(lower, 'big'))).update(tail).digest('hex');
    for (const delay of [5, 60, 200]) {
      fs.rmSync(up, { recursive: true });
      fs.mkdirSync(up);
      mountOk(['-o', opts(), mnt]);
      const writer = spawn('sh', ['-c', `printf '${tail.replace('\n', '\\n')}' >> ${mnt}/big`], { stdio: 'ignore' });
      const written = new Promise((r) => writer.on('exit', r));  // it may be done before the kill
      await new Promise((r) => setTimeout(r, delay));
      killDaemon(mnt);
      await written;
      expect(treeSha(lower), `lowers after kill at ${delay} ms`).toBe(lowerTree);
      mountOk(['-o', opts(), mnt]);
      const now = sha(path.join(mnt, 'big'));
      expect([oldSha, newSha], `content after kill at ${delay} ms`).toContain(now);
      expect(fs.readdirSync(mnt).filter((n) => n.startsWith('#'))).toEqual([]);
      expect(fs.readdirSync(path.join(work, 'work'))).toEqual([]);
      expect(spawnSync('umount', [mnt]).status).toBe(0);
    }
  });

  test('SIGKILL during renames of lower directories and files: each object in exactly one place', async () => {
    const lowerTree = treeSha(lower);
    for (const delay of [30, 90, 200]) {
      fs.rmSync(up, { recursive: true });
      fs.mkdirSync(up);
      mountOk(['-o', opts(), mnt]);
      // keeps renaming dN <-> dN.moved and fileN <-> fileN.moved until the mount dies
      const script = `
        const fs = require('fs'); const m = process.argv[1];
        for (let round = 0; ; round++) for (let i = 0; i < 12; i++) {
          const [a, b] = round % 2 ? ['.moved', ''] : ['', '.moved'];
          try { fs.renameSync(m + '/d' + i + a, m + '/d' + i + b); fs.renameSync(m + '/file' + i + a, m + '/file' + i + b); }
          catch (e) { process.exit(0); }
        }`;
      const mover = spawn(process.execPath, ['-e', script, mnt], { stdio: 'ignore' });
      const moved = new Promise((r) => mover.on('exit', r));
      await new Promise((r) => setTimeout(r, delay));
      killDaemon(mnt);
      await moved;
      expect(treeSha(lower), `lowers after kill at ${delay} ms`).toBe(lowerTree);
      mountOk(['-o', opts(), mnt]);
      for (let i = 0; i < 12; i++) {
        const where = [`d${i}`, `d${i}.moved`].filter((n) => fs.existsSync(path.join(mnt, n)));
        expect(where, `d${i} after kill at ${delay} ms`).toHaveLength(1);
        const files = fs.readdirSync(path.join(mnt, where[0])).sort();
        expect(files).toHaveLength(20);
        expect(fs.readFileSync(path.join(mnt, where[0], 'f7'), 'utf8')).toBe(`d${i}/f7\n`);
        const fw = [`file${i}`, `file${i}.moved`].filter((n) => fs.existsSync(path.join(mnt, n)));
        expect(fw, `file${i} after kill at ${delay} ms`).toHaveLength(1);
        expect(fs.readFileSync(path.join(mnt, fw[0]), 'utf8')).toBe(`file${i}\n`);
      }
      expect(spawnSync('umount', [mnt]).status).toBe(0);
    }
  });
});
