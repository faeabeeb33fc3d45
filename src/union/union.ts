// The union engine: overlayfs semantics over an upper layer and read-only lowers. Lookup goes
// top-down; a non-directory hides everything below it; directories merge until an opaque one.
// Writes go to the upper layer after a copy-up; removals of lower objects leave whiteouts.
import { native, type DirList } from '../sys/native';
import { FsError, check } from '../sys/errors';
import {
  AT_EMPTY_PATH, AT_REMOVEDIR, AT_SYMLINK_NOFOLLOW, E, O_ACCMODE, O_APPEND, O_CREAT, O_DIRECT, O_DIRECTORY,
  O_EXCL, O_NOFOLLOW, O_PATH, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT,
  S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, UTIME_NOW, UTIME_OMIT,
} from '../sys/constants';
import { ST_INO, ST_MODE, ST_NLINK, ST_SIZE, STATFS_LEN, newStat, type Stat } from '../sys/stat';
import type { AttrReply, Caller, DirOpened, Entry, Filesystem, Notifier, Opened, SetAttr } from '../fuse/filesystem';
import { ROOT_ID, SETATTR } from '../fuse/ops';
import { DEFAULT_ACL_XATTR, creationMode, defaultAcl } from '../fuse/modes';
import { openNoatime, touchAtime, wantsAtime, type AtimePolicy } from '../fuse/atime';
import { asCaller, type Identity } from '../sys/identity';
import { LayerDirs, baseName, dirName, joinPath, type Layer } from './layers';
import { attachLink, detachLink, unionPath, type LowerRef, type UNode } from './nodes';
import {
  WH_PREFIX, dirOpacity, isCharWhiteout, isHiddenName, probe, procPath, visibleEntries,
  type WhiteoutFormat,
} from './whiteout';
import { isPrivateXattr, ORIGIN_XATTRS, REDIRECT_XATTRS, xattrNames, type XattrNames } from './xattrs';
import { buildCopy, keepTimes } from './copyup';
import { LRUCache } from 'lru-cache';
import { LowerWatcher } from './watch';
import { lowerList, type LowerSource } from './lowerlist';
import { statByHandle } from '../sys/handles';
import { formatOverride, Ids, isOverrideXattr, OVERRIDE_XATTRS } from './ids';
import { ST_GID, ST_UID } from '../sys/stat';

export interface UnionOptions {
  /** The kernel cache time (timeout=SECS): listings are kept across opens only when it is long. */
  timeout: number;
  /** Watch lower dirs (inotify) and invalidate at once what changed behind the union's back. */
  watch: boolean;
  format: WhiteoutFormat;
  ids: Ids;
  redirectDir: boolean;   // rename lower dirs with a redirect (else EXDEV)
  fsync: boolean;         // false: volatile, fsync is a no-op and copy-ups are not synced
  writeback: boolean;
  noXattrs: boolean;
  staticNlink: boolean;
  atime: AtimePolicy;
  /** Regular files are opened with FUSE passthrough when the session has it. */
  passthrough: boolean;
  /** Without passthrough, serve read-only opens of lower files direct (FOPEN_DIRECT_IO): their
   * data is then cached once, in the lower file's page cache, for every mount of that layer
   * ('shared': every such open; 'auto': big data files only, see sharedLowerOpen). */
  sharedLowerCache?: 'auto' | 'shared' | 'private';
}

const FUSE_DIRECT_IO_ALLOW_MMAP = 2 ** 36, FUSE_PASSTHROUGH = 2 ** 37;
const FMODE_EXEC = 0x20;                 // in the open flags of an exec (open_exec)
const SHARED_MIN_SIZE = 64 << 20;        // page_cache=auto: files this big share one page cache
const hasFlag = (flags: number, bit: number): boolean => Math.floor(flags / bit) % 2 === 1;

const NOFOLLOW = AT_SYMLINK_NOFOLLOW;
/** Makes one object at dirfd/at with the given mode; returns an fd (files), 0, or -errno. */
type Make = (dirfd: number, at: string, mode: number) => number;

