// Rename: within the upper after copy-up; a directory with lower parts moves with a redirect
// (redirect_dir=on) or fails with EXDEV; RENAME_EXCHANGE, NOREPLACE and WHITEOUT.
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
    this.prepareMove(s, p === q);
    if (d && flags & RENAME_EXCHANGE) this.prepareMove(d, p === q);
    this.upperName(p, name, s);
    if (d && flags & RENAME_EXCHANGE) this.upperName(q, newname, d);
    if (d && d !== s && !(flags & RENAME_EXCHANGE) && d.indexKey) this.addNlink(d, -1);
    this.ensureUpperDir(q);
    this.ensureUpperDir(p);
    const pfd = this.upperDirFd(p), qfd = this.upperDirFd(q);
    const oldPath = joinPath(unionPath(p), name), newPath = joinPath(unionPath(q), newname);
    if (flags & RENAME_EXCHANGE) {
      check(native.renameat2(pfd, name, qfd, newname, RENAME_EXCHANGE));
    } else {
      // the name left behind needs a whiteout when a lower layer still has it
      const srcLower = this.lowerHas(p, name);
      if (d && d.type === S_IFDIR && d.upper) {
        // replacing a (union-empty) directory: clear whiteouts left inside the upper one
        this.removeUpper(qfd, newname, true);
      }
      // as the kernel: a pure upper dir moved into a merged dir is made opaque there
      if (s.type === S_IFDIR && s.lowers.length === 0 && !s.opaque && q.upper && q.lowers.length > 0 && !q.opaque) {
        this.setOpaque(pfd, name);
        s.opaque = true;
      }
      const wst = newStat();
      const overChar = native.fstatat(qfd, newname, NOFOLLOW, wst) === 0 && isCharWhiteout(wst);
      if (overChar) {
        // as the kernel: swap with the whiteout; it stays at the old name only if needed there
        check(native.renameat2(pfd, name, qfd, newname, RENAME_EXCHANGE));
        if (!srcLower) check(native.unlinkat(pfd, name, 0));
        else if (!this.codec.charDevice) {
          check(native.unlinkat(pfd, name, 0));
          this.whiteoutFile(pfd, name);
        }
      } else if (srcLower && this.codec.charDevice) {
        const r = native.renameat2(pfd, name, qfd, newname, RENAME_WHITEOUT);
        if (r === -E.EINVAL || r === -E.EPERM) {
          check(native.renameat2(pfd, name, qfd, newname, 0));
          check(native.mknodat(pfd, name, S_IFCHR, 0));
        } else check(r);
      } else {
        check(native.renameat2(pfd, name, qfd, newname, 0));
        if (srcLower) this.whiteoutFile(pfd, name);
      }
      // a .wh. whiteout (aufs/OCI format) of the new name no longer applies
      native.unlinkat(qfd, WH_PREFIX + newname, 0);
    }
    if (s.type === S_IFDIR) this.dirs.forget(UPPER, oldPath);
    if (d?.type === S_IFDIR) this.dirs.forget(UPPER, newPath);
    last();
    // the tree follows
    detachLink(p, name);
    const gone = detachLink(q, newname);
    attachLink(q, newname, s);
    if (gone && flags & RENAME_EXCHANGE) attachLink(p, name, gone);
    else if (gone) this.maybeFree(gone);
  }

  protected whiteoutFile(pfd: number, name: string): void {
    this.codec.fileWhiteout(pfd, name);
  }

  /**
   * Before a move: files are copied up; a directory with lower parts gets a redirect, written as
   * the kernel's ovl_set_redirect does: the old name for a move within its directory, else the
   * absolute union path in which every ancestor with a redirect of its own stands for it; one
   * it has already is kept when it still applies.
   */
  protected prepareMove(n: UNode, samedir: boolean): void {
    if (n.type !== S_IFDIR) {
      this.copyUp(n, false);
      return;
    }
    if (n.lowers.length === 0) return;
    if (!this.opts.redirectDir) throw new FsError(E.EXDEV);
    this.ensureUpperDir(n);
    if (n.redirect !== null && (samedir || n.redirect.startsWith('/'))) return;
    const l = n.links[0];
    const redirect = samedir ? l.name : absoluteRedirect(n);
    check(native.setxattr(procPath(this.upperDirFd(l.parent), l.name), this.x.redirect, Buffer.from(redirect), 0, 0));
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

