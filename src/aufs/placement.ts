// aufs's policies for where new objects (create=) and copy-ups (cpup=) go among several
// writable branches, as the aufs manual defines them (design/05wbr_policy.txt). Branch indexes
// are the union's layer indexes (0 = the top branch). The engine then keeps the choice where the
// object shows (placeNew in src/union/create.ts): not below the parent's merge, nor below a
// whiteout of the name or an opaque dir, else on the nearest writable branch above.
import { native } from '../sys/native';
import { STATFS_LEN } from '../sys/stat';
import type { Layer } from '../union/layers';
import type { Placement } from '../union/core';

export type CreateKind = 'tdp' | 'rr' | 'mfs' | 'tdmfs' | 'pmfs' | 'mfsrr' | 'pmfsrr';
export type CpupKind = 'tdp' | 'bup' | 'bu';
export interface CreatePolicy { kind: CreateKind; low: number; secs: number }

const LONG_NAMES: Record<string, CreateKind | CpupKind> = {
  'top-down-parent': 'tdp', 'round-robin': 'rr', 'most-free-space': 'mfs', 'top-down-most-free-space': 'tdmfs',
  'parent-most-free-space': 'pmfs', 'most-free-space-round-robin': 'mfsrr', 'parent-most-free-space-round-robin': 'pmfsrr',
  'bottom-up-parent': 'bup', 'bottom-up': 'bu',
};

/** create=KIND[:LOW][:SECS] as the manual spells it (LOW in bytes; mfs/pmfs take SECS only); null if bad. */
export function parseCreate(v: string): CreatePolicy | null {
  const [name, ...args] = v.split(':');
  const kind = (LONG_NAMES[name] ?? name) as CreateKind;
  const nums = args.map((a) => (/^\d+$/.test(a) ? Number(a) : NaN));
  if (nums.some((x) => Number.isNaN(x))) return null;
  switch (kind) {
    case 'tdp': case 'rr':
      return nums.length === 0 ? { kind, low: 0, secs: 30 } : null;
    case 'mfs': case 'pmfs':
      return nums.length <= 1 ? { kind, low: 0, secs: nums[0] ?? 30 } : null;
    case 'tdmfs': case 'mfsrr': case 'pmfsrr':
      return nums.length >= 1 && nums.length <= 2 ? { kind, low: nums[0], secs: nums[1] ?? 30 } : null;
    default:
      return null;
  }
}

export function parseCpup(v: string): CpupKind | null {
  const k = LONG_NAMES[v] ?? v;
  return k === 'tdp' || k === 'bup' || k === 'bu' ? k : null;
}

/** Free bytes of a branch's filesystem (f_bavail: what an unprivileged writer may still use). */
export function freeBytes(l: Layer): number {
  const st = new Float64Array(STATFS_LEN);
  return native.fstatvfs(l.fd, st) < 0 ? 0 : st[4] * st[1];
}

export function aufsPlacement(layers: Layer[], create: CreatePolicy, cpup: CpupKind, free = freeBytes): Placement {
  const writable = (): number[] => layers.flatMap((l, i) => (l.writable ? [i] : []));
  // free space is read at most once per SECS per branch (aufs's "memorizes it for SECS")
  const spaces = new WeakMap<Layer, { until: number; bytes: number }>();
  const space = (i: number): number => {
    const l = layers[i], now = Date.now();
    let s = spaces.get(l);
    if (!s || s.until <= now) spaces.set(l, (s = { until: now + create.secs * 1000, bytes: free(l) }));
    return s.bytes;
  };
  const most = (among: number[]): number => among.reduce((best, i) => (best < 0 || space(i) > space(best) ? i : best), -1);
  let next = 0;
  const roundRobin = (): number => {
    const w = writable();
    return w.length ? w[next++ % w.length] : -1;
  };
  /** The nearest writable branch above (or at) u: aufs's bottom-up. */
  const bottomUp = (u: number): number => {
    for (let i = Math.min(u, layers.length - 1); i >= 0; i--) if (layers[i].writable) return i;
    return -1;
  };
  // the highest writable branch holding the parent; without one, bottom-up from the parent's top
  const tdp = (has: number[]): number => has.find((i) => layers[i].writable) ?? bottomUp(has[0] ?? 0);
  const mfs = (): number => most(writable());
  const mfsrr = (): number => {
    const t = mfs();
    return t >= 0 && space(t) < create.low ? roundRobin() : t;
  };
  const pmfs = (has: number[]): number => {
    const w = has.filter((i) => layers[i].writable);
    return w.length ? most(w) : tdp(has);
  };
  return {
    create(has, isDir) {
      switch (create.kind) {
        case 'tdp': return tdp(has);
        // new directories all go to one branch (the manual's exception for mkdir)
        case 'rr': return isDir ? tdp(has) : roundRobin();
        case 'mfs': return mfs();
        case 'tdmfs': return writable().find((i) => space(i) >= create.low) ?? mfs();
        case 'mfsrr': return mfsrr();
        case 'pmfs': return pmfs(has);
        case 'pmfsrr': {
          const t = pmfs(has);
          return t >= 0 && space(t) < create.low ? mfsrr() : t;
        }
      }
    },
    copyUp(has, from) {
      const above = has.filter((i) => i < from && layers[i].writable);
      if (cpup === 'tdp' && above.length) return above[0];
      if (cpup === 'bup' && above.length) return above[above.length - 1];
      return bottomUp(from - 1);
    },
  };
}
