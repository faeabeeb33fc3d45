// Errors carried through the engine as errno numbers. FsError deliberately does not extend
// Error: no stack trace is captured, so a thrown ENOENT costs little.
import { E } from './constants';

export class FsError {
  constructor(readonly errno: number, readonly message = '') {}
}

/** Throws FsError for a negative syscall result; returns the result otherwise. */
export function check(r: number): number {
  if (r < 0) throw new FsError(-r);
  return r;
}

let names: Map<number, string> | null = null;

export function errnoName(errno: number): string {
  if (!names) {
    names = new Map();
    for (const [k, v] of Object.entries(E)) if (!names.has(v as number)) names.set(v as number, k);
  }
  return names.get(errno) ?? `errno ${errno}`;
}
