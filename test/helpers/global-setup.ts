// Leftover mounts break the next run: unmount anything the tests left below the temp prefix; at
// the end, remove the temp dirs too (thin pools leave hundreds of MiB each).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TMP_PREFIX, mountPointsUnder, unmountAll } from './mount';

function removeTempDirs(): void {
  const dir = path.dirname(TMP_PREFIX), base = path.basename(TMP_PREFIX);
  for (const n of fs.readdirSync(dir)) {
    const p = path.join(dir, n);
    // never into a dir something is still mounted below
    if (n.startsWith(base) && mountPointsUnder(p).length === 0) fs.rmSync(p, { recursive: true, force: true });
  }
}

export default function setup(): () => void {
  unmountAll(TMP_PREFIX);
  return () => {
    if (process.env.LAYERFS_KEEP) return;   // LAYERFS_KEEP=1: leave them to inspect
    unmountAll(TMP_PREFIX);
    removeTempDirs();
  };
}
