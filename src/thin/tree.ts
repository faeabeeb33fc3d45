// A volume's block map: a copy-on-write radix tree (fanout 256, 4 levels: 2^32 virtual blocks)
// whose nodes carry reference counts, so a snapshot shares its origin's root (O(1) at any
// depth) and a lookup always takes 4 steps. A data block's reference count is the number of
// leaves that point at it (as in dm-thin's space map): cloning a shared leaf increments the
// counts of its blocks, which is how a write learns that a block is shared.
export const FANOUT = 256;
export const LEVELS = 4;
export const UNMAPPED = -1;

export interface Leaf {
  refs: number;
  blocks: Int32Array;   // data block per virtual block, UNMAPPED if none
  count: number;        // mapped entries
}

export interface Inner {
  refs: number;
  kids: (TreeNode | null)[];
}

export type TreeNode = Leaf | Inner;

export const isLeaf = (n: TreeNode): n is Leaf => (n as Leaf).blocks !== undefined;

export interface BlockRefs {
  inc(block: number): void;
  dec(block: number): void;
}

export function newLeaf(): Leaf {
  return { refs: 1, blocks: new Int32Array(FANOUT).fill(UNMAPPED), count: 0 };
}

function newInner(): Inner {
  return { refs: 1, kids: new Array(FANOUT).fill(null) };
}

const idx = (vblock: number, level: number): number => Math.floor(vblock / 2 ** (8 * (LEVELS - 1 - level))) % FANOUT;

export function lookup(root: TreeNode | null, vblock: number): number {
  let n = root;
  for (let level = 0; n && level < LEVELS - 1; level++) n = (n as Inner).kids[idx(vblock, level)];
  return n ? (n as Leaf).blocks[idx(vblock, LEVELS - 1)] : UNMAPPED;
}

function clone(n: TreeNode, refs: BlockRefs): TreeNode {
  n.refs--;
  if (isLeaf(n)) {
    for (const b of n.blocks) if (b !== UNMAPPED) refs.inc(b);
    return { refs: 1, blocks: n.blocks.slice(), count: n.count };
  }
  for (const k of n.kids) if (k) k.refs++;
  return { refs: 1, kids: n.kids.slice() };
}

/** Drops one reference; frees the subtree (and its blocks' references) when none is left. */
export function release(n: TreeNode | null, refs: BlockRefs): void {
  if (!n || --n.refs > 0) return;
  if (isLeaf(n)) {
    for (const b of n.blocks) if (b !== UNMAPPED) refs.dec(b);
  } else for (const k of n.kids) release(k, refs);
}

/**
 * The leaf holding vblock, made private to this tree (shared nodes on the path are cloned),
 * created when missing. Returns the new root and the leaf with the slot index.
 */
export function privateLeaf(root: TreeNode | null, vblock: number, refs: BlockRefs, create: boolean):
  { root: TreeNode | null; leaf: Leaf | null; slot: number } {
  const slot = idx(vblock, LEVELS - 1);
  if (!root) {
    if (!create) return { root, leaf: null, slot };
    root = newInner();
  } else if (root.refs > 1) root = clone(root, refs);
  let n = root as Inner;
  for (let level = 0; level < LEVELS - 1; level++) {
    const i = idx(vblock, level);
    let k = n.kids[i];
    if (!k) {
      if (!create) return { root, leaf: null, slot };
      k = level === LEVELS - 2 ? newLeaf() : newInner();
      n.kids[i] = k;
    } else if (k.refs > 1) {
      k = clone(k, refs);
      n.kids[i] = k;
    }
    if (level === LEVELS - 2) return { root, leaf: k as Leaf, slot };
    n = k as Inner;
  }
  throw new Error('unreachable');
}

/** Calls fn(vblock, block) for every mapping, in order. */
export function walk(root: TreeNode | null, fn: (vblock: number, block: number) => void): void {
  const rec = (n: TreeNode, base: number, level: number): void => {
    if (isLeaf(n)) {
      for (let i = 0; i < FANOUT; i++) if (n.blocks[i] !== UNMAPPED) fn(base + i, n.blocks[i]);
      return;
    }
    const span = 2 ** (8 * (LEVELS - 1 - level));
    n.kids.forEach((k, i) => { if (k) rec(k, base + i * span, level + 1); });
  };
  if (root) rec(root, 0, 0);
}

/** Every distinct node reachable from the roots (shared ones once), leaves last-level first. */
export function nodesOf(roots: (TreeNode | null)[]): TreeNode[] {
  const seen = new Set<TreeNode>();
  const out: TreeNode[] = [];
  const rec = (n: TreeNode): void => {
    if (seen.has(n)) return;
    seen.add(n);
    if (!isLeaf(n)) for (const k of n.kids) if (k) rec(k);
    out.push(n);  // children before parents
  };
  for (const r of roots) if (r) rec(r);
  return out;
}
