// The Node CLI's way to the resident service: background overlay mounts (and `layerfs ps`) go
// through the C mount helper, exactly as the installed commands do. LAYERFS_SERVICE=off keeps
// the older shape: one daemon process per mount.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

// beside dist/src/service in a build; two levels up when run from src (the tests' TypeScript)
export const HELPER = [3, 2].map((up) => path.resolve(__dirname, '../'.repeat(up), 'native/build/Release/layerfs-helper'))
  .find((p) => fs.existsSync(p)) ?? path.resolve(__dirname, '../../../native/build/Release/layerfs-helper');

export function serviceWanted(): boolean {
  const v = process.env.LAYERFS_SERVICE;
  return !(v === 'off' || v === '0' || v === 'no');
}

/** Runs the helper as PROG with args (its stdio is ours) and exits with its status. */
export function viaHelper(prog: 'layerfs' | 'layerfs-overlay' | 'layerfs-aufs', args: string[]): never {
  if (!fs.existsSync(HELPER)) {
    process.stderr.write(`${prog}: ${HELPER} is missing: run 'make build'\n`);
    process.exit(1);
  }
  const r = spawnSync(HELPER, args, { stdio: 'inherit', argv0: prog });
  if (r.error) {
    process.stderr.write(`${prog}: cannot run ${HELPER}: ${r.error.message}\n`);
    process.exit(1);
  }
  process.exit(r.status ?? 1);
}
