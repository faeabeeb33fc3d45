// The layers of a union: an upper (writable, optional) and read-only lowers, each a directory
// opened once. Paths inside a layer are relative ("" is the root) and are only ever opened with
// openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS): a symlink inside a layer is never traversed.
import { native } from '../sys/native';
import { FsError, check } from '../sys/errors';
import {
  AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_NOFOLLOW, E, O_DIRECTORY, O_PATH, RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS,
} from '../sys/constants';
import { ST_DEV, ST_INO, newStat } from '../sys/stat';
import { FdCache, fdBudget } from '../sys/fdcache';

export interface Layer {
  index: number;        // 0 = upper when there is one; lowers follow top to bottom
  path: string;         // as given (for messages)
  fd: number;           // O_PATH of the layer root
  dev: number;
  fsIndex: number;      // distinct st_dev number among the layers (0 = the first layer's fs)
  writable: boolean;
  /** A writable layer's work dir (O_PATH; -1 for read-only layers): atomic builds happen there. */
  workFd: number;
  rootIno: number;      // names the layer in index keys (stable across mounts)
  /** Names the layer's directories in the fd cache every union of the process shares: a lower
   * seen through the same mount kind is one entry for all mounts; an upper is its union's own. */
  cacheKey: string;
}

let uppers = 0;

function layerKey(writable: boolean, dev: number, ino: number, privateClone: boolean): string {
  return writable ? `u${++uppers}` : `${dev}:${ino}${privateClone ? ':c' : ''}`;
}

export function openLayer(index: number, dir: string, writable: boolean): Layer {
  const fd = check(native.openat(AT_FDCWD, dir, O_PATH | O_DIRECTORY, 0));
  const st = newStat();
  check(native.fstatat(fd, '', AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, st));
  return { index, path: dir, fd, dev: st[ST_DEV], fsIndex: 0, writable, workFd: -1, rootIno: st[ST_INO], cacheKey: layerKey(writable, st[ST_DEV], st[ST_INO], false) };
}

/** A layer from a directory fd opened elsewhere (by the mount helper, as the caller): reopened
 * O_PATH here, so the union holds exactly what openLayer would. */
export function layerFromFd(index: number, dir: string, dirFd: number, writable: boolean): Layer {
  const fd = check(native.openat(dirFd, '.', O_PATH | O_DIRECTORY, 0));
  const st = newStat();
  check(native.fstatat(fd, '', AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, st));
  return { index, path: dir, fd, dev: st[ST_DEV], fsIndex: 0, writable, workFd: -1, rootIno: st[ST_INO], cacheKey: layerKey(writable, st[ST_DEV], st[ST_INO], false) };
}

/** The layer is now reached through a private read-only clone of its mount (passthrough). */
export function useClone(l: Layer, cloneFd: number): void {
  native.close(l.fd);
  l.fd = cloneFd;
  l.cacheKey = layerKey(l.writable, l.dev, l.rootIno, true);
}

/** The layer is now written in place (aufs mod:BRANCH=rw), or no longer: its fd cache entries
 * become its union's own, or shared again. */
export function setWritable(l: Layer, writable: boolean): void {
  l.writable = writable;
  l.cacheKey = layerKey(writable, l.dev, l.rootIno, false);
}

export function assignFsIndexes(layers: Layer[]): void {
  const devs: number[] = [];
  for (const l of layers) {
    let i = devs.indexOf(l.dev);
    if (i < 0) i = devs.push(l.dev) - 1;
    l.fsIndex = i;
  }
}

export const joinPath = (dir: string, name: string): string => (dir ? `${dir}/${name}` : name);
export const dirName = (p: string): string => (p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '');
export const baseName = (p: string): string => p.slice(p.lastIndexOf('/') + 1);

// One cache of directory fds for every union of the process (the resident service serves many
// mounts over the same image layers): its budget comes from the process's fd limit once.
let shared: FdCache<string> | null = null;
function sharedCache(): FdCache<string> {
  return (shared ??= new FdCache<string>(fdBudget(native.raiseNofile())));
}

/** Directory fds of layer paths, cached; a missing or non-directory path is -errno. */
export class LayerDirs {
  private readonly cache = sharedCache();

  constructor(private readonly layers: Layer[]) {}

  /** -errno when the path is not a directory in that layer (or crosses a symlink). */
  tryFd(layer: number, path: string): number {
    const l = this.layers[layer];
    if (path === '') return l.fd;
    return this.cache.get(`${l.cacheKey}\0${path}`, () =>
      native.openat2(l.fd, path, O_PATH | O_DIRECTORY, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS));
  }

  fd(layer: number, path: string): number {
    const r = this.tryFd(layer, path);
    if (r < 0) throw new FsError(r === -E.ELOOP || r === -E.EXDEV ? E.ENOENT : -r);
    return r;
  }

  /** Forget a path and everything below it (after a rename or removal in that layer). */
  forget(layer: number, path: string): void {
    const k = this.layers[layer].cacheKey;
    this.cache.delete(`${k}\0${path}`);
    this.cache.deleteWhere((key) => key.startsWith(`${k}\0${path}/`));
  }

  /** The union ends: its writable layers' entries go (lowers stay for other mounts, until evicted). */
  close(): void {
    for (const l of this.layers) if (l.writable) this.cache.deleteWhere((key) => key.startsWith(`${l.cacheKey}\0`));
  }
}
