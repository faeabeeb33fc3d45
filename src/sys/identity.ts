// Who the daemon is, and running a creating call as the caller. As root, the JS thread keeps
// its capabilities across fsuid changes (SECBIT_NO_SETUID_FIXUP), so a file is created owned by
// the caller, group from a setgid parent included, as kernel overlayfs does it.
import { native } from './native';
import type { Caller } from '../fuse/filesystem';

export interface Identity {
  root: boolean;
}

export function identity(): Identity {
  const root = process.geteuid?.() === 0;
  if (root && native.keepCapsOnFsuid() < 0) {
    throw new Error('cannot keep capabilities across fsuid changes (prctl PR_SET_SECUREBITS)');
  }
  return { root };
}

export function asCaller<T>(id: Identity, caller: Caller, fn: () => T): T {
  if (!id.root || (caller.uid === 0 && caller.gid === 0)) return fn();
  native.setfsugid(caller.uid, caller.gid);
  try {
    return fn();
  } finally {
    native.setfsugid(0, 0);
  }
}
