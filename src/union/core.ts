// The union engine's state and what every operation family builds on: the node table, inode
// numbers, where a node lives (its top layer), lower watches. Each family is one class of the
// chain core -> lookup -> copyup -> create -> remove -> rename -> attrs -> Union (union.ts),
// one file each: a reader finds "what happens on rename" in rename.ts.
import { native } from '../sys/native';
import { FsError, check } from '../sys/errors';
import { AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW, E, O_ACCMODE, O_APPEND, O_CREAT, O_DIRECT, O_EXCL, O_NOFOLLOW, O_RDWR, O_WRONLY, S_IFDIR, S_IFREG } from '../sys/constants';
import { ST_ATIME, ST_BLKSIZE, ST_CTIME, ST_GID, ST_INO, ST_MODE, ST_MTIME, ST_NLINK, ST_UID, newStat, type Stat } from '../sys/stat';
import type { Notifier } from '../fuse/filesystem';
import { ROOT_ID } from '../fuse/ops';
import { type AtimePolicy } from '../fuse/atime';
import { type Identity } from '../sys/identity';
import { LayerDirs, assignFsIndexes, baseName, dirName, joinPath, type Layer } from './layers';
import { detachLink, unionPath, type UNode } from './nodes';
import { WH_PREFIX, dirOpacity, overlayCodec, procPath, type WhiteoutCodec, type WhiteoutFormat } from './whiteout';
import { ORIGIN_XATTRS, xattrNames, type XattrNames } from './xattrs';
import { LRUCache } from 'lru-cache';
import { LowerWatcher } from './watch';
import { Ids, OVERRIDE_XATTRS } from './ids';

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
  /** The layer format's whiteout writer for a writable layer (default: overlayfs's, from format). */
  codecFor?: (layerFd: number) => WhiteoutCodec;
  /** Where new objects and copy-ups go when several layers are writable (aufs create=/cpup=). */
  placement?: Placement;
  /** The longest name in bytes (aufs: 242, room for the `.wh.` prefix in 255). */
  nameMax?: number;
  /** aufs shwh: `.wh.` whiteouts are shown as the files they are (a read-only union only). */
  showWhiteouts?: boolean;
  /** Redirect xattrs are read and followed (overlay); aufs has none (a renamed dir is a new one). */
  followRedirects?: boolean;
  /** Names starting with `.wh.` cannot be made (aufs: EINVAL). */
  reservedWh?: boolean;
  /** Every new directory gets an opaque marker (aufs diropq=a), not only where a lower one shows. */
  alwaysOpaque?: boolean;
  /** statfs sums every distinct filesystem among the layers (aufs sum). */
  statfsSum?: boolean;
  /** aufs: which branch holds a path, as xattrs PREFIX.branch / PREFIX.branches, and the
   * branch table (PREFIX.si on the root) — read with getxattr, never listed. */
  introspect?: {
    prefix: string;
    table: { path: string; perm: string; attrs: string[] }[];
    /** PREFIX.ctl set on the root: a branch verb (src/aufs/control.ts); throws FsError with a message. */
    control?: (verb: string) => void;
    /** A control file of this name in the root (mergerfs's `.mergerfs`): never listed, only its
     * xattrs work (the root's PREFIX.si, .ctl, .error, .settled); every other operation is EPERM. */
    fileName?: string;
  };
}

export const FUSE_DIRECT_IO_ALLOW_MMAP = 2 ** 36, FUSE_PASSTHROUGH = 2 ** 37;
export const FMODE_EXEC = 0x20;                 // in the open flags of an exec (open_exec)
export const SHARED_MIN_SIZE = 64 << 20;        // page_cache=auto: files this big share one page cache
export const hasFlag = (flags: number, bit: number): boolean => Math.floor(flags / bit) % 2 === 1;

export const NOFOLLOW = AT_SYMLINK_NOFOLLOW;
/** Makes one object at dirfd/at with the given mode; returns an fd (files), 0, or -errno. */
export type Make = (dirfd: number, at: string, mode: number) => number;

/** A directory's merged listing: for each visible name, the top layer showing it. */
export interface Listing {
  until: number;                   // valid until (ms): the timeout, for changes behind our back
  names: Map<string, number>;      // name -> layer index of the top object
  upperInos?: Map<string, [number, number]>;   // upper name -> [its st_ino, the ino shown]
}
export const LONG_TIMEOUT = 3600;
export const CONTROL_ID = 2 ** 53 - 2;   // the control file's node id (and st_ino)
export const UPPER = 0;

/**
 * Where new objects and copy-ups go among the writable layers: a policy of each mode (overlay:
 * its one upper; aufs: create= and cpup=, src/aufs/placement.ts). The engine then applies what
 * every policy must respect (a layer the parent's merge reaches, below no whiteout of the name).
 */
