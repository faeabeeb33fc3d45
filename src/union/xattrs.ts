// The union's own xattrs: stored in the layers, never shown through the mount.
import type { XattrNs } from './whiteout';

const PRIVATE_PREFIXES = ['trusted.overlay.', 'user.overlay.', 'user.fuseoverlayfs.'];

export function isPrivateXattr(name: string): boolean {
  return PRIVATE_PREFIXES.some((p) => name.startsWith(p));
}

export interface XattrNames {
  opaque: string;     // overlay.opaque ("y")
  redirect: string;   // overlay.redirect (kernel's redirect_dir format)
  origin: string;     // layerfs: presented st_ino kept across copy-up (under overlay.*: the kernel hides it)
  nlink: string;      // layerfs: link count of a copied-up lower hard link (on its index entry)
  index: string;      // layerfs: the index key of that inode (found again from any of its names)
}

export function xattrNames(ns: XattrNs): XattrNames {
  return {
    opaque: `${ns}.overlay.opaque`,
    redirect: `${ns}.overlay.redirect`,
    origin: `${ns}.overlay.layerfs.ino`,
    nlink: `${ns}.overlay.layerfs.nlink`,
    index: `${ns}.overlay.layerfs.index`,
  };
}

export const REDIRECT_XATTRS = ['trusted.overlay.redirect', 'user.overlay.redirect'];
export const ORIGIN_XATTRS = ['trusted.overlay.layerfs.ino', 'user.overlay.layerfs.ino'];