/** A directory's merged listing: for each visible name, the top layer showing it. */
interface Listing {
  until: number;                   // valid until (ms): the timeout, for changes behind our back
  names: Map<string, number>;      // name -> layer index of the top object
  upperInos?: Map<string, [number, number]>;   // upper name -> [its st_ino, the ino shown]
}
const LONG_TIMEOUT = 3600;
const UPPER = 0;

export class Union implements Filesystem {
  readonly layers: Layer[];
  private readonly hasUpper: boolean;
  private readonly lowerStart: number;
  private readonly dirs: LayerDirs;
  private readonly workFd: number;
  private readonly x: XattrNames;
  private readonly nodes = new Map<number, UNode>();
  private readonly byUpperIno = new Map<number, UNode>();  // upper non-dirs with several names
  private readonly byIndexKey = new Map<string, UNode>();  // lower hard links, one node for all names
  // merged listings of directories, by node: which layer shows each name (see lookupIn)
  private readonly listings = new LRUCache<number, Listing>({ max: 1024 });
  private readonly root: UNode;
  private nextId = ROOT_ID + 1;
  private tmpSeq = 0;
  private notifiers: Notifier[] = [];
  private readonly watcher: LowerWatcher | null;
  private directLower = false;

  /** layers: the upper first when there is one (writable), then the lowers top to bottom. */
  constructor(layers: Layer[], workFd: number, private readonly opts: UnionOptions,
    private readonly id: Identity, private readonly indexFd = -1) {
    this.layers = layers;
    this.hasUpper = layers.length > 0 && layers[0].writable;
    this.lowerStart = this.hasUpper ? 1 : 0;
    this.workFd = workFd;
    this.dirs = new LayerDirs(layers);
    this.x = xattrNames(opts.format.ns);
    this.root = this.newNode(ROOT_ID, S_IFDIR);
    this.root.nlookup = 1;
    this.watcher = opts.watch ? new LowerWatcher((id, name) => this.lowerChanged(id, name), 32768) : null;
    this.resolveRoot();
    this.watchLowers(this.root);
  }

  private watchLowers(n: UNode): void {
    if (!this.watcher) return;
    for (const l of n.lowers) {
      const fd = this.dirs.tryFd(l.layer, l.path);
      if (fd >= 0) this.watcher.add(n.id, this.lowerKey(l.layer, l.path), fd);
    }
  }

  /** A lower dir of node id changed (name, when known): drop what the daemon and kernel cached. */
  private lowerChanged(id: number, name: string | null): void {
    const n = this.nodes.get(id);
    if (!n) return;
    this.listings.delete(id);
    for (const x of this.notifiers) {
      x.invalData(id);
      if (name) {
        x.invalEntry(id, name);
        const child = n.kids.get(name);
        if (child) x.invalData(child.id);
      }
    }
  }

  /** INIT: lower reads are served direct only where the kernel can still mmap such files
   * (FUSE_DIRECT_IO_ALLOW_MMAP, 7.39) and no backing file is handed over instead. */
  init(info: { protoMinor: number; want: number; maxWrite: number }): void {
    this.directLower = (this.opts.sharedLowerCache ?? 'private') !== 'private' && hasFlag(info.want, FUSE_DIRECT_IO_ALLOW_MMAP) &&
      !hasFlag(info.want, FUSE_PASSTHROUGH);
  }

  attach(n: Notifier): void {
    this.notifiers.push(n);
  }

  /** The mount ended: every fd and watch this union holds goes (the resident service lives on). */
  close(): void {
    this.watcher?.close();
    this.dirs.close();
    this.listings.clear();
    this.nodes.clear();
    this.byUpperIno.clear();
    this.byIndexKey.clear();
    this.notifiers = [];
    for (const l of this.layers) native.close(l.fd);
    if (this.workFd >= 0) native.close(this.workFd);
    if (this.indexFd >= 0) native.close(this.indexFd);
  }

  private invalAttr(n: UNode): void {
    for (const x of this.notifiers) x.invalAttr(n.id);
  }

  // ---- nodes ----

