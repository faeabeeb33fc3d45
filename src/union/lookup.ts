// Lookup and merge: names top-down through the layers (whiteouts, opaque dirs, redirects),
// the merged listings of directories, getattr.
import { native } from '../sys/native';
import { S_IFDIR, S_IFMT, S_IFREG } from '../sys/constants';
import { ST_INO, ST_MODE, ST_NLINK, newStat, type Stat } from '../sys/stat';
import type { AttrReply, Entry } from '../fuse/filesystem';
import { dirName, joinPath } from './layers';
import { attachLink, unionPath, type LowerRef, type UNode } from './nodes';
import { dirOpacity, isHiddenName, probe, procPath, visibleEntries } from './whiteout';
import { REDIRECT_XATTRS } from './xattrs';
import { lowerList, type LowerSource } from './lowerlist';
import { statByHandle } from '../sys/handles';
import { UnionCore, CONTROL_ID, NOFOLLOW, UPPER } from './core';
import { ROOT_ID } from '../fuse/ops';

export abstract class UnionLookup extends UnionCore {
  protected lookupIn(p: UNode, name: string): { st: Stat; upper: boolean; wl: number; lowers: LowerRef[]; type: number; opaque: boolean; upperXwh: boolean; ino: number; upperRedirect: string | null } | null {
    if (isHiddenName(name, this.opts.showWhiteouts)) return null;
    // a fresh merged listing of p says where name is: absent (no syscall at all), or the top
    // layer that shows it, so the layers above are not probed (whiteouts were applied by merge)
    const li = this.listings.get(p.id);
    let startLayer = -1;
    if (li && li.until > Date.now()) {
      const layer = li.names.get(name);
      if (layer === undefined) return null;
      if (!p.upper || layer !== p.wl) startLayer = layer;
    }
    const st = newStat();
    let found = false, upper = false, type = 0, opaque = false, upperXwh = false, ino = 0, wl = p.wl;
    let redirect: string | null = null, upperRedirect: string | null = null;
    const lowers: LowerRef[] = [];
    if (p.upper && startLayer < 0) {
      const ufd = this.upperDirFd(p);
      const pr = probe(ufd, name, st, p.upperXwh);
      if (pr === 'whiteout') return null;
      if (pr === 'found') {
        found = upper = true;
        type = st[ST_MODE] & S_IFMT;
        // the listing already read the origin of this inode (a READDIRPLUS looks up every name)
        const known = li?.upperInos?.get(name);
        ino = known && known[0] === st[ST_INO] ? known[1] : this.originIno(ufd, name) || this.mapIno(p.wl, st[ST_INO]);
        if (type !== S_IFDIR) return { st, upper, wl, lowers, type, opaque, upperXwh, ino, upperRedirect };
        const o = dirOpacity(ufd, name);
        opaque = o.opaque;
        upperXwh = o.xwhiteouts;
        // below an opaque dir nothing merges (no lowers), but the dir is opaque only by its own xattr
        if (opaque || p.opaque) return { st, upper, wl, lowers, type, opaque, upperXwh, ino, upperRedirect };
        redirect = upperRedirect = this.readRedirect(ufd, name);
      }
    }
    if (p.opaque) return found ? { st, upper, wl, lowers, type, opaque, upperXwh, ino, upperRedirect } : null;
    const lst = newStat();
    // the layers to search: the parent's lower dirs; after an absolute redirect (in the upper or
    // in a lower) the root's, from the layer below the one that redirected (the kernel's poe = roe)
    let refs = redirect?.startsWith('/') ? this.root.lowers : p.lowers;
    for (let i = 0; i < refs.length; i++) {
      const ref = refs[i];
      if (startLayer >= 0 && ref.layer < startLayer) continue;
      let at: { pfd: number; base: string; path: string; stop: boolean };
      if (redirect?.startsWith('/')) {
        const w = this.walkAbsolute(ref.layer, redirect);
        redirect = w.name;
        if (w.pfd < 0) {
          if (w.stop) break;
          continue;
        }
        at = w;
      } else {
        const base = redirect ?? name;
        at = { pfd: this.dirs.tryFd(ref.layer, ref.path), base, path: joinPath(ref.path, base), stop: false };
        if (at.pfd < 0) continue;
      }
      const { pfd, base, path } = at;
      const pr = probe(pfd, base, lst, redirect === null && ref.xwh);
      if (pr === 'whiteout') break;
      if (pr === 'none') {
        if (at.stop) break;
        continue;
      }
      const t = lst[ST_MODE] & S_IFMT;
      // (aufs) the top object in a writable branch below the parent's top: changed in place
      const inPlace = !found && redirect === null && this.layers[ref.layer].writable;
      if (!found) {
        found = true;
        type = t;
        st.set(lst);
        ino = (inPlace && this.originIno(pfd, base)) || this.mapIno(ref.layer, lst[ST_INO]);
        if (inPlace) {
          upper = true;
          wl = ref.layer;
        }
        if (t !== S_IFDIR) {
          if (!inPlace) lowers.push({ layer: ref.layer, path, xwh: false });
          break;
        }
      } else if (t !== S_IFDIR || type !== S_IFDIR) break;
      if (!upper && lowers.length === 0) ino = this.mapIno(ref.layer, lst[ST_INO]);
      const o = dirOpacity(pfd, base);
      if (inPlace) {
        opaque = o.opaque;
        upperXwh = o.xwhiteouts;
      } else lowers.push({ layer: ref.layer, path, xwh: o.xwhiteouts });
      if (o.opaque || at.stop) break;
      const r = this.readRedirect(pfd, base);
      if (r !== null) {
        // a relative redirect replaces the last component of the name looked up, which stays
        // absolute once an absolute redirect was followed (the kernel's ovl_check_redirect);
        // (aufs dirren) one on a dir in a writable branch: its lower parts are found by the old name
        redirect = r.startsWith('/') || !redirect?.startsWith('/') ? r : `/${joinPath(dirName(path), r)}`;
        if (inPlace) upperRedirect = redirect;
        if (redirect.startsWith('/') && refs !== this.root.lowers) {
          refs = this.root.lowers;
          i = refs.findIndex((x) => x.layer === ref.layer);
        }
      }
    }
    if (!found) return null;
    return { st, upper, wl, lowers, type, opaque, upperXwh, ino, upperRedirect };
  }

