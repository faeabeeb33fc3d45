// Copies of an upper (checkpoints, restores, the durable view, commit --upper): `cp -a` keeps
// hard links between the trees given at once (an upper and its work dir's index), xattrs and
// whiteout devices; --reflink=auto shares the data where the host filesystem can.
import { spawnSync } from 'node:child_process';
import { UsageError } from '../mount/validate';

export function copyTree(srcs: string[], dest: string): void {
  const r = spawnSync('cp', ['-a', '--reflink=auto', ...srcs, dest], { encoding: 'utf8' });
  if (r.status !== 0) throw new UsageError(`copy failed: ${(r.stderr || '').trim().split('\n')[0]}`);
}
