// Changes made directly in a lower layer while mounted: inotify watches (through fs.watch) on
// the lower directories of the directory nodes the kernel knows. Lowers change only behind the
// union's back, so every event is news; the upper is not watched (the daemon's own writes).
// A watch is set through /proc/self/fd/N of the layer dir's own fd: no layer path is resolved.
import * as fs from 'node:fs';
import { lowerDirChanged, lowerWatchEnded, lowerWatchStarted } from './lowerlist';

export class LowerWatcher {
  private readonly watches = new Map<string, { w: fs.FSWatcher; nodes: Set<number> }>();
  private readonly byNode = new Map<number, string[]>();

  constructor(private readonly onChange: (nodeId: number, name: string | null) => void, private readonly max: number) {}

  /** Watches one lower dir (fd: its O_PATH fd) for a directory node; idempotent. */
  add(nodeId: number, key: string, fd: number): void {
    let e = this.watches.get(key);
    if (!e) {
      if (this.watches.size >= this.max) return;  // beyond the cap, timeout=SECS still applies
      let w: fs.FSWatcher;
      try {
        w = fs.watch(`/proc/self/fd/${fd}`, { persistent: false }, (_ev, name) => {
          lowerDirChanged(key);
          const cur = this.watches.get(key);
          if (cur) for (const n of cur.nodes) this.onChange(n, name ? String(name) : null);
        });
      } catch {
        return;
      }
      w.on('error', () => this.dropKey(key));
      e = { w, nodes: new Set() };
      this.watches.set(key, e);
      lowerWatchStarted(key);
    }
    if (e.nodes.has(nodeId)) return;
    e.nodes.add(nodeId);
    const keys = this.byNode.get(nodeId) ?? [];
    keys.push(key);
    this.byNode.set(nodeId, keys);
  }

  /** The node is gone: its watches go unless another node shares them. */
  forget(nodeId: number): void {
    for (const key of this.byNode.get(nodeId) ?? []) {
      const e = this.watches.get(key);
      if (!e) continue;
      e.nodes.delete(nodeId);
      if (!e.nodes.size) this.dropKey(key);
    }
    this.byNode.delete(nodeId);
  }

  private dropKey(key: string): void {
    const e = this.watches.get(key);
    if (!e) return;
    this.watches.delete(key);
    e.w.close();
    lowerWatchEnded(key);
  }

  close(): void {
    for (const key of [...this.watches.keys()]) this.dropKey(key);
    this.byNode.clear();
  }

  get size(): number {
    return this.watches.size;
  }
}
