// The fuse module's enable_uring parameter: the kernel offers FUSE over io_uring only while it
// is on. Tests that need it set it for their own run and put back what was there.
import * as fs from 'node:fs';

export const URING_PARAM = '/sys/module/fuse/parameters/enable_uring';

/** Runs fn with the parameter at on/off and restores the old value, also when fn throws. */
export async function withUringParam<T>(on: boolean, fn: () => Promise<T> | T): Promise<T> {
  const old = fs.readFileSync(URING_PARAM, 'utf8').trim();
  fs.writeFileSync(URING_PARAM, on ? 'Y' : 'N');
  try {
    return await fn();
  } finally {
    fs.writeFileSync(URING_PARAM, old);
  }
}