  protected readRedirect(dirfd: number, name: string): string | null {
    if (this.opts.followRedirects === false) return null;
    for (const a of REDIRECT_XATTRS) {
      const v = native.getxattr(procPath(dirfd, name), a, 0);
      if (typeof v !== 'number' && v.length) return v.toString('utf8');
    }
    return null;
  }

  /**
   * An absolute name (from a redirect) in one layer, walked as the kernel's ovl_lookup_layer
   * does: one component at a time, no symlink followed; a redirect on an intermediate dir
   * rewrites the name (the walk goes on below that dir); a whiteout or a non-dir there ends the
   * lookup; an opaque one ends it after this layer. pfd < 0: the parent is not in this layer.
   */
  protected walkAbsolute(layer: number, abs: string): { pfd: number; base: string; path: string; name: string; stop: boolean } {
    let name = abs;
    let stop = false;
    const parts = abs.slice(1).split('/');
    let dir = '';
    const st = newStat();
    for (let j = 0; j < parts.length - 1; j++) {
      const fd = this.dirs.tryFd(layer, dir);
      if (fd < 0) return { pfd: -1, base: '', path: '', name, stop };
      const pr = probe(fd, parts[j], st, false);
      if (pr === 'none') return { pfd: -1, base: '', path: '', name, stop };
      if (pr === 'whiteout' || (st[ST_MODE] & S_IFMT) !== S_IFDIR) return { pfd: -1, base: '', path: '', name, stop: true };
      if (dirOpacity(fd, parts[j]).opaque) stop = true;
      const r = this.readRedirect(fd, parts[j]);
      const rest = parts.slice(j + 1).join('/');
      if (r !== null) name = r.startsWith('/') ? `${r}/${rest}` : `/${joinPath(joinPath(parts.slice(0, j).join('/'), r), rest)}`;
      dir = joinPath(dir, parts[j]);
    }
    const base = parts[parts.length - 1];
    return { pfd: this.dirs.tryFd(layer, dir), base, path: joinPath(dir, base), name, stop };
  }

