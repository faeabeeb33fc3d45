// A non-root test user, and commands run as it.
import { spawnSync } from 'node:child_process';

export const TEST_USER = 'layerfs-test';

/** The test user's uid (created without a home dir the first time). */
export function ensureUser(): number {
  if (spawnSync('id', ['-u', TEST_USER]).status !== 0) {
    const r = spawnSync('useradd', ['-M', '-N', '-s', '/usr/sbin/nologin', TEST_USER], { encoding: 'utf8' });
    if (r.status !== 0 && !/already exists/.test(r.stderr)) throw new Error(`useradd: ${r.stderr}`);
  }
  return Number(spawnSync('id', ['-u', TEST_USER], { encoding: 'utf8' }).stdout.trim());
}

/** Runs argv with real uid and gid `uid` and no supplementary groups. */
export function runAs(uid: number, argv: string[]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', ...argv], { encoding: 'utf8' });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}
