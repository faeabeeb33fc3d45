// Attributes: setattr (owner, mode, size, times), readlink, and xattrs (the union's own never
// shown).
import { native } from '../sys/native';
import { FsError, check } from '../sys/errors';
import { AT_EMPTY_PATH, E, O_NOFOLLOW, O_WRONLY } from '../sys/constants';
import { setSizeAndTimes } from '../fuse/setattr';
import { ST_MODE } from '../sys/stat';
import type { AttrReply, SetAttr } from '../fuse/filesystem';
import { SETATTR } from '../fuse/ops';
import { type UNode } from './nodes';
import type { Caller } from '../fuse/filesystem';
import { ROOT_ID } from '../fuse/ops';
import { procPath } from './whiteout';
import { isPrivateXattr } from './xattrs';
import { formatOverride, isOverrideXattr } from './ids';
import { ST_GID, ST_UID } from '../sys/stat';
import { CONTROL_ID, NOFOLLOW } from './core';
import { UnionRename } from './rename';

export abstract class UnionAttrs extends UnionRename {
  setattr(nodeid: number, s: SetAttr): AttrReply {
    const n = this.node(nodeid);
    const v = s.valid;
    this.copyUp(n, (v & SETATTR.SIZE) !== 0 && s.size === 0 && !s.fh);
    const t = this.top(n);
    const fl = t.name ? NOFOLLOW : AT_EMPTY_PATH | NOFOLLOW;
    const ids = this.opts.ids;
    if (ids.p.xattrPermissions && v & (SETATTR.MODE | SETATTR.UID | SETATTR.GID)) {
      // rootless: owner and mode live in the override xattr, as containers-storage keeps them
      const cur = this.attrs(n);
      const uid = v & SETATTR.UID ? s.uid : cur[ST_UID];
      const gid = v & SETATTR.GID ? s.gid : cur[ST_GID];
      const mode = v & SETATTR.MODE ? s.mode : cur[ST_MODE];
      check(native.setxattr(procPath(t.dirfd, t.name), ids.overrideXattr, Buffer.from(formatOverride(uid, gid, mode)), 0, t.name ? 0 : 1));
    } else {
      if (v & SETATTR.MODE) check(native.fchmodat(t.dirfd, t.name, s.mode, fl));
      if (v & (SETATTR.UID | SETATTR.GID)) {
        check(native.fchownat(t.dirfd, t.name, v & SETATTR.UID ? ids.storeUid(s.uid) : -1, v & SETATTR.GID ? ids.storeGid(s.gid) : -1, fl));
      }
    }
    setSizeAndTimes(s, () => native.openat(t.dirfd, t.name, O_WRONLY | O_NOFOLLOW, 0), (a, an, m, mn) =>
      (t.name ? native.utimensat(t.dirfd, t.name, a, an, m, mn, NOFOLLOW) : native.utimensat(-100, procPath(t.dirfd, ''), a, an, m, mn, 0)));
    return { attr: this.attrs(n) };
  }

  readlink(nodeid: number): string {
    const t = this.top(this.node(nodeid));
    const r = native.readlinkat(t.dirfd, t.name);
    if (typeof r === 'number') throw new FsError(-r);
    return r;
  }

  // ---- xattrs (the union's own are never shown) ----

  protected xpath(n: UNode): { path: string; follow: number } {
    const t = this.top(n);
    return { path: procPath(t.dirfd, t.name), follow: t.name ? 0 : 1 };
  }

  setxattr(nodeid: number, name: string, value: Buffer, flags: number, caller: Caller): void {
    if (this.control(nodeid, name, value, caller)) return;
    if (this.opts.noXattrs) throw new FsError(E.EOPNOTSUPP);
    if (isPrivateXattr(name) || (this.opts.ids.p.xattrPermissions && isOverrideXattr(name))) throw new FsError(E.EPERM);
    const n = this.node(nodeid);
    this.copyUp(n, false);
    const { path, follow } = this.xpath(n);
    check(native.setxattr(path, name, value, flags, follow));
  }

  /** aufs's introspection xattrs; null for any other name. */
  protected introspection(n: UNode, name: string): Buffer | null {
    const q = this.opts.introspect;
    if (!q || !name.startsWith(q.prefix)) return null;
    const key = name.slice(q.prefix.length);
    if (key === 'branch') return Buffer.from(this.layers[this.topLayer(n)].path);
    if (key === 'branches') return Buffer.from(this.dirLayers(n).map((i) => this.layers[i].path).join('\n'));
    if (key === 'si' && n.id === ROOT_ID) return Buffer.from(JSON.stringify(q.table));
    if (key === 'error' && n.id === ROOT_ID) return Buffer.from(this.ctlError);
    // the kernel has every invalidation the last verb sent (they go out asynchronously)
    if (key === 'settled' && n.id === ROOT_ID) return Buffer.from(native.notifyPending() ? '0' : '1');
    return null;
  }

  private ctlError = '';

  /** A branch verb (aufs): only from root or the mount's owner. */
  protected control(nodeid: number, name: string, value: Buffer, caller: Caller): boolean {
    const q = this.opts.introspect;
    if (!q || name !== `${q.prefix}ctl`) return false;
    if ((nodeid !== ROOT_ID && nodeid !== CONTROL_ID) || !q.control) throw new FsError(E.EINVAL);
    if (caller.uid !== 0 && caller.uid !== process.geteuid?.()) throw new FsError(E.EPERM);
    try {
      q.control(value.toString('utf8'));
      this.ctlError = '';
    } catch (e) {
      this.ctlError = (e as Error).message || String(e);
      throw e instanceof FsError ? e : new FsError(E.EIO, this.ctlError);
    }
    return true;
  }

  getxattr(nodeid: number, name: string): Buffer {
    const shown = this.introspection(nodeid === CONTROL_ID ? this.root : this.node(nodeid), name);
    if (shown) return shown;
    if (nodeid === CONTROL_ID) throw new FsError(E.ENODATA);
    if (this.opts.noXattrs) throw new FsError(E.EOPNOTSUPP);
    if (isPrivateXattr(name) || (this.opts.ids.p.xattrPermissions && isOverrideXattr(name))) throw new FsError(E.ENODATA);
    const { path, follow } = this.xpath(this.node(nodeid));
    const r = native.getxattr(path, name, follow);
    if (typeof r === 'number') throw new FsError(-r);
    return r;
  }

  listxattr(nodeid: number): string[] {
    const q = this.opts.introspect;
    if (nodeid === CONTROL_ID && q) return ['si', 'branches', 'error', 'settled'].map((k) => q.prefix + k);
    if (this.opts.noXattrs) return [];
    const { path, follow } = this.xpath(this.node(nodeid));
    const r = native.listxattr(path, follow);
    if (typeof r === 'number') throw new FsError(-r);
    const hideOverride = this.opts.ids.p.xattrPermissions !== 0;
    return r.toString('utf8').split('\0').filter((s) => s.length > 0 && !isPrivateXattr(s) && !(hideOverride && isOverrideXattr(s)));
  }

  removexattr(nodeid: number, name: string): void {
    if (this.opts.noXattrs) throw new FsError(E.EOPNOTSUPP);
    if (isPrivateXattr(name) || (this.opts.ids.p.xattrPermissions && isOverrideXattr(name))) throw new FsError(E.EPERM);
    const n = this.node(nodeid);
    this.copyUp(n, false);
    const { path, follow } = this.xpath(n);
    check(native.removexattr(path, name, follow));
  }
}