  protected entry(p: UNode, name: string): { node: UNode; st: Stat } | null {
    const r = this.lookupIn(p, name);
    if (!r) {
      this.dropName(p, name);
      return null;
    }
    let n = p.kids.get(name);
    if (n && (n.type !== r.type || n.ino !== r.ino)) {
      this.dropName(p, name);
      n = undefined;
    }
    let realIno = r.st[ST_INO];
    // a lower hard link: one node for all its names; once copied up, its data is the index entry
    const hkey = !r.upper && r.type === S_IFREG && r.st[ST_NLINK] > 1 && this.indexFd >= 0
      ? `${this.layers[r.lowers[0].layer].rootIno}-${realIno}` : null;
    let indexed = false;
    if (hkey && native.fstatat(this.indexFd, hkey, NOFOLLOW, r.st) === 0) {
      indexed = true;
      realIno = r.st[ST_INO];
    }
    if (!n && hkey) {
      const same = this.byIndexKey.get(hkey);
      if (same && this.nodes.has(same.id)) n = same;
    }
    if (!n && (r.upper || indexed) && r.type !== S_IFDIR && r.st[ST_NLINK] > 1) {
      const same = this.byUpperIno.get(realIno);
      if (same && this.nodes.has(same.id) && (same.upper || same.indexKey)) n = same;
    }
    if (n && !p.kids.has(name)) attachLink(p, name, n);
    if (!n) {
      n = this.newNode(this.nextId++, r.type);
      attachLink(p, name, n);
    }
    if ((r.upper || indexed) && r.type !== S_IFDIR && r.st[ST_NLINK] > 1) this.byUpperIno.set(realIno, n);
    if (hkey) this.byIndexKey.set(hkey, n);
    if (indexed) n.indexKey = hkey;
    if (!n.indexKey && r.upper && r.wl === UPPER && r.type === S_IFREG && r.st[ST_NLINK] > 1 && this.indexFd >= 0) {
      // an upper link of a copied-up lower hard link (e.g. after a remount): its inode says so
      const v = native.getxattr(procPath(this.dirOn(p, r.wl), name), this.x.index, 0);
      if (typeof v !== 'number') {
        n.indexKey = v.toString();
        this.byIndexKey.set(n.indexKey, n);
      }
    }
    n.upper = r.upper || n.upper && n.indexKey !== null;
    if (r.upper) n.wl = r.wl;
    n.lowers = r.lowers.length || !n.indexKey ? r.lowers : n.lowers;
    n.opaque = r.opaque;
    n.upperXwh = r.upperXwh;
    n.redirect = r.upperRedirect;
    n.ino = r.ino;
    if (n.type === S_IFDIR) this.watchLowers(n);
    this.present(n, r.st);
    return { node: n, st: r.st };
  }

  protected reply(e: { node: UNode; st: Stat }): Entry {
    e.node.nlookup++;
    return { nodeid: e.node.id, attr: e.st };
  }

  lookup(parent: number, name: string): Entry | null {
    if (parent === ROOT_ID && name === this.opts.introspect?.fileName) return { nodeid: CONTROL_ID, attr: this.controlStat() };
    const e = this.entry(this.node(parent), name);
    return e ? this.reply(e) : null;
  }

  forget(nodeid: number, nlookup: number): void {
    const n = this.nodes.get(nodeid);
    if (!n || n === this.root) return;
    n.nlookup = Math.max(0, n.nlookup - nlookup);
    this.maybeFree(n);
  }

  renode(nodeid: number): void {
    const n = this.nodes.get(nodeid);
    if (!n || n === this.root) return;
    for (const [k, v] of this.byUpperIno) if (v === n) this.byUpperIno.delete(k);
    for (const [k, v] of this.byIndexKey) if (v === n) this.byIndexKey.delete(k);
    for (const l of [...n.links]) {
      this.dropName(l.parent, l.name);
      for (const x of this.notifiers) x.invalEntry(l.parent.id, l.name);
    }
  }

  getattr(nodeid: number): AttrReply {
    if (nodeid === CONTROL_ID) return { attr: this.controlStat() };
    const n = this.node(nodeid);
    try {
      return { attr: this.attrs(n) };
    } catch (e) {
      // an unlinked file that is still open: its handles still know it
      const st = newStat();
      if (statByHandle(n.id, st)) {
        this.present(n, st);
        return { attr: st };
      }
      if (n.gone && !n.links.length) return { attr: n.gone };  // a removed dir still held open
      throw e;
    }
  }

  protected listNames(n: UNode): string[] {
    const out: string[] = [];
    this.merge(n, (name) => out.push(name), true);
    return out;
  }

  /** Walks the layers of a directory top-down, applying whiteouts and opaque dirs. The lowers'
   * merge is shared with other unions over the same lower dirs while they are watched. */
  protected merge(n: UNode, emit: (name: string, ino: number, type: number, layer: number, raw: number) => void, namesOnly = false): void {
    const seen = new Set<string>();
    if (n.upper) {
      const fd = this.dirs.tryFd(n.wl, unionPath(n));
      if (fd >= 0) visibleEntries(fd, n.upperXwh, seen, (name, type, raw) =>
        emit(name, namesOnly ? 0 : this.originIno(fd, name) || this.mapIno(n.wl, raw), type, n.wl, namesOnly ? 0 : raw), this.opts.showWhiteouts);
    }
    if (n.opaque) return;
    const sources: LowerSource[] = [];
    const layers: number[] = [];
    for (const l of n.lowers) {
      const fd = this.dirs.tryFd(l.layer, l.path);
      if (fd < 0) continue;
      sources.push({ key: this.lowerKey(l.layer, l.path), fd, xwh: l.xwh, showWh: this.opts.showWhiteouts });
      layers.push(l.layer);
    }
    if (!sources.length) return;
    const ll = lowerList(sources, this.opts.timeout * 1000);
    for (let i = 0; i < ll.names.length; i++) {
      const name = ll.names[i];
      if (seen.has(name)) continue;
      const layer = layers[ll.from[i]];
      emit(name, namesOnly ? 0 : this.mapIno(layer, ll.inos[i]), ll.types[i], layer, ll.inos[i]);
    }
  }
}
