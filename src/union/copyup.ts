// Copy-up: a lower object brought to a writable layer (parents first, atomically through that
// layer's work dir) before it is changed; open handles follow it. Which writable layer: the
// mode's Placement (overlay: its upper), kept where the parent's merge reaches.
import { native } from '../sys/native';
import { FsError, check } from '../sys/errors';
import { AT_REMOVEDIR, E, O_CREAT, O_DIRECT, O_EXCL, O_NOFOLLOW, O_TRUNC, RENAME_NOREPLACE, S_IFDIR, S_IFREG } from '../sys/constants';
import { ST_INO, ST_NLINK, newStat } from '../sys/stat';
import { unionPath, type UNode } from './nodes';
import { procPath } from './whiteout';
import { buildCopy, keepTimes } from './copybuild';
import { NOFOLLOW, UPPER } from './core';
import { UnionLookup } from './lookup';

export abstract class UnionCopyUp extends UnionLookup {
  protected tmpName(): string {
    return `#lfs-${process.pid}-${++this.tmpSeq}`;
  }

  protected requireUpper(): void {
    if (!this.hasUpper) throw new FsError(E.EROFS);
  }

  /** Makes sure directory node n exists in writable layer t: copied up (or, below its top, down)
   * there, its parents first. */
  protected ensureDirOn(n: UNode, t: number): void {
    if (t < 0 || !this.layers[t]?.writable) throw new FsError(E.EROFS);
    if (n === this.root || (n.upper && n.wl === t) || n.lowers.some((l) => l.layer === t)) return;
    const l = n.links[0];
    if (!l) throw new FsError(E.ESTALE);
    this.ensureDirOn(l.parent, t);
    this.copyTo(n, t, false);
  }

  /** Where a copy-up of n goes: the mode's choice among the writable layers above n's top. */
  protected placeCopy(n: UNode): number {
    const from = this.topLayer(n);
    const l = n.links[0];
    let t = this.placement.copyUp(l ? this.dirLayers(l.parent) : [], from);
    if (t < 0 || t >= from || !this.layers[t].writable) t = this.writableAtOrAbove(from - 1);
    if (t < 0) throw new FsError(E.EROFS);
    return t;
  }

  /** Copies a lower object up; open handles on it are re-targeted to the copy. */
  protected copyUp(n: UNode, skipData: boolean): void {
    this.requireUpper();
    if (n.upper || n.indexKey) return;
    this.copyUpTo(n, this.placeCopy(n), skipData);
  }

  /** Copies n's top object to writable layer t above it (its parents there first). */
  protected copyUpTo(n: UNode, t: number, skipData: boolean): void {
    if (n.upper && n.wl === t) return;
    const l = n.links[0];
    if (!l) throw new FsError(E.ESTALE);
    this.ensureDirOn(l.parent, t);
    this.copyTo(n, t, skipData);
  }

  /** Copies n's top object into layer t (its parent is there); t above the top: n's top moves
   * there; t below it (a dir an aufs policy wants a new object in): one more layer merges. */
  private copyTo(n: UNode, t: number, skipData: boolean): void {
    const l = n.links[0]!;
    for (const k of n.links) this.listings.delete(k.parent.id);  // the name's top is now the copy
    const top = this.top(n);
    const src = { dirfd: top.dirfd, name: top.name, st: newStat() };
    check(native.fstatat(src.dirfd, src.name, NOFOLLOW, src.st));
    // (aufs) a file of a writable layer moves up: a copy would split its hard links
    const moving = n.upper && n.type !== S_IFDIR;
    if (moving && src.st[ST_NLINK] > 1) throw new FsError(E.EXDEV);
    const tmp = this.tmpName();
    const workFd = this.work(t);
    buildCopy(src, {
      workFd, tmp, sync: this.opts.fsync, originXattr: this.x.origin, originIno: n.ino, skipData,
    });
    // a lower hard link: the copy is entered in the index first, so every other name of the
    // lower inode finds it (now and after a remount) and stays a link of the same file
    const key = n.type === S_IFREG && !n.upper && t === UPPER && src.st[ST_NLINK] > 1 && this.indexFd >= 0
      ? `${this.layers[top.layer].rootIno}-${src.st[ST_INO]}` : null;
    if (key) {
      native.setxattr(procPath(workFd, tmp), this.x.nlink, Buffer.from(String(src.st[ST_NLINK])), 0, 0);
      native.setxattr(procPath(workFd, tmp), this.x.index, Buffer.from(key), 0, 0);
      const lr = native.linkat(workFd, tmp, this.indexFd, key, 0);
      if (lr < 0) {
        native.unlinkat(workFd, tmp, 0);
        throw new FsError(-lr);
      }
    }
    const pfd = this.dirOn(l.parent, t);
    const r = keepTimes(pfd, () => native.renameat2(workFd, tmp, pfd, l.name, RENAME_NOREPLACE));
    if (r < 0) {
      native.unlinkat(workFd, tmp, n.type === S_IFDIR ? AT_REMOVEDIR : 0);
      throw new FsError(-r);
    }
    if (t > top.layer) {
      // below the top: one more dir of the merge, in layer order
      const at = n.lowers.findIndex((x) => x.layer > t);
      n.lowers.splice(at < 0 ? n.lowers.length : at, 0, { layer: t, path: unionPath(n), xwh: false });
      this.invalAttr(n);   // now merged: nlink shows 1
      return;
    }
    // a dir stays merged below its copy; a file of a writable layer is not left there hidden
    if (moving) native.unlinkat(top.dirfd, top.name, 0);
    else if (n.upper) n.lowers.unshift({ layer: n.wl, path: unionPath(n), xwh: n.upperXwh });
    n.upper = true;
    n.wl = t;
    n.upperXwh = false;
    n.opaque = false;   // (an opaque dir moved up: the copy merges with it, and it ends the merge)
    if (key) {
      n.indexKey = key;
      this.byIndexKey.set(key, n);
      const ist = newStat();
      if (native.fstatat(this.indexFd, key, NOFOLLOW, ist) === 0) this.byUpperIno.set(ist[ST_INO], n);
    }
    if (n.type === S_IFREG) this.retargetHandles(n);
    else if (n.type === S_IFDIR) this.invalAttr(n);  // now merged: nlink shows 1
  }

  /** Handles opened on the lower file now read the upper copy (the kernel got this wrong for years). */
  protected retargetHandles(n: UNode): void {
    const hs = native.handlesOf(n.id);
    if (!hs.length) return;
    const t = this.top(n);
    for (let i = 0; i < hs.length; i += 2) {
      const flags = (hs[i + 1] & ~(O_CREAT | O_EXCL | O_TRUNC | O_DIRECT)) | O_NOFOLLOW;
      const fd = native.openat(t.dirfd, t.name, flags, 0);
      if (fd >= 0 && native.retarget(hs[i], fd) < 0) native.close(fd);
    }
  }

  /** The link count of a copied-up lower hard link; at 0 its index entry goes too. */
  protected addNlink(n: UNode, delta: number): void {
    const path = procPath(this.indexFd, n.indexKey!);
    const v = native.getxattr(path, this.x.nlink, 0);
    const cur = typeof v === 'number' ? 1 : Number(v.toString()) || 1;
    const next = cur + delta;
    if (next <= 0) {
      native.unlinkat(this.indexFd, n.indexKey!, 0);
      return;
    }
    native.setxattr(path, this.x.nlink, Buffer.from(String(next)), 0, 0);
  }
}