  private newNode(id: number, type: number): UNode {
    const n: UNode = { id, links: [], kids: new Map(), type, nlookup: 0, upper: false, upperXwh: false, lowers: [], opaque: false, ino: 0, indexKey: null, redirect: null };
    this.nodes.set(id, n);
    return n;
  }

  private node(id: number): UNode {
    const n = this.nodes.get(id);
    if (!n) throw new FsError(E.ESTALE);
    return n;
  }

  private resolveRoot(): void {
    const r = this.root;
    const st = newStat();
    if (this.hasUpper) {
      r.upper = true;
      const o = dirOpacity(this.layers[UPPER].fd, '');
      r.opaque = o.opaque;
      r.upperXwh = o.xwhiteouts;
    }
    if (!r.opaque) {
      for (let i = this.lowerStart; i < this.layers.length; i++) {
        const o = dirOpacity(this.layers[i].fd, '');
        r.lowers.push({ layer: i, path: '', xwh: o.xwhiteouts });
        if (o.opaque) break;
      }
    }
    check(native.fstatat(this.layers[r.upper ? UPPER : r.lowers[0].layer].fd, '', AT_EMPTY_PATH | NOFOLLOW, st));
    r.ino = r.lowers.length ? this.topLowerIno(r) : this.mapIno(UPPER, st[ST_INO]);
  }

  private maybeFree(n: UNode): void {
    if (n === this.root || n.nlookup > 0 || n.kids.size > 0) return;
    this.nodes.delete(n.id);
    this.watcher?.forget(n.id);
    this.listings.delete(n.id);
    for (const [k, v] of this.byUpperIno) if (v === n) { this.byUpperIno.delete(k); break; }
    if (n.indexKey && this.byIndexKey.get(n.indexKey) === n) this.byIndexKey.delete(n.indexKey);
    for (const [k, v] of this.byIndexKey) if (v === n) { this.byIndexKey.delete(k); break; }
    const links = n.links;
    n.links = [];
    for (const l of links) {
      if (l.parent.kids.get(l.name) === n) l.parent.kids.delete(l.name);
      this.maybeFree(l.parent);
    }
  }

  /** Removes a name from the tree (the object is gone or moved); frees what nobody holds. */
  private dropName(parent: UNode, name: string): UNode | undefined {
    const child = detachLink(parent, name);
    if (child) {
      if (child.type === S_IFDIR && child.upper) this.dirs.forget(UPPER, joinPath(unionPath(parent), name));
      this.maybeFree(child);
    }
    return child;
  }

  // ---- inode numbers ----

  /** A layer's st_ino made unique in the union: layers on other filesystems move up by 2^32 steps. */
  private mapIno(layer: number, ino: number): number {
    const fs = this.layers[layer].fsIndex;
    return fs === 0 ? ino : ino + fs * 0x100000000;
  }

  private topLowerIno(n: UNode): number {
    const l = n.lowers[0];
    const st = newStat();
    const fd = this.dirs.tryFd(l.layer, dirName(l.path));
    if (fd < 0 || native.fstatat(fd, l.path ? baseName(l.path) : '', l.path ? NOFOLLOW : AT_EMPTY_PATH | NOFOLLOW, st) < 0) return 0;
    return this.mapIno(l.layer, st[ST_INO]);
  }

  private originIno(dirfd: number, name: string): number {
    for (const a of ORIGIN_XATTRS) {
      const v = native.getxattr(procPath(dirfd, name), a, name ? 0 : 1);
      if (typeof v !== 'number') {
        const n = Number(v.toString('utf8'));
        if (Number.isFinite(n) && n > 0) return n;
      }
    }
    return 0;
  }

  // ---- where a node lives ----

  private upperDirFd(n: UNode): number {
    return this.dirs.fd(UPPER, unionPath(n));
  }

