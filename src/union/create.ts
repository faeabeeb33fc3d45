// Creation: mknod, mkdir, symlink, create, link — in a writable layer (overlay: the upper; aufs:
// as create= says), as the caller, over a whiteout where a lower layer still shows the name.
import { native } from '../sys/native';
import { FsError, check } from '../sys/errors';
import { AT_REMOVEDIR, E, O_CREAT, O_DIRECTORY, O_EXCL, O_NOFOLLOW, O_PATH, RENAME_EXCHANGE, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG } from '../sys/constants';
import { newStat } from '../sys/stat';
import type { Caller, Entry, Opened } from '../fuse/filesystem';
import { DEFAULT_ACL_XATTR, creationMode, defaultAcl } from '../fuse/modes';
import { asCaller } from '../sys/identity';
import { attachLink, unionPath, type UNode } from './nodes';
import { WH_PREFIX, isCharWhiteout, probe, procPath } from './whiteout';
import { formatOverride } from './ids';
import { NOFOLLOW, UPPER, type Make } from './core';
import { UnionCopyUp } from './copyup';

export abstract class UnionCreate extends UnionCopyUp {
  /** Does any layer below t show `name` under p (respecting whiteouts and opaque dirs)? */
  protected lowerHas(p: UNode, name: string, t: number): boolean {
    if (p.opaque) return false;
    const st = newStat();
    for (const ref of p.lowers) {
      if (ref.layer <= t) continue;
      const pfd = this.dirs.tryFd(ref.layer, ref.path);
      if (pfd < 0) continue;
      const pr = probe(pfd, name, st, ref.xwh);
      if (pr === 'whiteout') return false;
      if (pr === 'found') return true;
    }
    return false;
  }

  /**
   * The writable layer a new p/name goes to: the mode's choice (or `want`), moved up where it
   * would not show — below the deepest layer p's merge reaches, or below a whiteout of the name
   * in one of p's dirs (aufs then uses that dir's layer, or the nearest writable one above it).
   */
  protected placeNew(p: UNode, name: string, isDir: boolean, want = -1): number {
    const has = this.dirLayers(p);
    let t = want >= 0 ? want : this.placement.create(has, isDir);
    if (t < 0 || !this.layers[t]?.writable) t = this.writableAtOrAbove(this.topLayer(p));
    const reach = this.reach(p);
    if (t > reach) t = this.writableAtOrAbove(reach);
    if (t > this.topLayer(p)) {
      const st = newStat(), at = unionPath(p);
      for (const u of has) {
        if (u >= t) break;
        const fd = this.dirs.tryFd(u, at);
        if (fd >= 0 && probe(fd, name, st, false) === 'whiteout') {
          t = this.writableAtOrAbove(u);
          break;
        }
      }
    }
    if (t < 0) throw new FsError(E.EROFS);
    return t;
  }

  /**
   * Creates an object at p/name in a writable layer (placeNew, or `layer`) as the caller, with the caller's mode (its
   * umask applied unless the upper parent has a default ACL). Over a whiteout the object is
   * built in the work dir and swapped in atomically; a new directory there is made opaque.
   */
  protected createUpper(p: UNode, name: string, type: number, callerIn: Caller, make: Make, modeIn = -1, layer = -1): number {
    this.checkNewName(name);
    const t = layer >= 0 ? layer : this.placeNew(p, name, type === S_IFDIR);
    this.ensureDirOn(p, t);
    this.listings.delete(p.id);
    const ids = this.opts.ids;
    const mode = modeIn >= 0 ? creationMode(this.dirOn(p, t), modeIn, callerIn.umask) : modeIn;
    // the caller's ids as stored on disk; with xattr_permissions the daemon owns the file and
    // the caller's owner and mode go into the override xattr
    const caller: Caller = ids.p.xattrPermissions ? { ...callerIn, uid: 0, gid: 0 }
      : { ...callerIn, uid: ids.storeUid(callerIn.uid), gid: ids.storeGid(callerIn.gid) };
    const r = this.createUpperAs(p, t, name, type, caller, (fd, at) => make(fd, at, mode));
    if (ids.p.xattrPermissions && mode >= 0) {
      const pfd = this.dirOn(p, t);
      native.setxattr(procPath(pfd, name), ids.overrideXattr, Buffer.from(formatOverride(callerIn.uid, callerIn.gid, mode)), 0, 0);
    }
    return r;
  }

