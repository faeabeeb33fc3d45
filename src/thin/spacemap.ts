// Reference counts of the data blocks. A block whose count drops to 0 is not reusable (nor
// hole-punched) until the transaction that freed it is committed: a crash before the commit
// must find the old mappings still pointing at intact data.
import type { BlockRefs } from './tree';

export class SpaceMap implements BlockRefs {
  refs: Uint32Array;
  private cursor = 0;
  private used = 0;
  private pendingFree: number[] = [];

  constructor(public nrBlocks: number) {
    this.refs = new Uint32Array(nrBlocks);
  }

  get usedBlocks(): number {
    return this.used;
  }

  get freeBlocks(): number {
    return this.nrBlocks - this.used - this.pendingFree.length;
  }

  inc(b: number): void {
    if (this.refs[b]++ === 0) this.used++;
  }

  dec(b: number): void {
    if (this.refs[b] === 0) throw new Error(`space map: block ${b} freed twice`);
    if (--this.refs[b] === 0) {
      this.used--;
      this.pendingFree.push(b);
    }
  }

  /** A free block (count 0, not freed by the open transaction), or -1 when the pool is full.
   * The caller maps it at once, which takes the reference. */
  findFree(): number {
    const n = this.nrBlocks;
    const pending = this.pendingFree.length ? new Set(this.pendingFree) : null;
    for (let i = 0; i < n; i++) {
      const b = (this.cursor + i) % n;
      if (this.refs[b] === 0 && !pending?.has(b)) {
        this.cursor = (b + 1) % n;
        return b;
      }
    }
    return -1;
  }

  /** After a commit: the blocks freed by it may be reused; returns them (to punch holes). */
  takeFreed(): number[] {
    const out = this.pendingFree.filter((b) => this.refs[b] === 0);
    this.pendingFree = [];
    return out;
  }

  grow(nrBlocks: number): void {
    if (nrBlocks <= this.nrBlocks) return;
    const r = new Uint32Array(nrBlocks);
    r.set(this.refs);
    this.refs = r;
    this.nrBlocks = nrBlocks;
  }

  /** Recounts used blocks from the counts (after loading). */
  recount(): void {
    let u = 0;
    for (let i = 0; i < this.nrBlocks; i++) if (this.refs[i]) u++;
    this.used = u;
    this.pendingFree = [];
  }
}