  /** (dirfd, name) of the node's top object: upper if present, else its lower. */
  private top(n: UNode): { dirfd: number; name: string; layer: number } {
    if (n === this.root) {
      const layer = n.upper ? UPPER : n.lowers[0].layer;
      return { dirfd: this.layers[layer].fd, name: '', layer };
    }
    if (n.indexKey) return { dirfd: this.indexFd, name: n.indexKey, layer: UPPER };
    if (n.upper) {
      const l = n.links[0];
      if (!l) throw new FsError(E.ESTALE);
      return { dirfd: this.upperDirFd(l.parent), name: l.name, layer: UPPER };
    }
    const lo = n.lowers[0];
    if (!lo) throw new FsError(E.ESTALE);
    return { dirfd: this.dirs.fd(lo.layer, dirName(lo.path)), name: baseName(lo.path), layer: lo.layer };
  }

  private statTop(n: UNode, st: Stat): void {
    const t = this.top(n);
    check(native.fstatat(t.dirfd, t.name, t.name ? NOFOLLOW : AT_EMPTY_PATH | NOFOLLOW, st));
  }

  /** The attributes shown for a node. */
  private attrs(n: UNode, st = newStat()): Stat {
    this.statTop(n, st);
    this.present(n, st);
    return st;
  }

  private present(n: UNode, st: Stat): void {
    if (this.opts.ids.active) this.opts.ids.present(st, this.opts.ids.p.xattrPermissions ? this.readOverride(n) : null);
    st[ST_INO] = n.ino;
    if (n.indexKey) {
      const v = native.getxattr(procPath(this.indexFd, n.indexKey), this.x.nlink, 0);
      if (typeof v !== 'number') st[ST_NLINK] = Number(v.toString()) || st[ST_NLINK];
    }
    if (n.type === S_IFDIR && (this.opts.staticNlink || (n.lowers.length > 0 && (n.upper || n.lowers.length > 1)))) {
      st[ST_NLINK] = 1;  // a merged directory: the kernel's overlayfs reports 1 as well
    }
  }

  // ---- lookup ----

