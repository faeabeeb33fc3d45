// Removal: unlink and rmdir — deleted from the writable layer holding the name, with a whiteout
// there where a layer below still shows it (an object of a read-only layer: a whiteout in the
// writable layer a copy-up would go to).
import { native } from '../sys/native';
import { FsError, check } from '../sys/errors';
import { AT_REMOVEDIR, E, O_DIRECTORY, O_NOFOLLOW, O_RDONLY, RENAME_WHITEOUT, S_IFCHR, S_IFDIR } from '../sys/constants';
import { ST_NLINK, newStat, type Stat } from '../sys/stat';
import { unionPath, type UNode } from './nodes';
import { isCharWhiteout } from './whiteout';
import { NOFOLLOW, UPPER } from './core';
import { UnionCreate } from './create';

export abstract class UnionRemove extends UnionCreate {
  /** Leaves a whiteout at p/name in layer t (p is there); `present`: an object is there now. */
  protected whiteout(p: UNode, t: number, name: string, present: boolean, isDir: boolean): void {
    const pfd = this.dirOn(p, t);
    const codec = this.codec(t), workFd = this.work(t);
    if (codec.charDevice) {
      const tmp = this.tmpName();
      if (present && !isDir && native.renameat2(pfd, name, workFd, tmp, RENAME_WHITEOUT) === 0) {
        native.unlinkat(workFd, tmp, 0);  // the old upper file (open handles keep it alive)
        return;
      }
      if (present) this.removeUpper(t, pfd, name, isDir);
      check(native.mknodat(pfd, name, S_IFCHR, 0));
      return;
    }
    if (present) this.removeUpper(t, pfd, name, isDir);
    codec.fileWhiteout(pfd, name);
  }

  /** Removes an object of writable layer t; a directory (holding only whiteouts) through its work dir. */
  protected removeUpper(t: number, pfd: number, name: string, isDir: boolean): void {
    if (!isDir) {
      check(native.unlinkat(pfd, name, 0));
      return;
    }
    const r = native.unlinkat(pfd, name, AT_REMOVEDIR);
    if (r === 0) return;
    if (r !== -E.ENOTEMPTY) throw new FsError(-r);
    const tmp = this.tmpName(), workFd = this.work(t);
    check(native.renameat2(pfd, name, workFd, tmp, 0));
    removeTree(workFd, tmp);
  }

  /** The writable layer a removal of n works in: its own, or where a copy-up of it would go. */
  protected removalLayer(n: UNode): number {
    return n.upper ? n.wl : this.placeCopy(n);
  }

  /** What a removal of p/name works on; p's listing is dropped (its names change). */
  protected toRemove(parent: number, name: string): { p: UNode; e: { node: UNode; st: Stat } } {
    this.requireUpper();
    const p = this.node(parent);
    this.listings.delete(p.id);
    const e = this.entry(p, name);
    if (!e) throw new FsError(E.ENOENT);
    return { p, e };
  }

  unlink(parent: number, name: string): void {
    const { p, e } = this.toRemove(parent, name);
    if (e.node.type === S_IFDIR) throw new FsError(E.EISDIR);
    const t = e.node.indexKey ? UPPER : this.removalLayer(e.node);
    this.ensureDirOn(p, t);
    const needWh = this.lowerHas(p, name, t);
    const present = this.upperHasName(p, t, name);
    if (needWh) this.whiteout(p, t, name, present, false);
    else check(native.unlinkat(this.dirOn(p, t), name, 0));
    if (e.node.indexKey) this.addNlink(e.node, -1);
    this.dropName(p, name);
  }

  /** Is name an object (not a whiteout) in p's dir in layer t? (names of one node differ in this) */
  protected upperHasName(p: UNode, t: number, name: string): boolean {
    const fd = this.dirs.tryFd(t, unionPath(p));
    const st = newStat();
    return fd >= 0 && native.fstatat(fd, name, NOFOLLOW, st) === 0 && !isCharWhiteout(st);
  }

  /** A lower hard link copied up: its names live in the upper as links of the index entry. */
  protected upperName(p: UNode, name: string, n: UNode): void {
    if (!n.indexKey || this.upperHasName(p, UPPER, name)) return;
    this.ensureDirOn(p, UPPER);
    const pfd = this.dirOn(p, UPPER);
    const st = newStat();
    if (native.fstatat(pfd, name, NOFOLLOW, st) === 0) {
      // a whiteout cannot stand here for a name that shows, but be safe: replace atomically
      const tmp = this.tmpName();
      check(native.linkat(this.indexFd, n.indexKey, this.work(UPPER), tmp, 0));
      check(native.renameat2(this.work(UPPER), tmp, pfd, name, 0));
      return;
    }
    check(native.linkat(this.indexFd, n.indexKey, pfd, name, 0));
  }

  rmdir(parent: number, name: string): void {
    const { p, e } = this.toRemove(parent, name);
    const n = e.node;
    if (n.type !== S_IFDIR) throw new FsError(E.ENOTDIR);
    if (this.listNames(n).length > 0) throw new FsError(E.ENOTEMPTY);
    const t = this.removalLayer(n);
    this.ensureDirOn(p, t);
    const last = this.lastAttrs(n);
    // (a redirected dir's lower parts live under another name, already whited out there)
    const needWh = this.lowerHas(p, name, t);
    if (needWh) this.whiteout(p, t, name, n.upper, true);
    else this.removeUpper(t, this.dirOn(p, t), name, true);
    last();
    this.dropName(p, name);
  }

  /** Before a directory the kernel knows is removed or replaced: what fstat of it shows
   * afterwards, as on kernel overlayfs (an upper-only dir: nlink 0; merged: 1; lower: the
   * lower's). Call the result once it is gone. */
  protected lastAttrs(n: UNode | undefined): () => void {
    if (!n || n.type !== S_IFDIR || n.nlookup === 0) return () => {};
    const st = this.attrs(n);
    return () => {
      if (!n.lowers.length) st[ST_NLINK] = 0;
      n.gone = st;
    };
  }
}

/** Removes a directory tree below dirfd/name without following symlinks. */
export function removeTree(dirfd: number, name: string): void {
  const fd = native.openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0);
  if (fd < 0) return;
  try {
    const list = native.readdir(fd);
    if (typeof list !== 'number') {
      for (let i = 0; i < list.names.length; i++) {
        const n = list.names[i];
        if (n === '.' || n === '..') continue;
        if (list.types[i] === 4) removeTree(fd, n);
        else native.unlinkat(fd, n, 0);
      }
    }
  } finally {
    native.close(fd);
  }
  native.unlinkat(dirfd, name, AT_REMOVEDIR);
}

