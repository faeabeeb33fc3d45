// A bounded set of open directory fds (O_PATH), closed on eviction. The daemon cannot hold one
// fd per known inode (RLIMIT_NOFILE may be 20k and not raisable), so directory fds are
// re-opened on demand, one no-follow component at a time, and the hot ones stay cached.
import { LRUCache } from 'lru-cache';
import { native } from './native';

export class FdCache<K extends {}> {
  private readonly lru: LRUCache<K, number>;

  constructor(max: number) {
    // ops are synchronous on the JS thread: an fd fetched for a call stays valid for that call
    // because it is the most recent entry, and max is far above the fds one call needs.
    this.lru = new LRUCache<K, number>({ max, dispose: (fd) => void native.close(fd) });
  }

  get(key: K, open: () => number): number {
    const fd = this.lru.get(key);
    if (fd !== undefined) return fd;
    const n = open();
    if (n >= 0) this.lru.set(key, n);
    return n;
  }

  delete(key: K): void {
    this.lru.delete(key);
  }

  /** Drops every entry whose key matches (a linear scan: only on renames and removals). */
  deleteWhere(pred: (key: K) => boolean): void {
    for (const k of [...this.lru.keys()]) if (pred(k)) this.lru.delete(k);
  }

  clear(): void {
    this.lru.clear();
  }

  get size(): number {
    return this.lru.size;
  }
}

/** A budget for cached fds from the process limit, leaving room for open files. */
export function fdBudget(limit: number): number {
  return Math.max(64, Math.min(8192, Math.floor(limit / 4)));
}
