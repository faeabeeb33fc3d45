// Merged listings of lower directories, shared by every union of the process: N mounts of one
// image listing one directory merge its lower layers once. A listing is keyed by the lower dirs
// it merges (each layer's cache key, the path, whether it may hold xattr whiteouts), holds what
// survives the lowers' own whiteouts, and goes when a watched lower dir changes or its time is up.
import { LRUCache } from 'lru-cache';
import { native } from '../sys/native';
import { FsError } from '../sys/errors';
import { AT_SYMLINK_NOFOLLOW, S_IFMT } from '../sys/constants';
import { ST_MODE, newStat } from '../sys/stat';
import { WH_OPQ, WH_PREFIX, isCharWhiteout, isXattrWhiteout } from './whiteout';

export interface LowerSource { key: string; fd: number; xwh: boolean }

/** One merged lower listing: entry i came from sources[from[i]]. */
export interface LowerList {
  names: string[];
  types: number[];
  inos: number[];     // st_ino in its layer (d_ino)
  from: number[];
  until: number;
}

const byDir = new Map<string, Set<string>>();   // one lower dir -> the listings that merged it
const cache = new LRUCache<string, LowerList>({
  max: 1024,
  dispose: (_v, key) => {
    for (const d of key.split('\n')) {
      const set = byDir.get(d);
      set?.delete(key);
      if (set && !set.size) byDir.delete(d);
    }
  },
});

const dirKey = (s: LowerSource): string => `${s.key}\0${s.xwh ? 1 : 0}`;

/** The lowers of one directory merged top-down; cached for ttlMs (and until a change is seen). */
export function lowerList(sources: LowerSource[], ttlMs: number): LowerList {
  const key = sources.map(dirKey).join('\n');
  const hit = cache.get(key);
  if (hit && hit.until > Date.now()) return hit;
  const out: LowerList = { names: [], types: [], inos: [], from: [], until: Date.now() + ttlMs };
  const seen = new Set<string>();
  const st = newStat();
  sources.forEach((src, si) => {
    const list = native.readdir(src.fd);
    if (typeof list === 'number') throw new FsError(-list);
    const { names, inos, types } = list;
    for (let i = 0; i < names.length; i++) {
      const name = names[i];
      if (name === '.' || name === '..' || seen.has(name)) continue;
      if (name.startsWith(WH_PREFIX)) {
        if (name !== WH_OPQ && !name.startsWith('.wh..wh.')) seen.add(name.slice(WH_PREFIX.length));
        continue;
      }
      seen.add(name);
      let type = types[i];
      if (type === 2 /* DT_CHR */ || type === 0 /* DT_UNKNOWN */ || (src.xwh && type === 8)) {
        if (native.fstatat(src.fd, name, AT_SYMLINK_NOFOLLOW, st) !== 0) continue;
        if (isCharWhiteout(st)) continue;
        if (src.xwh && isXattrWhiteout(src.fd, name, st)) continue;
        type = (st[ST_MODE] & S_IFMT) >> 12;
      }
      out.names.push(name);
      out.types.push(type);
      out.inos.push(inos[i]);
      out.from.push(si);
    }
  });
  cache.set(key, out);
  for (const s of sources) {
    const k = dirKey(s);
    let set = byDir.get(k);
    if (!set) byDir.set(k, (set = new Set()));
    set.add(key);
  }
  return out;
}

/** A lower dir changed behind the unions' backs: every listing that merged it goes. */
export function lowerDirChanged(key: string): void {
  for (const x of [0, 1]) {
    const k = `${key}\0${x}`;
    for (const l of [...(byDir.get(k) ?? [])]) cache.delete(l);
    byDir.delete(k);
  }
}
