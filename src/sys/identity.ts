// Who the daemon is, and running a creating call as the caller. As root, the JS thread keeps
// its capabilities across fsuid changes (SECBIT_NO_SETUID_FIXUP), so a file is created owned by
// the caller, group from a setgid parent included, as kernel overlayfs does it.
import * as fs from 'node:fs';
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

/**
 * Root of the initial user namespace (the host's root): what FUSE passthrough needs — the
 * kernel checks CAP_SYS_ADMIN there, so uid 0 in a user namespace (rootless podman's mount
 * program) has none of it.
 */
export function hostRoot(): boolean {
  if (process.geteuid?.() !== 0) return false;
  try {
    return /^\s*0\s+0\s+4294967295\s*$/.test(fs.readFileSync('/proc/self/uid_map', 'utf8').trim());
  } catch {
    return false;
  }
}
