// Rename: within one writable layer after copy-up (overlay: the upper; aufs: the source's rw
// branch, or one above it where the new name would not show there); a directory with lower
// parts moves with a redirect (redirect_dir=on) or fails with EXDEV; RENAME_EXCHANGE, NOREPLACE.
import { native } from '../sys/native';
import { FsError, check } from '../sys/errors';
import { E, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT, S_IFCHR, S_IFDIR } from '../sys/constants';
import { newStat } from '../sys/stat';
import { joinPath } from './layers';
import { attachLink, detachLink, unionPath, type UNode } from './nodes';
import { WH_PREFIX, isCharWhiteout, procPath } from './whiteout';
import { NOFOLLOW, UPPER } from './core';
import { UnionRemove } from './remove';

export abstract class UnionRename extends UnionRemove {
  rename(parent: number, name: string, newparent: number, newname: string, flags: number): void {
    // as kernel overlayfs: RENAME_WHITEOUT (or any other flag) is refused before anything else
    if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) throw new FsError(E.EINVAL);
    this.checkNewName(newname);
    this.requireUpper();
    const p = this.node(parent), q = this.node(newparent);
    this.listings.delete(p.id);
    this.listings.delete(q.id);
    const src = this.entry(p, name);
    if (!src) throw new FsError(E.ENOENT);
    const dst = this.entry(q, newname);
    if (flags & RENAME_NOREPLACE && dst) throw new FsError(E.EEXIST);
    if (flags & RENAME_EXCHANGE && !dst) throw new FsError(E.ENOENT);
    const s = src.node, d = dst?.node;
    if (s === d) return;
    if (d && !(flags & RENAME_EXCHANGE)) {
      if (s.type === S_IFDIR && d.type !== S_IFDIR) throw new FsError(E.ENOTDIR);
      if (s.type !== S_IFDIR && d.type === S_IFDIR) throw new FsError(E.EISDIR);
      if (d.type === S_IFDIR && this.listNames(d).length > 0) throw new FsError(E.ENOTEMPTY);
    }
    const last = d && !(flags & RENAME_EXCHANGE) ? this.lastAttrs(d) : () => {};
    const t = this.renameLayer(s, q, newname, d, (flags & RENAME_EXCHANGE) !== 0);
    this.prepareMove(s, p === q, t);
    if (d && flags & RENAME_EXCHANGE) this.prepareMove(d, p === q, t);
    if (t === UPPER) {
      this.upperName(p, name, s);
      if (d && flags & RENAME_EXCHANGE) this.upperName(q, newname, d);
    }
    if (d && d !== s && !(flags & RENAME_EXCHANGE) && d.indexKey) this.addNlink(d, -1);
    // (aufs) a replaced object of a lower writable layer goes, not left there hidden
    if (d && !(flags & RENAME_EXCHANGE) && d.upper && d.wl > t) this.removeUpper(d.wl, this.dirOn(q, d.wl), newname, d.type === S_IFDIR);
    this.ensureDirOn(q, t);
    this.ensureDirOn(p, t);
    const pfd = this.dirOn(p, t), qfd = this.dirOn(q, t);
    const oldPath = joinPath(unionPath(p), name), newPath = joinPath(unionPath(q), newname);
    if (flags & RENAME_EXCHANGE) {
      check(native.renameat2(pfd, name, qfd, newname, RENAME_EXCHANGE));
    } else {
      // the name left behind needs a whiteout when a lower layer still has it
      const srcLower = this.lowerHas(p, name, t);
      if (d && d.type === S_IFDIR && d.upper && d.wl === t) {
        // replacing a (union-empty) directory: clear whiteouts left inside the upper one
        this.removeUpper(t, qfd, newname, true);
      }
      // as the kernel: a pure upper dir moved into a merged dir is made opaque there
      if (s.type === S_IFDIR && s.lowers.length === 0 && !s.opaque && q.lowers.some((l) => l.layer > t) && !q.opaque) {
        this.setOpaque(t, pfd, name);
        s.opaque = true;
      }
      const wst = newStat();
      const overChar = native.fstatat(qfd, newname, NOFOLLOW, wst) === 0 && isCharWhiteout(wst);
      if (overChar) {
        // as the kernel: swap with the whiteout; it stays at the old name only if needed there
        check(native.renameat2(pfd, name, qfd, newname, RENAME_EXCHANGE));
        if (!srcLower) check(native.unlinkat(pfd, name, 0));
        else if (!this.codec(t).charDevice) {
          check(native.unlinkat(pfd, name, 0));
          this.codec(t).fileWhiteout(pfd, name);
        }
      } else if (srcLower && this.codec(t).charDevice) {
        const r = native.renameat2(pfd, name, qfd, newname, RENAME_WHITEOUT);
        if (r === -E.EINVAL || r === -E.EPERM) {
          check(native.renameat2(pfd, name, qfd, newname, 0));
          check(native.mknodat(pfd, name, S_IFCHR, 0));
        } else check(r);
      } else {
        check(native.renameat2(pfd, name, qfd, newname, 0));
        if (srcLower) this.codec(t).fileWhiteout(pfd, name);
      }
      // a .wh. whiteout (aufs/OCI format) of the new name no longer applies
      native.unlinkat(qfd, WH_PREFIX + newname, 0);
    }
    if (s.type === S_IFDIR) this.dirs.forget(t, oldPath);
    if (d?.type === S_IFDIR) this.dirs.forget(t, newPath);
    last();
    // the tree follows
    detachLink(p, name);
    const gone = detachLink(q, newname);
    attachLink(q, newname, s);
    if (gone && flags & RENAME_EXCHANGE) attachLink(p, name, gone);
    else if (gone) this.maybeFree(gone);
  }

  /**
   * The writable layer a rename works in: the source's own (or where its copy-up goes), moved
   * up to the destination's layer when that is higher (exchange: both objects end there), and
   * to where the new name shows (placeNew). Overlay: always the upper.
   */
  protected renameLayer(s: UNode, q: UNode, newname: string, d: UNode | undefined, exchange: boolean): number {
    let t = s.indexKey ? UPPER : this.removalLayer(s);
    if (d) t = Math.min(t, d.indexKey ? UPPER : exchange ? this.removalLayer(d) : this.writableAtOrAbove(this.topLayer(d)));
    if (!d) t = Math.min(t, this.placeNew(q, newname, s.type === S_IFDIR, t));
    if (t < 0) throw new FsError(E.EROFS);
    return t;
  }

  /**
   * Before a move: files are copied up; a directory with lower parts gets a redirect, written as
   * the kernel's ovl_set_redirect does: the old name for a move within its directory, else the
   * absolute union path in which every ancestor with a redirect of its own stands for it; one
   * it has already is kept when it still applies.
   */
  protected prepareMove(n: UNode, samedir: boolean, t: number): void {
    if (n.type !== S_IFDIR) {
      if (!n.indexKey) this.copyUpTo(n, t, false);
      return;
    }
    // a dir lives in one writable layer, or moves with a redirect (overlay redirect_dir=on)
    if (n.lowers.length === 0 && n.upper && n.wl === t) return;
    if (!this.opts.redirectDir) throw new FsError(E.EXDEV);
    this.ensureDirOn(n, t);
    if (n.redirect !== null && (samedir || n.redirect.startsWith('/'))) return;
    const l = n.links[0];
    const redirect = samedir ? l.name : absoluteRedirect(n);
    check(native.setxattr(procPath(this.dirOn(l.parent, t), l.name), this.x.redirect, Buffer.from(redirect), 0, 0));
    n.redirect = redirect;
  }
}

/** The union path of n from the root, each ancestor's own redirect standing for its name (an
 * absolute one ends the walk): the kernel's ovl_get_redirect. */
function absoluteRedirect(n: UNode): string {
  const parts: string[] = [];
  for (let d = n; d.links[0]; d = d.links[0].parent) {
    const part = d.redirect ?? d.links[0].name;
    parts.unshift(part.startsWith('/') ? part.slice(1) : part);
    if (part.startsWith('/')) break;
  }
  return '/' + parts.join('/');
}

