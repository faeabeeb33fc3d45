// Leftover mounts break the next run: unmount anything the tests left below the temp prefix.
import { TMP_PREFIX, unmountAll } from './mount';

export default function setup(): () => void {
  unmountAll(TMP_PREFIX);
  return () => {
    if (!process.env.LAYERFS_KEEP) unmountAll(TMP_PREFIX);  // LAYERFS_KEEP=1: leave them to inspect
  };
}