  private lookupIn(p: UNode, name: string): { st: Stat; upper: boolean; lowers: LowerRef[]; type: number; opaque: boolean; upperXwh: boolean; ino: number; upperRedirect: string | null } | null {
    if (isHiddenName(name)) return null;
    // a fresh merged listing of p says where name is: absent (no syscall at all), or the top
    // layer that shows it, so the layers above are not probed (whiteouts were applied by merge)
    const li = this.listings.get(p.id);
    let startLayer = -1;
    if (li && li.until > Date.now()) {
      const layer = li.names.get(name);
      if (layer === undefined) return null;
      if (layer !== UPPER) startLayer = layer;
    }
    const st = newStat();
    let found = false, upper = false, type = 0, opaque = false, upperXwh = false, ino = 0;
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
        ino = known && known[0] === st[ST_INO] ? known[1] : this.originIno(ufd, name) || this.mapIno(UPPER, st[ST_INO]);
        if (type !== S_IFDIR) return { st, upper, lowers, type, opaque, upperXwh, ino, upperRedirect };
        const o = dirOpacity(ufd, name);
        opaque = o.opaque;
        upperXwh = o.xwhiteouts;
        // below an opaque dir nothing merges (no lowers), but the dir is opaque only by its own xattr
        if (opaque || p.opaque) return { st, upper, lowers, type, opaque, upperXwh, ino, upperRedirect };
        redirect = upperRedirect = this.readRedirect(ufd, name);
      }
    }
    if (p.opaque) return found ? { st, upper, lowers, type, opaque, upperXwh, ino, upperRedirect } : null;
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
      if (!found) {
        found = true;
        type = t;
        st.set(lst);
        ino = this.mapIno(ref.layer, lst[ST_INO]);
        if (t !== S_IFDIR) {
          lowers.push({ layer: ref.layer, path, xwh: false });
          break;
        }
      } else if (t !== S_IFDIR || type !== S_IFDIR) break;
      if (!upper && lowers.length === 0) ino = this.mapIno(ref.layer, lst[ST_INO]);
      const o = dirOpacity(pfd, base);
      lowers.push({ layer: ref.layer, path, xwh: o.xwhiteouts });
      if (o.opaque || at.stop) break;
      const r = this.readRedirect(pfd, base);
      if (r !== null) {
        // a relative redirect replaces the last component of the name looked up, which stays
        // absolute once an absolute redirect was followed (the kernel's ovl_check_redirect)
        redirect = r.startsWith('/') || !redirect?.startsWith('/') ? r : `/${joinPath(dirName(path), r)}`;
        if (redirect.startsWith('/') && refs !== this.root.lowers) {
          refs = this.root.lowers;
          i = refs.findIndex((x) => x.layer === ref.layer);
        }
      }
    }
    if (!found) return null;
    return { st, upper, lowers, type, opaque, upperXwh, ino, upperRedirect };
  }

  private readOverride(n: UNode): string | null {
    let t;
    try {
      t = this.top(n);
    } catch {
      return null;
    }
    for (const a of OVERRIDE_XATTRS) {
      const v = native.getxattr(procPath(t.dirfd, t.name), a, t.name ? 0 : 1);
      if (typeof v !== 'number') return v.toString('utf8');
    }
    return null;
  }

  private readRedirect(dirfd: number, name: string): string | null {
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
  private walkAbsolute(layer: number, abs: string): { pfd: number; base: string; path: string; name: string; stop: boolean } {
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

  private entry(p: UNode, name: string): { node: UNode; st: Stat } | null {
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
    if (!n.indexKey && r.upper && r.type === S_IFREG && r.st[ST_NLINK] > 1 && this.indexFd >= 0) {
      // an upper link of a copied-up lower hard link (e.g. after a remount): its inode says so
      const v = native.getxattr(procPath(this.upperDirFd(p), name), this.x.index, 0);
      if (typeof v !== 'number') {
        n.indexKey = v.toString();
        this.byIndexKey.set(n.indexKey, n);
      }
    }
    n.upper = r.upper || n.upper && n.indexKey !== null;
    n.lowers = r.lowers.length || !n.indexKey ? r.lowers : n.lowers;
    n.opaque = r.opaque;
    n.upperXwh = r.upperXwh;
    n.redirect = r.upperRedirect;
    n.ino = r.ino;
    if (n.type === S_IFDIR) this.watchLowers(n);
    this.present(n, r.st);
    return { node: n, st: r.st };
  }

  private reply(e: { node: UNode; st: Stat }): Entry {
    e.node.nlookup++;
    return { nodeid: e.node.id, attr: e.st };
  }

  lookup(parent: number, name: string): Entry | null {
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

  // ---- copy-up ----

  private tmpName(): string {
    return `#lfs-${process.pid}-${++this.tmpSeq}`;
  }

  private requireUpper(): void {
    if (!this.hasUpper) throw new FsError(E.EROFS);
  }

  /** Makes sure a directory node exists in the upper layer (copying up its parents first). */
  private ensureUpperDir(n: UNode): void {
    this.requireUpper();
    if (n.upper) return;
    this.copyUp(n, false);
  }

  /** Copies a lower object up; open handles on it are re-targeted to the copy. */
  private copyUp(n: UNode, skipData: boolean): void {
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
  private retargetHandles(n: UNode): void {
    const hs = native.handlesOf(n.id);
    if (!hs.length) return;
    const t = this.top(n);
    for (let i = 0; i < hs.length; i += 2) {
      const flags = (hs[i + 1] & ~(O_CREAT | O_EXCL | O_TRUNC | O_DIRECT)) | O_NOFOLLOW;
      const fd = native.openat(t.dirfd, t.name, flags, 0);
      if (fd >= 0 && native.retarget(hs[i], fd) < 0) native.close(fd);
    }
  }

  // ---- creation ----

  /** Does any lower layer show `name` under p (respecting whiteouts and opaque dirs)? */
  private lowerHas(p: UNode, name: string): boolean {
    if (p.opaque) return false;
    const st = newStat();
    for (const ref of p.lowers) {
      const pfd = this.dirs.tryFd(ref.layer, ref.path);
      if (pfd < 0) continue;
      const pr = probe(pfd, name, st, ref.xwh);
      if (pr === 'whiteout') return false;
      if (pr === 'found') return true;
    }
    return false;
  }

  /**
   * Creates an object at p/name in the upper layer as the caller, with the caller's mode (its
   * umask applied unless the upper parent has a default ACL). Over a whiteout the object is
   * built in the work dir and swapped in atomically; a new directory there is made opaque.
   */
  private createUpper(p: UNode, name: string, type: number, callerIn: Caller, make: Make, modeIn = -1): number {
    this.ensureUpperDir(p);
    this.listings.delete(p.id);
    const ids = this.opts.ids;
    const mode = modeIn >= 0 ? creationMode(this.upperDirFd(p), modeIn, callerIn.umask) : modeIn;
    // the caller's ids as stored on disk; with xattr_permissions the daemon owns the file and
    // the caller's owner and mode go into the override xattr
    const caller: Caller = ids.p.xattrPermissions ? { ...callerIn, uid: 0, gid: 0 }
      : { ...callerIn, uid: ids.storeUid(callerIn.uid), gid: ids.storeGid(callerIn.gid) };
    const r = this.createUpperAs(p, name, type, caller, (fd, at) => make(fd, at, mode));
    if (ids.p.xattrPermissions && mode >= 0) {
      const pfd = this.upperDirFd(p);
      native.setxattr(procPath(pfd, name), ids.overrideXattr, Buffer.from(formatOverride(callerIn.uid, callerIn.gid, mode)), 0, 0);
    }
    return r;
  }

  private createUpperAs(p: UNode, name: string, type: number, caller: Caller, make: (dirfd: number, at: string) => number): number {
    const pfd = this.upperDirFd(p);
    const st = newStat();
    const overChar = native.fstatat(pfd, name, NOFOLLOW, st) === 0 && isCharWhiteout(st);
    const overWh = !overChar && native.fstatat(pfd, WH_PREFIX + name, NOFOLLOW, st) === 0;
    // as the kernel: a new dir over a whiteout must hide what is below; in a merged parent it is
    // made opaque too (the kernel's optimisation, kept so the upper looks the same)
    const merged = p.upper && p.lowers.length > 0 && !p.opaque;
    const opaqueNeeded = type === S_IFDIR && (overChar || overWh || merged || this.lowerHas(p, name));
    if (!overChar) {
      const r = asCaller(this.id, caller, () => make(pfd, name));
      if (r < 0) throw new FsError(-r);
      if (opaqueNeeded) this.setOpaque(pfd, name);
      if (overWh) native.unlinkat(pfd, WH_PREFIX + name, 0);
      return r;
    }
    // built beside the work dir's other objects; in a parent with a default ACL, inside a work
    // subdir carrying the same default ACL, so the new object inherits it as it would in place
    const acl = defaultAcl(pfd);
    let wfd = this.workFd;
    const wdir = acl ? this.tmpName() : '';
    if (acl) {
      check(native.mkdirat(this.workFd, wdir, 0o700));
      wfd = native.openat(this.workFd, wdir, O_PATH | O_DIRECTORY | O_NOFOLLOW, 0);
      if (wfd < 0 || native.setxattr(procPath(this.workFd, wdir), DEFAULT_ACL_XATTR, acl, 0, 0) < 0) {
        if (wfd >= 0) native.close(wfd);
        native.unlinkat(this.workFd, wdir, AT_REMOVEDIR);
        throw new FsError(E.EIO);
      }
    }
    const tmp = this.tmpName();
    try {
      const r = asCaller(this.id, caller, () => make(wfd, tmp));
      if (r < 0) throw new FsError(-r);
      try {
        if (opaqueNeeded) this.setOpaque(wfd, tmp);
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
        native.unlinkat(this.workFd, wdir, AT_REMOVEDIR);
      }
    }
  }

  private setOpaque(dirfd: number, name: string): void {
    check(native.setxattr(procPath(dirfd, name), this.x.opaque, Buffer.from('y'), 0, 0));
  }

  private made(p: UNode, name: string): Entry {
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
    const t = this.top(n);
    this.createUpper(q, newname, n.type, caller, (fd, at) => native.linkat(t.dirfd, t.name, fd, at, 0));
    // one node for every name of the upper inode: the kernel caches attributes per node
    this.dropName(q, newname);
    attachLink(q, newname, n);
    if (n.indexKey) this.addNlink(n, 1);
    n.nlookup++;
    return { nodeid: n.id, attr: this.attrs(n) };
  }

  // ---- removal ----

  /** Leaves a whiteout at p/name (p is in the upper layer); `present`: an upper object is there now. */
  private whiteout(p: UNode, name: string, present: boolean, isDir: boolean): void {
    const pfd = this.upperDirFd(p);
    if (this.opts.format.charDevice) {
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
    const fd = check(native.openat(pfd, WH_PREFIX + name, O_CREAT | O_WRONLY | O_NOFOLLOW, 0o600));
    native.close(fd);
  }

  /** Removes an upper object; a directory (holding only whiteouts) through the work dir. */
  private removeUpper(pfd: number, name: string, isDir: boolean): void {
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
  private toRemove(parent: number, name: string): { p: UNode; e: { node: UNode; st: Stat } } {
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
  private upperHasName(p: UNode, name: string): boolean {
    if (!p.upper) return false;
    const st = newStat();
    return native.fstatat(this.upperDirFd(p), name, NOFOLLOW, st) === 0 && !isCharWhiteout(st);
  }

  /** A lower hard link copied up: its names live in the upper as links of the index entry. */
  private upperName(p: UNode, name: string, n: UNode): void {
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

  /** The link count of a copied-up lower hard link; at 0 its index entry goes too. */
  private addNlink(n: UNode, delta: number): void {
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
  private lastAttrs(n: UNode | undefined): () => void {
    if (!n || n.type !== S_IFDIR || n.nlookup === 0) return () => {};
    const st = this.attrs(n);
    return () => {
      if (!n.lowers.length) st[ST_NLINK] = 0;
      n.gone = st;
    };
  }

  // ---- rename ----

  rename(parent: number, name: string, newparent: number, newname: string, flags: number): void {
    // as kernel overlayfs: RENAME_WHITEOUT (or any other flag) is refused before anything else
    if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) throw new FsError(E.EINVAL);
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
        else if (!this.opts.format.charDevice) {
          check(native.unlinkat(pfd, name, 0));
          this.whiteoutFile(pfd, name);
        }
      } else if (srcLower && this.opts.format.charDevice) {
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

  private whiteoutFile(pfd: number, name: string): void {
    const fd = check(native.openat(pfd, WH_PREFIX + name, O_CREAT | O_WRONLY | O_NOFOLLOW, 0o600));
    native.close(fd);
  }

  /**
   * Before a move: files are copied up; a directory with lower parts gets a redirect, written as
   * the kernel's ovl_set_redirect does: the old name for a move within its directory, else the
   * absolute union path in which every ancestor with a redirect of its own stands for it; one
   * it has already is kept when it still applies.
   */
  private prepareMove(n: UNode, samedir: boolean): void {
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

  // ---- attributes ----

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
    if (v & SETATTR.SIZE) {
      const hfd = s.fh ? native.handleFd(s.fh) : -1;
      if (hfd >= 0) check(native.ftruncate(hfd, s.size));
      else {
        const fd = check(native.openat(t.dirfd, t.name, O_WRONLY | O_NOFOLLOW, 0));
        const r = native.ftruncate(fd, s.size);
        native.close(fd);
        check(r);
      }
    }
    if (v & (SETATTR.ATIME | SETATTR.MTIME)) {
      const ans = v & SETATTR.ATIME_NOW ? UTIME_NOW : v & SETATTR.ATIME ? s.atimeNs : UTIME_OMIT;
      const mns = v & SETATTR.MTIME_NOW ? UTIME_NOW : v & SETATTR.MTIME ? s.mtimeNs : UTIME_OMIT;
      if (t.name) check(native.utimensat(t.dirfd, t.name, s.atime, ans, s.mtime, mns, NOFOLLOW));
      else check(native.utimensat(-100, procPath(t.dirfd, ''), s.atime, ans, s.mtime, mns, 0));
    }
    return { attr: this.attrs(n) };
  }

  readlink(nodeid: number): string {
    const t = this.top(this.node(nodeid));
    const r = native.readlinkat(t.dirfd, t.name);
    if (typeof r === 'number') throw new FsError(-r);
    return r;
  }

  // ---- files ----

  private openFlags(flags: number): number {
    let f = flags & ~(O_CREAT | O_EXCL | O_DIRECT);
    if (this.opts.writeback) {
      if ((f & O_ACCMODE) === O_WRONLY) f = (f & ~O_ACCMODE) | O_RDWR;
      f &= ~O_APPEND;
    }
    return f | O_NOFOLLOW;
  }

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
  private sharedLowerOpen(fd: number, flags: number): boolean {
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

  /**
   * Whether an open of n hands the kernel its backing file. Lower files: always (their layers
   * are private read-only noatime mounts). Upper files: under the default relatime only, since
   * the kernel's reads then move atime as the upper's own mount says.
   */
  private passthroughFor(n: UNode): boolean {
    return this.opts.passthrough && n.type === S_IFREG && (!n.upper || this.opts.atime.mode === 'relatime');
  }

  private wantsAtime(n: UNode): boolean {
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
      if (layer === UPPER) upperInos.set(name, [raw, ino]);
    });
    this.listings.set(n.id, { until: Date.now() + this.opts.timeout * 1000, names: where, upperInos });
    return { names, inos: Float64Array.from(inos), types: Uint8Array.from(types) };
  }

  private listNames(n: UNode): string[] {
    const out: string[] = [];
    this.merge(n, (name) => out.push(name), true);
    return out;
  }

  /** Names one lower dir across unions (lowerlist.ts, watch.ts). */
  private lowerKey(layer: number, path: string): string {
    return `${this.layers[layer].cacheKey}\0${path}`;
  }

  /** Walks the layers of a directory top-down, applying whiteouts and opaque dirs. The lowers'
   * merge is shared with other unions over the same lower dirs while they are watched. */
  private merge(n: UNode, emit: (name: string, ino: number, type: number, layer: number, raw: number) => void, namesOnly = false): void {
    const seen = new Set<string>();
    if (n.upper) {
      const fd = this.dirs.tryFd(UPPER, unionPath(n));
      if (fd >= 0) visibleEntries(fd, n.upperXwh, seen, (name, type, raw) =>
        emit(name, namesOnly ? 0 : this.originIno(fd, name) || this.mapIno(UPPER, raw), type, UPPER, namesOnly ? 0 : raw));
    }
    if (n.opaque) return;
    const sources: LowerSource[] = [];
    const layers: number[] = [];
    for (const l of n.lowers) {
      const fd = this.dirs.tryFd(l.layer, l.path);
      if (fd < 0) continue;
      sources.push({ key: this.lowerKey(l.layer, l.path), fd, xwh: l.xwh });
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
    return out;
  }

  // ---- xattrs (the union's own are never shown) ----

  private xpath(n: UNode): { path: string; follow: number } {
    const t = this.top(n);
    return { path: procPath(t.dirfd, t.name), follow: t.name ? 0 : 1 };
  }

  setxattr(nodeid: number, name: string, value: Buffer, flags: number): void {
    if (this.opts.noXattrs) throw new FsError(E.EOPNOTSUPP);
    if (isPrivateXattr(name) || (this.opts.ids.p.xattrPermissions && isOverrideXattr(name))) throw new FsError(E.EPERM);
    const n = this.node(nodeid);
    this.copyUp(n, false);
    const { path, follow } = this.xpath(n);
    check(native.setxattr(path, name, value, flags, follow));
  }

  getxattr(nodeid: number, name: string): Buffer {
    if (this.opts.noXattrs) throw new FsError(E.EOPNOTSUPP);
    if (isPrivateXattr(name) || (this.opts.ids.p.xattrPermissions && isOverrideXattr(name))) throw new FsError(E.ENODATA);
    const { path, follow } = this.xpath(this.node(nodeid));
    const r = native.getxattr(path, name, follow);
    if (typeof r === 'number') throw new FsError(-r);
    return r;
  }

  listxattr(nodeid: number): string[] {
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