export interface Placement {
  /** A new object under a dir present on layers `has` (top first): the layer to make it on. */
  create(has: number[], isDir: boolean): number;
  /** A copy-up of an object on layer `from`, its parent present on `has`: the layer to copy to. */
  copyUp(has: number[], from: number): number;
}

/** One upper: everything goes to the first writable layer. */
export const topWritable = (layers: Layer[]): Placement => {
  const first = (): number => layers.findIndex((l) => l.writable);
  return { create: first, copyUp: first };
};

export abstract class UnionCore {
  readonly layers: Layer[];
  protected readonly hasUpper: boolean;
  protected readonly lowerStart: number;
  protected readonly dirs: LayerDirs;
  protected readonly x: XattrNames;
  private readonly codecs = new WeakMap<Layer, WhiteoutCodec>();
  protected readonly placement: Placement;
  readonly nameMax: number | undefined;
  protected readonly nodes = new Map<number, UNode>();
  protected readonly byUpperIno = new Map<number, UNode>();  // upper non-dirs with several names
  protected readonly byIndexKey = new Map<string, UNode>();  // lower hard links, one node for all names
  // merged listings of directories, by node: which layer shows each name (see lookupIn)
  protected readonly listings = new LRUCache<number, Listing>({ max: 1024 });
  protected readonly root: UNode;
  protected nextId = ROOT_ID + 1;
  protected tmpSeq = 0;
  protected notifiers: Notifier[] = [];
  protected readonly watcher: LowerWatcher | null;
  protected directLower = false;

  /** layers: the upper first when there is one (writable), then the lowers top to bottom; each
   * writable layer with its work dir (Layer.workFd). */
  constructor(layers: Layer[], protected readonly opts: UnionOptions,
    protected readonly id: Identity, protected readonly indexFd = -1) {
    this.layers = layers;
    this.hasUpper = layers.some((l) => l.writable);
    this.lowerStart = layers.length > 0 && layers[0].writable ? 1 : 0;
    this.dirs = new LayerDirs(layers);
    this.x = xattrNames(opts.format.ns);
    this.placement = opts.placement ?? topWritable(layers);
    this.nameMax = opts.nameMax;
    this.root = this.newNode(ROOT_ID, S_IFDIR);
    this.root.nlookup = 1;
    this.watcher = opts.watch ? new LowerWatcher((id, name) => this.lowerChanged(id, name), 32768) : null;
    this.resolveRoot();
    this.watchLowers(this.root);
  }

  protected watchLowers(n: UNode): void {
    if (!this.watcher) return;
    for (const l of n.lowers) {
      // a writable layer below the top changes through the union, which drops what it cached
      if (this.layers[l.layer].writable) continue;
      const fd = this.dirs.tryFd(l.layer, l.path);
      if (fd >= 0) this.watcher.add(n.id, this.lowerKey(l.layer, l.path), fd);
    }
  }

  /** A lower dir of node id changed (name, when known): drop what the daemon and kernel cached. */
  protected lowerChanged(id: number, name: string | null): void {
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
    for (const l of this.layers) {
      native.close(l.fd);
      if (l.workFd >= 0) native.close(l.workFd);
    }
    if (this.indexFd >= 0) native.close(this.indexFd);
  }

  protected invalAttr(n: UNode): void {
    for (const x of this.notifiers) x.invalAttr(n.id);
  }

  // ---- nodes ----

  protected newNode(id: number, type: number): UNode {
    const n: UNode = { id, links: [], kids: new Map(), type, nlookup: 0, upper: false, wl: 0, upperXwh: false, lowers: [], opaque: false, ino: 0, indexKey: null, redirect: null };
    this.nodes.set(id, n);
    return n;
  }

  protected node(id: number): UNode {
    const n = this.nodes.get(id);
    if (!n) throw new FsError(id === CONTROL_ID ? E.EPERM : E.ESTALE);
    return n;
  }

  private readonly started = Date.now() / 1000;

  /** The control file's attributes: an empty file of the mount's owner, read-write for it alone. */
  protected controlStat(): Stat {
    const st = newStat();
    st[ST_INO] = CONTROL_ID;
    st[ST_MODE] = S_IFREG | 0o600;
    st[ST_NLINK] = 1;
    st[ST_UID] = process.geteuid?.() ?? 0;
    st[ST_GID] = process.getegid?.() ?? 0;
    st[ST_BLKSIZE] = 4096;
    for (const i of [ST_ATIME, ST_MTIME, ST_CTIME]) st[i] = Math.floor(this.started);
    return st;
  }

