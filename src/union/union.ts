// The union engine: overlayfs semantics over an upper layer and read-only lowers. Lookup goes
// top-down; a non-directory hides everything below it; directories merge until an opaque one.
// Writes go to the upper layer after a copy-up; removals of lower objects leave whiteouts.
// This file: files and directories (open, readdir, fsyncdir, statfs); the other operation
// families are the classes it extends (core.ts -> ... -> attrs.ts).
import { native, type DirList } from '../sys/native';
import { check } from '../sys/errors';
import { AT_EMPTY_PATH, O_ACCMODE, O_DIRECTORY, O_RDONLY, O_TRUNC, S_IFDIR, S_IFREG } from '../sys/constants';
import { ST_MODE, ST_SIZE, STATFS_LEN, newStat } from '../sys/stat';
import type { DirOpened, Filesystem, Opened } from '../fuse/filesystem';
import { openNoatime, touchAtime, wantsAtime } from '../fuse/atime';
import { type UNode } from './nodes';
import { FMODE_EXEC, SHARED_MIN_SIZE, LONG_TIMEOUT } from './core';
import { UnionAttrs } from './attrs';
export { removeTree } from './remove';
export type { UnionOptions } from './core';

export class Union extends UnionAttrs implements Filesystem {
  // ---- files ----

  open(nodeid: number, flags: number): Opened {
    const n = this.node(nodeid);
    const writing = (flags & O_ACCMODE) !== O_RDONLY || (flags & O_TRUNC) !== 0;
    if (writing) this.copyUp(n, (flags & O_TRUNC) !== 0);
    const t = this.top(n);
    const fd = check(openNoatime(t.dirfd, t.name, this.openFlags(flags), 0));
    const passthrough = this.passthroughFor(n);
    // as kernel overlayfs: reads move the atime of upper files only, and as the mount says
    // (a passthrough file's reads are the kernel's: its own relatime does it)
    if (n.upper && !passthrough && (flags & O_ACCMODE) === O_RDONLY && this.wantsAtime(n)) touchAtime(t.dirfd, t.name);
    // a lower file never changes: its page cache stays valid across opens; with passthrough
    // the backing file's page cache is the only one (shared by every mount of the layer), and
    // without it a direct read-only open keeps it so (the union's own page cache stays empty)
    if (this.directLower && !n.upper && !writing && n.type === S_IFREG && this.sharedLowerOpen(fd, flags)) return { fd, directIo: true, noSync: !this.opts.fsync };
    return { fd, keepCache: !n.upper, noSync: !this.opts.fsync, passthrough };
  }

  /**
   * Whether a read-only open of a lower file is served direct (its pages then live once, in the
   * lower file's page cache). The price: the kernel drops a direct-io file's own pages at every
   * mmap, so mapped files fault through the daemon each time they are mapped, and re-reads cost
   * a round trip. 'auto' pays it for big data files only (at least 64 MiB, no exec bit, not
   * opened by exec): executables and libraries stay cached per mount.
   */
  protected sharedLowerOpen(fd: number, flags: number): boolean {
    if (this.opts.sharedLowerCache === 'shared') return true;
    if (flags & FMODE_EXEC) return false;
    const st = newStat();
    if (native.fstatat(fd, '', AT_EMPTY_PATH, st) < 0) return false;
    return st[ST_SIZE] >= SHARED_MIN_SIZE && (st[ST_MODE] & 0o111) === 0;
  }

  // ---- directories ----

  opendir(nodeid: number): DirOpened {
    this.node(nodeid);
    // a layer changed behind the union's back does not move the upper dir's mtime, so with a
    // short timeout a listing is read anew at each open; with the default one it stays cached
    return { cacheReaddir: true, keepCache: this.opts.timeout >= LONG_TIMEOUT };
  }

  protected wantsAtime(n: UNode): boolean {
    if (this.opts.atime.mode === 'noatime') return false;
    const st = newStat();
    try {
      this.statTop(n, st);
    } catch {
      return false;
    }
    return wantsAtime(this.opts.atime, st, n.type === S_IFDIR);
  }

  /** The merged listing of a directory node: names, presented inos, d_types. */
  readdir(nodeid: number): DirList {
    const n = this.node(nodeid);
    if (n.upper && this.wantsAtime(n)) {
      const t = this.top(n);
      touchAtime(t.dirfd, t.name);
    }
    const names: string[] = ['.', '..'];
    const inos: number[] = [n.ino, n.links[0] ? n.links[0].parent.ino : n.ino];
    const types: number[] = [4, 4];
    const where = new Map<string, number>();
    const upperInos = new Map<string, [number, number]>();
    this.merge(n, (name, ino, type, layer, raw) => {
      names.push(name);
      inos.push(ino);
      types.push(type);
      where.set(name, layer);
      if (n.upper && layer === n.wl) upperInos.set(name, [raw, ino]);
    });
    this.listings.set(n.id, { until: Date.now() + this.opts.timeout * 1000, names: where, upperInos });
    return { names, inos: Float64Array.from(inos), types: Uint8Array.from(types) };
  }

  fsyncdir(nodeid: number, datasync: boolean): void {
    const n = this.node(nodeid);
    if (!n.upper || !this.opts.fsync) return;
    const fd = check(native.openat(this.upperDirFd(n), '.', O_RDONLY | O_DIRECTORY, 0));
    const r = native.fsync(fd, datasync ? 1 : 0);
    native.close(fd);
    check(r);
  }

  statfs(): Float64Array {
    const out = new Float64Array(STATFS_LEN);
    check(native.fstatvfs(this.layers[0].fd, out));
    if (this.opts.statfsSum) {
      // aufs's sum: every distinct filesystem among the layers, counted in the first one's blocks
      const seen = new Set([this.layers[0].dev]);
      const st = new Float64Array(STATFS_LEN);
      for (const l of this.layers) {
        if (seen.has(l.dev) || native.fstatvfs(l.fd, st) < 0) continue;
        seen.add(l.dev);
        const scale = st[1] / out[1];
        for (const i of [2, 3, 4]) out[i] += Math.floor(st[i] * scale);
        for (const i of [5, 6, 7]) out[i] += st[i];
      }
    }
    return out;
  }
}
