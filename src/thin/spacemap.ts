// Reference counts of the data blocks. A block whose count drops to 0 is not reusable (nor
// hole-punched) until the transaction that freed it is committed: a crash before the commit
// must find the old mappings still pointing at intact data. A free block may be held (for the
// C write path to allocate from): still free, but not handed out again.
import type { BlockRefs } from './tree';

const HELD = 1, PENDING = 2;

export class SpaceMap implements BlockRefs {
  refs: Uint32Array;
  private state: Uint8Array;
  private cursor = 0;
  private used = 0;
  private held = 0;
  private pendingFree: number[] = [];
  private pending = 0;   // freed blocks not yet reusable, detached ones included

  constructor(public nrBlocks: number) {
    this.refs = new Uint32Array(nrBlocks);
    this.state = new Uint8Array(nrBlocks);
  }

  get usedBlocks(): number {
    return this.used;
  }

  /** Free blocks, the held ones included (what status and the low water mark count). */
  get freeBlocks(): number {
    return this.nrBlocks - this.used - this.pending;
  }

  /** Free blocks that findFree can hand out (not held). */
  get availBlocks(): number {
    return this.freeBlocks - this.held;
  }

  inc(b: number): void {
    if (this.state[b] & HELD) this.unhold(b);
    if (this.refs[b]++ === 0) this.used++;
  }

  dec(b: number): void {
    if (this.refs[b] === 0) throw new Error(`space map: block ${b} freed twice`);
    if (--this.refs[b] === 0) {
      this.used--;
      this.pendingFree.push(b);
      this.state[b] |= PENDING;
      this.pending++;
    }
  }

  /** A free block (count 0, not held, not freed by the open transaction), or -1 when there is
   * none. The caller maps or holds it at once. */
  findFree(): number {
    const n = this.nrBlocks;
    for (let i = 0; i < n; i++) {
      const b = (this.cursor + i) % n;
      if (this.refs[b] === 0 && this.state[b] === 0) {
        this.cursor = (b + 1) % n;
        return b;
      }
    }
    return -1;
  }

  hold(b: number): void {
    this.state[b] |= HELD;
    this.held++;
  }

  unhold(b: number): void {
    if (!(this.state[b] & HELD)) return;
    this.state[b] &= ~HELD;
    this.held--;
  }

  /** After a commit: the blocks freed by it may be reused; returns them (to punch holes). */
  takeFreed(): number[] {
    return this.release(this.detachFreed());
  }

  /** The blocks freed so far, to be released when the transaction freeing them is committed
   * (they stay unusable meanwhile). */
  detachFreed(): number[] {
    const out = this.pendingFree;
    this.pendingFree = [];
    return out;
  }

  /** Detached blocks whose transaction is committed: reusable now; returns the free ones. */
  release(blocks: number[]): number[] {
    const out: number[] = [];
    for (const b of blocks) {
      this.state[b] &= ~PENDING;
      if (this.refs[b] === 0) out.push(b);
    }
    this.pending -= blocks.length;
    return out;
  }

  grow(nrBlocks: number): void {
    if (nrBlocks <= this.nrBlocks) return;
    const r = new Uint32Array(nrBlocks);
    r.set(this.refs);
    this.refs = r;
    const s = new Uint8Array(nrBlocks);
    s.set(this.state);
    this.state = s;
    this.nrBlocks = nrBlocks;
  }

  /** Recounts used blocks from the counts (after loading). */
  recount(): void {
    let u = 0;
    for (let i = 0; i < this.nrBlocks; i++) if (this.refs[i]) u++;
    this.used = u;
    this.takeFreed();
  }
}
