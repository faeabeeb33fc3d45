// Merged listings of lower directories, shared by every union of the process: N mounts of one
// image listing one directory merge its lower layers once. A listing is keyed by the lower dirs
// it merges (each layer's cache key, the path, whether it may hold xattr whiteouts), holds what
// survives the lowers' own whiteouts, and goes when a watched lower dir changes or its time is up.
// Only listings of dirs that some union watches are kept: a change nobody watches goes unseen.
import { LRUCache } from 'lru-cache';
import { visibleEntries } from './whiteout';

export interface LowerSource { key: string; fd: number; xwh: boolean; showWh?: boolean }

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

// watches per lower dir (key: layer cache key, NUL, path) across every union of the process
const watchers = new Map<string, number>();

export function lowerWatchStarted(key: string): void {
  watchers.set(key, (watchers.get(key) ?? 0) + 1);
}

/** A union stopped watching the dir; once nobody does, its listings cannot be trusted. */
export function lowerWatchEnded(key: string): void {
  const left = (watchers.get(key) ?? 1) - 1;
  if (left > 0) watchers.set(key, left);
  else {
    watchers.delete(key);
    lowerDirChanged(key);
  }
}

const dirKey = (s: LowerSource): string => `${s.key}\0${s.xwh ? 1 : 0}`;

/** The lowers of one directory merged top-down; kept for ttlMs (and until a change is seen) when
 * every dir merged is watched, merged afresh each time otherwise. */
export function lowerList(sources: LowerSource[], ttlMs: number): LowerList {
  const key = sources.map(dirKey).join('\n');
  const watched = sources.every((s) => (watchers.get(s.key) ?? 0) > 0);
  const hit = watched ? cache.get(key) : undefined;
  if (hit && hit.until > Date.now()) return hit;
  const out: LowerList = { names: [], types: [], inos: [], from: [], until: Date.now() + ttlMs };
  const seen = new Set<string>();
  sources.forEach((src, si) => visibleEntries(src.fd, src.xwh, seen, (name, type, ino) => {
    out.names.push(name);
    out.types.push(type);
    out.inos.push(ino);
    out.from.push(si);
  }, src.showWh));
  if (!watched) return out;
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
