// `layerfs umount`: as root umount2(2) directly (a dead daemon's mount too), otherwise fusermount3.
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { native } from '../sys/native';
import { E, MNT_DETACH } from '../sys/constants';
import { mountPoints, UsageError } from './validate';

export function unmount(target: string, lazy: boolean): void {
  const mnt = path.resolve(target);
  if (!mountPoints().has(mnt)) throw new UsageError(`${mnt} is not mounted`);
  if (process.geteuid?.() === 0) {
    const r = native.umount2(mnt, lazy ? MNT_DETACH : 0);
    if (r === -E.EBUSY) throw new UsageError(`${mnt} is busy (files open or a process inside); 'layerfs umount --lazy' detaches it now`);
    if (r < 0) throw new UsageError(`cannot unmount ${mnt}: errno ${-r}`);
    return;
  }
  const r = spawnSync('fusermount3', ['-u', ...(lazy ? ['-z'] : []), mnt], { encoding: 'utf8' });
  if (r.error) throw new UsageError(`cannot run fusermount3: ${r.error.message}`);
  if (r.status !== 0) throw new UsageError(`cannot unmount ${mnt}: ${r.stderr.trim().split('\n')[0]}`);
}
