// Removal: unlink and rmdir — deleted from the upper, with a whiteout where a lower layer
// still shows the name.
import { native } from '../sys/native';
import { FsError, check } from '../sys/errors';
import { AT_REMOVEDIR, E, O_DIRECTORY, O_NOFOLLOW, O_RDONLY, RENAME_WHITEOUT, S_IFCHR, S_IFDIR } from '../sys/constants';
import { ST_NLINK, newStat, type Stat } from '../sys/stat';
import { type UNode } from './nodes';
import { isCharWhiteout } from './whiteout';
import { NOFOLLOW } from './core';
import { UnionCreate } from './create';

export abstract class UnionRemove extends UnionCreate {
  /** Leaves a whiteout at p/name (p is in the upper layer); `present`: an upper object is there now. */
  protected whiteout(p: UNode, name: string, present: boolean, isDir: boolean): void {
    const pfd = this.upperDirFd(p);
    if (this.codec.charDevice) {
      const tmp = this.tmpName();
      if (present && !isDir && native.renameat2(pfd, name, this.workFd, tmp, RENAME_WHITEOUT) === 0) {
        native.unlinkat(this.workFd, tmp, 0);  // the old upper file (open handles keep it alive)
        return;
      }
      if (present) this.removeUpper(pfd, name, isDir);
      check(native.mknodat(pfd, name, S_IFCHR, 0));
      return;
    }
    if (present) this.removeUpper(pfd, name, isDir);
    this.codec.fileWhiteout(pfd, name);
  }

  /** Removes an upper object; a directory (holding only whiteouts) through the work dir. */
  protected removeUpper(pfd: number, name: string, isDir: boolean): void {
    if (!isDir) {
      check(native.unlinkat(pfd, name, 0));
      return;
    }
    const r = native.unlinkat(pfd, name, AT_REMOVEDIR);
    if (r === 0) return;
    if (r !== -E.ENOTEMPTY) throw new FsError(-r);
    const tmp = this.tmpName();
    check(native.renameat2(pfd, name, this.workFd, tmp, 0));
    removeTree(this.workFd, tmp);
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
    this.ensureUpperDir(p);
    const needWh = this.lowerHas(p, name);
    const present = this.upperHasName(p, name);
    if (needWh) this.whiteout(p, name, present, false);
    else check(native.unlinkat(this.upperDirFd(p), name, 0));
    if (e.node.indexKey) this.addNlink(e.node, -1);
    this.dropName(p, name);
  }

  /** Is name an object (not a whiteout) in p's upper dir? (names of one node differ in this) */
  protected upperHasName(p: UNode, name: string): boolean {
    if (!p.upper) return false;
    const st = newStat();
    return native.fstatat(this.upperDirFd(p), name, NOFOLLOW, st) === 0 && !isCharWhiteout(st);
  }

  /** A lower hard link copied up: its names live in the upper as links of the index entry. */
  protected upperName(p: UNode, name: string, n: UNode): void {
    if (!n.indexKey || this.upperHasName(p, name)) return;
    this.ensureUpperDir(p);
    const pfd = this.upperDirFd(p);
    const st = newStat();
    if (native.fstatat(pfd, name, NOFOLLOW, st) === 0) {
      // a whiteout cannot stand here for a name that shows, but be safe: replace atomically
      const tmp = this.tmpName();
      check(native.linkat(this.indexFd, n.indexKey, this.workFd, tmp, 0));
      check(native.renameat2(this.workFd, tmp, pfd, name, 0));
      return;
    }
    check(native.linkat(this.indexFd, n.indexKey, pfd, name, 0));
  }

  rmdir(parent: number, name: string): void {
    const { p, e } = this.toRemove(parent, name);
    const n = e.node;
    if (n.type !== S_IFDIR) throw new FsError(E.ENOTDIR);
    if (this.listNames(n).length > 0) throw new FsError(E.ENOTEMPTY);
    this.ensureUpperDir(p);
    const last = this.lastAttrs(n);
    // (a redirected dir's lower parts live under another name, already whited out there)
    const needWh = this.lowerHas(p, name);
    if (needWh) this.whiteout(p, name, n.upper, true);
    else this.removeUpper(this.upperDirFd(p), name, true);
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

