// Copy-up: a lower object brought to the upper layer (parents first, atomically through the
// work dir) before it is changed; open handles follow it.
import { native } from '../sys/native';
import { FsError, check } from '../sys/errors';
import { AT_REMOVEDIR, E, O_CREAT, O_DIRECT, O_EXCL, O_NOFOLLOW, O_TRUNC, RENAME_NOREPLACE, S_IFDIR, S_IFREG } from '../sys/constants';
import { ST_INO, ST_NLINK, newStat } from '../sys/stat';
import { baseName, dirName } from './layers';
import { type UNode } from './nodes';
import { procPath } from './whiteout';
import { buildCopy, keepTimes } from './copybuild';
import { NOFOLLOW } from './core';
import { UnionLookup } from './lookup';

export abstract class UnionCopyUp extends UnionLookup {
  protected tmpName(): string {
    return `#lfs-${process.pid}-${++this.tmpSeq}`;
  }

  protected requireUpper(): void {
    if (!this.hasUpper) throw new FsError(E.EROFS);
  }

  /** Makes sure a directory node exists in the upper layer (copying up its parents first). */
  protected ensureUpperDir(n: UNode): void {
    this.requireUpper();
    if (n.upper) return;
    this.copyUp(n, false);
  }

  /** Copies a lower object up; open handles on it are re-targeted to the copy. */
  protected copyUp(n: UNode, skipData: boolean): void {
    this.requireUpper();
    if (n.upper || n.indexKey) return;
    const l = n.links[0];
    if (!l) throw new FsError(E.ESTALE);
    this.ensureUpperDir(l.parent);
    for (const k of n.links) this.listings.delete(k.parent.id);  // the name's top is now the upper
    const lo = n.lowers[0];
    const src = { dirfd: this.dirs.fd(lo.layer, dirName(lo.path)), name: baseName(lo.path), st: newStat() };
    check(native.fstatat(src.dirfd, src.name, NOFOLLOW, src.st));
    const tmp = this.tmpName();
    buildCopy(src, {
      workFd: this.workFd, tmp, sync: this.opts.fsync, originXattr: this.x.origin, originIno: n.ino, skipData,
    });
    // a lower hard link: the copy is entered in the index first, so every other name of the
    // lower inode finds it (now and after a remount) and stays a link of the same file
    const key = n.type === S_IFREG && src.st[ST_NLINK] > 1 && this.indexFd >= 0
      ? `${this.layers[lo.layer].rootIno}-${src.st[ST_INO]}` : null;
    if (key) {
      native.setxattr(procPath(this.workFd, tmp), this.x.nlink, Buffer.from(String(src.st[ST_NLINK])), 0, 0);
      native.setxattr(procPath(this.workFd, tmp), this.x.index, Buffer.from(key), 0, 0);
      const lr = native.linkat(this.workFd, tmp, this.indexFd, key, 0);
      if (lr < 0) {
        native.unlinkat(this.workFd, tmp, 0);
        throw new FsError(-lr);
      }
    }
    const pfd = this.upperDirFd(l.parent);
    const r = keepTimes(pfd, () => native.renameat2(this.workFd, tmp, pfd, l.name, RENAME_NOREPLACE));
    if (r < 0) {
      native.unlinkat(this.workFd, tmp, n.type === S_IFDIR ? AT_REMOVEDIR : 0);
      throw new FsError(-r);
    }
    n.upper = true;
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