  protected createUpperAs(p: UNode, t: number, name: string, type: number, caller: Caller, make: (dirfd: number, at: string) => number): number {
    const pfd = this.dirOn(p, t);
    const st = newStat();
    const overChar = native.fstatat(pfd, name, NOFOLLOW, st) === 0 && isCharWhiteout(st);
    const overWh = !overChar && native.fstatat(pfd, WH_PREFIX + name, NOFOLLOW, st) === 0;
    // as the kernel: a new dir over a whiteout must hide what is below; in a merged parent it is
    // made opaque too (the kernel's optimisation, kept so the upper looks the same)
    const merged = p.lowers.some((l) => l.layer > t);
    const opaqueNeeded = type === S_IFDIR && (overChar || overWh || merged || !!this.opts.alwaysOpaque || this.lowerHas(p, name, t));
    if (!overChar) {
      const r = asCaller(this.id, caller, () => make(pfd, name));
      if (r < 0) throw new FsError(-r);
      if (opaqueNeeded) this.setOpaque(t, pfd, name);
      if (overWh) native.unlinkat(pfd, WH_PREFIX + name, 0);
      return r;
    }
    // built beside the work dir's other objects; in a parent with a default ACL, inside a work
    // subdir carrying the same default ACL, so the new object inherits it as it would in place
    const acl = defaultAcl(pfd);
    const workFd = this.work(t);
    let wfd = workFd;
    const wdir = acl ? this.tmpName() : '';
    if (acl) {
      check(native.mkdirat(workFd, wdir, 0o700));
      wfd = native.openat(workFd, wdir, O_PATH | O_DIRECTORY | O_NOFOLLOW, 0);
      if (wfd < 0 || native.setxattr(procPath(workFd, wdir), DEFAULT_ACL_XATTR, acl, 0, 0) < 0) {
        if (wfd >= 0) native.close(wfd);
        native.unlinkat(workFd, wdir, AT_REMOVEDIR);
        throw new FsError(E.EIO);
      }
    }
    const tmp = this.tmpName();
    try {
      const r = asCaller(this.id, caller, () => make(wfd, tmp));
      if (r < 0) throw new FsError(-r);
      try {
        if (opaqueNeeded) this.setOpaque(t, wfd, tmp);
        if (type === S_IFDIR) {
          check(native.renameat2(wfd, tmp, pfd, name, RENAME_EXCHANGE));
          native.unlinkat(wfd, tmp, 0);  // the whiteout, swapped out
        } else {
          check(native.renameat2(wfd, tmp, pfd, name, 0));
        }
      } catch (e) {
        native.unlinkat(wfd, tmp, type === S_IFDIR ? AT_REMOVEDIR : 0);
        if (r > 0 && type === S_IFREG) native.close(r);
        throw e;
      }
      return r;
    } finally {
      if (acl) {
        native.close(wfd);
        native.unlinkat(workFd, wdir, AT_REMOVEDIR);
      }
    }
  }

  protected setOpaque(t: number, dirfd: number, name: string): void {
    this.codec(t).markOpaque(dirfd, name);
  }

  protected made(p: UNode, name: string): Entry {
    const e = this.entry(p, name);
    if (!e) throw new FsError(E.EIO);
    return this.reply(e);
  }

  mknod(parent: number, name: string, mode: number, rdev: number, caller: Caller): Entry {
    // as kernel overlayfs: a char device 0/0 would be a whiteout, and vanish
    if ((mode & S_IFMT) === S_IFCHR && rdev === 0) throw new FsError(E.EPERM);
    const p = this.node(parent);
    this.createUpper(p, name, mode & S_IFMT, caller, (fd, at, m) => native.mknodat(fd, at, m, rdev), mode);
    return this.made(p, name);
  }

  mkdir(parent: number, name: string, mode: number, caller: Caller): Entry {
    const p = this.node(parent);
    this.createUpper(p, name, S_IFDIR, caller, (fd, at, m) => native.mkdirat(fd, at, m), mode);
    return this.made(p, name);
  }

  symlink(target: string, parent: number, name: string, caller: Caller): Entry {
    const p = this.node(parent);
    this.createUpper(p, name, S_IFLNK, caller, (fd, at) => native.symlinkat(target, fd, at), 0o777);
    return this.made(p, name);
  }

  create(parent: number, name: string, mode: number, flags: number, caller: Caller): { entry: Entry; opened: Opened } {
    const p = this.node(parent);
    const fd = this.createUpper(p, name, S_IFREG, caller, (dfd, at, m) =>
      native.openat(dfd, at, this.openFlags(flags) | O_CREAT | O_EXCL, m), mode);
    try {
      const entry = this.made(p, name);
      return { entry, opened: { fd, noSync: !this.opts.fsync, passthrough: this.passthroughFor(this.node(entry.nodeid)) } };
    } catch (e) {
      native.close(fd);
      throw e;
    }
  }

  link(nodeid: number, newparent: number, newname: string, caller: Caller): Entry {
    const n = this.node(nodeid), q = this.node(newparent);
    this.copyUp(n, false);
    // a hard link lives in its file's layer: where the new name would not show there, the
    // file moves up first (only a file with one name can: EXDEV)
    const layer = n.indexKey ? UPPER : this.placeNew(q, newname, false, n.wl);
    if (layer !== n.wl && !n.indexKey) this.copyUpTo(n, layer, false);
    const t = this.top(n);
    this.createUpper(q, newname, n.type, caller, (fd, at) => native.linkat(t.dirfd, t.name, fd, at, 0), -1, layer);
    // one node for every name of the upper inode: the kernel caches attributes per node
    this.dropName(q, newname);
    attachLink(q, newname, n);
    if (n.indexKey) this.addNlink(n, 1);
    n.nlookup++;
    return { nodeid: n.id, attr: this.attrs(n) };
  }
}
