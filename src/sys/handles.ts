// What the C handle table knows about a node, for the engines.
import { native } from './native';
import { AT_EMPTY_PATH } from './constants';
import type { Stat } from './stat';

/** Stats a node through one of its open handles (an unlinked file that is still open). */
export function statByHandle(nodeid: number, st: Stat): boolean {
  const hs = native.handlesOf(nodeid);
  return hs.length > 0 && native.fstatat(native.handleFd(hs[0]), '', AT_EMPTY_PATH, st) === 0;
}
