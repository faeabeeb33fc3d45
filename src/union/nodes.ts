// Union nodes: one per object the kernel knows. A node's upper location mirrors the union tree
// (a writable layer always has the union's layout), so it is derived from its first link and
// its layer; its lower locations are stored at lookup time (lowers never change under the union;
// an aufs rw branch below the top object is one of them, and changes only through the union).
import { joinPath } from './layers';

export interface LowerRef {
  layer: number;      // index into the layer table
  path: string;       // relative path inside that layer
  xwh: boolean;       // (dirs) may hold kernel xattr whiteouts (opaque="x")
}

export interface Link {
  parent: UNode;
  name: string;
}

export interface UNode {
  id: number;
  links: Link[];              // union names (several for upper hard links); none for the root
  kids: Map<string, UNode>;   // known children; they keep this node alive
  type: number;               // S_IFMT bits
  nlookup: number;
  upper: boolean;             // the top object is in a writable layer (wl), at the union path
  wl: number;                 // that layer (overlay: always 0; aufs: any rw branch)
  upperXwh: boolean;          // (dirs) the upper dir holds xattr whiteouts
  lowers: LowerRef[];         // non-dir: the lower object (if any); dir: lower dirs merged, top first
  opaque: boolean;            // (dirs) nothing below the upper dir shows
  ino: number;                // presented st_ino
  indexKey: string | null;    // a lower hard link copied up: its data is the index entry
  redirect: string | null;    // (dirs) the upper dir's redirect xattr, as last read or written
  gone?: Float64Array;        // (dirs) removed while the kernel still knows it: its last attributes
}

export function unionPath(n: UNode): string {
  const l = n.links[0];
  if (!l) return '';
  return joinPath(unionPath(l.parent), l.name);
}

export function attachLink(parent: UNode, name: string, child: UNode): void {
  if (parent.kids.get(name) === child) return;
  parent.kids.set(name, child);
  child.links.push({ parent, name });
}

/** Removes one name; returns the child it named, if known. */
export function detachLink(parent: UNode, name: string): UNode | undefined {
  const child = parent.kids.get(name);
  if (!child) return undefined;
  parent.kids.delete(name);
  child.links = child.links.filter((l) => !(l.parent === parent && l.name === name));
  return child;
}