  protected resolveRoot(): void {
    const r = this.root;
    const st = newStat();
    r.upper = this.lowerStart === 1;
    r.wl = 0;
    r.opaque = false;
    for (let i = 0; i < this.layers.length; i++) {
      const o = dirOpacity(this.layers[i].fd, '');
      if (i === 0 && r.upper) {
        r.opaque = o.opaque;
        r.upperXwh = o.xwhiteouts;
      } else r.lowers.push({ layer: i, path: '', xwh: o.xwhiteouts });
      if (o.opaque) break;
    }
    check(native.fstatat(this.layers[this.topLayer(r)].fd, '', AT_EMPTY_PATH | NOFOLLOW, st));
    r.ino = r.lowers.length ? this.topLowerIno(r) : this.mapIno(r.wl, st[ST_INO]);
  }

  protected maybeFree(n: UNode): void {
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
  protected dropName(parent: UNode, name: string): UNode | undefined {
    const child = detachLink(parent, name);
    if (child) {
      if (child.type === S_IFDIR) this.forgetDir(child, joinPath(unionPath(parent), name));
      this.maybeFree(child);
    }
    return child;
  }

  /** A dir's path moved or went: the cached fds of it in the writable layers holding it go. */
  protected forgetDir(n: UNode, path: string): void {
    for (const l of this.dirLayers(n)) if (this.layers[l]?.writable) this.dirs.forget(l, path);
  }

  // ---- inode numbers ----

  /** A layer's st_ino made unique in the union: layers on other filesystems move up by 2^32 steps. */
  protected mapIno(layer: number, ino: number): number {
    const fs = this.layers[layer].fsIndex;
    return fs === 0 ? ino : ino + fs * 0x100000000;
  }

  protected topLowerIno(n: UNode): number {
    const l = n.lowers[0];
    const st = newStat();
    const fd = this.dirs.tryFd(l.layer, dirName(l.path));
    if (fd < 0 || native.fstatat(fd, l.path ? baseName(l.path) : '', l.path ? NOFOLLOW : AT_EMPTY_PATH | NOFOLLOW, st) < 0) return 0;
    return this.mapIno(l.layer, st[ST_INO]);
  }

  protected originIno(dirfd: number, name: string): number {
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

  protected upperDirFd(n: UNode): number {
    return this.dirs.fd(n.wl, unionPath(n));
  }

  /** Dir n in layer t (it must be there: ensureDirOn). */
  protected dirOn(n: UNode, t: number): number {
    return this.dirs.fd(t, unionPath(n));
  }

  protected work(t: number): number {
    const fd = this.layers[t].workFd;
    if (fd < 0) throw new FsError(E.EROFS);
    return fd;
  }

  protected codec(t: number): WhiteoutCodec {
    const l = this.layers[t];
    let c = this.codecs.get(l);
    if (!c) this.codecs.set(l, (c = this.opts.codecFor?.(l.fd) ?? overlayCodec(this.opts.format)));
    return c;
  }

  /** The layers holding dir n, top first. */
  protected dirLayers(n: UNode): number[] {
    return n.upper ? [n.wl, ...n.lowers.map((l) => l.layer)] : n.lowers.map((l) => l.layer);
  }

  /** The deepest layer dir n's merge reaches: an object made deeper would not show. */
  protected reach(n: UNode): number {
    return n.lowers.length ? n.lowers[n.lowers.length - 1].layer : n.wl;
  }

  /** The nearest writable layer at or above layer u (-1: none). */
  protected writableAtOrAbove(u: number): number {
    for (let i = Math.min(u, this.layers.length - 1); i >= 0; i--) if (this.layers[i].writable) return i;
    return -1;
  }

  /** (dirfd, name) of the node's top object: upper if present, else its lower. */
  protected top(n: UNode): { dirfd: number; name: string; layer: number } {
    if (n === this.root) {
      const layer = this.topLayer(n);
      return { dirfd: this.layers[layer].fd, name: '', layer };
    }
    if (n.indexKey) return { dirfd: this.indexFd, name: n.indexKey, layer: UPPER };
    if (n.upper) {
      const l = n.links[0];
      if (!l) throw new FsError(E.ESTALE);
      return { dirfd: this.dirOn(l.parent, n.wl), name: l.name, layer: n.wl };
    }
    const lo = n.lowers[0];
    if (!lo) throw new FsError(E.ESTALE);
    return { dirfd: this.dirs.fd(lo.layer, dirName(lo.path)), name: baseName(lo.path), layer: lo.layer };
  }

  protected statTop(n: UNode, st: Stat): void {
    const t = this.top(n);
    check(native.fstatat(t.dirfd, t.name, t.name ? NOFOLLOW : AT_EMPTY_PATH | NOFOLLOW, st));
  }

  /** The attributes shown for a node. */
  protected attrs(n: UNode, st = newStat()): Stat {
    this.statTop(n, st);
    this.present(n, st);
    return st;
  }

  protected present(n: UNode, st: Stat): void {
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

  /** Names one lower dir across unions (lowerlist.ts, watch.ts). */
  protected lowerKey(layer: number, path: string): string {
    return `${this.layers[layer].cacheKey}\0${path}`;
  }

  protected readOverride(n: UNode): string | null {
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

  protected openFlags(flags: number): number {
    let f = flags & ~(O_CREAT | O_EXCL | O_DIRECT);
    if (this.opts.writeback) {
      if ((f & O_ACCMODE) === O_WRONLY) f = (f & ~O_ACCMODE) | O_RDWR;
      f &= ~O_APPEND;
    }
    return f | O_NOFOLLOW;
  }

  /**
   * Whether an open of n hands the kernel its backing file. Lower files: always (their layers
   * are private read-only noatime mounts). Upper files: under the default relatime only, since
   * the kernel's reads then move atime as the upper's own mount says.
   */
  protected passthroughFor(n: UNode): boolean {
    return this.opts.passthrough && n.type === S_IFREG && (!n.upper || this.opts.atime.mode === 'relatime');
  }

  /** A name about to be made: aufs reserves the `.wh.` prefix for its own entries. */
  protected checkNewName(name: string): void {
    if (this.opts.reservedWh && name.startsWith(WH_PREFIX)) throw new FsError(E.EINVAL);
  }

  /** The node a union path names, among those the kernel knows (no lookup is made). */
  nodeAt(rel: string): UNode | undefined {
    let n: UNode | undefined = this.root;
    for (const c of rel.split('/').filter(Boolean)) n = n?.kids.get(c);
    return n;
  }

  /** The st_ino a node the kernel knows is shown with (0 if unknown). */
  inoOf(id: number): number {
    return this.nodes.get(id)?.ino ?? 0;
  }

  /** The (ino, name, type) of each node from the root's child down to a node the kernel knows, or null. */
  chainOf(id: number): { ino: number; name: string; type: number }[] | null {
    let n = this.nodes.get(id);
    if (!n) return null;
    const out: { ino: number; name: string; type: number }[] = [];
    while (n.links[0]) {
      out.push({ ino: n.ino, name: n.links[0].name, type: n.type });
      n = n.links[0].parent;
    }
    return out.reverse();
  }

  /** The union path of a node the kernel knows ('' for the root), or null. */
  pathOf(id: number): string | null {
    const n = this.nodes.get(id);
    return n ? unionPath(n) : null;
  }

  /** Index of the layer showing n. */
  topLayer(n: UNode): number {
    return n.upper ? n.wl : (n.lowers[0]?.layer ?? n.wl);
  }

  /**
   * The lower layers changed while mounted (aufs's branch verbs): every name the kernel knows is
   * looked up again, parents first (a node keeps its id where its name still shows the same
   * object), and the kernel is told to drop every cached name, attribute and page.
   */
  relayer(lowers: Layer[], added: Layer[] = []): void {
    this.layers.splice(this.lowerStart, this.layers.length - this.lowerStart, ...lowers);
    this.layers.forEach((l, i) => { l.index = i; });
    assignFsIndexes(this.layers);
    this.listings.clear();
    const names: [number, string][] = [];
    const queue: UNode[] = [this.root];
    this.root.lowers = [];
    this.watcher?.forget(this.root.id);
    this.resolveRoot();
    this.watchLowers(this.root);
    while (queue.length) {
      const p = queue.shift()!;
      // names an added layer brings may sit in the kernel as negative entries: drop those too
      for (const l of added) {
        const fd = this.dirs.tryFd(l.index, unionPath(p));
        const list = fd >= 0 ? native.readdir(fd) : -1;
        if (typeof list !== 'number') for (const n of list.names) if (n !== '.' && n !== '..' && !p.kids.has(n)) names.push([p.id, n]);
      }
      for (const [name, kid] of [...p.kids]) {
        names.push([p.id, name]);
        this.watcher?.forget(kid.id);
        const e = this.entry(p, name);
        if (e && e.node.type === S_IFDIR) queue.push(e.node);
      }
    }
    for (const x of this.notifiers) {
      for (const [parent, name] of names) x.invalEntry(parent, name);
      for (const id of this.nodes.keys()) x.invalData(id);
    }
  }

  /** entry(): lookup and merge (lookup.ts) re-resolves a name. */
  protected abstract entry(p: UNode, name: string): { node: UNode; st: Stat } | null;
}
