// The layers of a union: an upper (writable, optional) and read-only lowers, each a directory
// opened once. Paths inside a layer are relative ("" is the root) and are only ever opened with
// openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS): a symlink inside a layer is never traversed.
import { native } from '../sys/native';
import { FsError, check } from '../sys/errors';
import {
  AT_EMPTY_PATH, AT_FDCWD, AT_SYMLINK_NOFOLLOW, E, O_DIRECTORY, O_PATH, RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS,
} from '../sys/constants';
import { ST_DEV, ST_INO, newStat } from '../sys/stat';
import { FdCache } from '../sys/fdcache';

export interface Layer {
  index: number;        // 0 = upper when there is one; lowers follow top to bottom
  path: string;         // as given (for messages)
  fd: number;           // O_PATH of the layer root
  dev: number;
  fsIndex: number;      // distinct st_dev number among the layers (0 = the first layer's fs)
  writable: boolean;
  rootIno: number;      // names the layer in index keys (stable across mounts)
}

export function openLayer(index: number, dir: string, writable: boolean): Layer {
  const fd = check(native.openat(AT_FDCWD, dir, O_PATH | O_DIRECTORY, 0));
  const st = newStat();
  check(native.fstatat(fd, '', AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, st));
  return { index, path: dir, fd, dev: st[ST_DEV], fsIndex: 0, writable, rootIno: st[ST_INO] };
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

/** Directory fds of layer paths, cached; a missing or non-directory path is -errno. */
export class LayerDirs {
  private readonly cache: FdCache<string>;

  constructor(private readonly layers: Layer[], max: number) {
    this.cache = new FdCache<string>(max);
  }

  /** -errno when the path is not a directory in that layer (or crosses a symlink). */
  tryFd(layer: number, path: string): number {
    const l = this.layers[layer];
    if (path === '') return l.fd;
    return this.cache.get(`${layer}\0${path}`, () =>
      native.openat2(l.fd, path, O_PATH | O_DIRECTORY, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS));
  }

  fd(layer: number, path: string): number {
    const r = this.tryFd(layer, path);
    if (r < 0) throw new FsError(r === -E.ELOOP || r === -E.EXDEV ? E.ENOENT : -r);
    return r;
  }

  /** Forget a path and everything below it (after a rename or removal in that layer). */
  forget(layer: number, path: string): void {
    this.cache.delete(`${layer}\0${path}`);
    this.cache.deleteWhere((k) => k.startsWith(`${layer}\0${path}/`));
  }
}
