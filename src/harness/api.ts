// The harness from TypeScript: `import { Harness } from 'layerfs'`. Each call is a command of
// the harness protocol (protocol.ts, the CLI's and the socket's too), run in the caller's process,
// which never serves the mount (the resident service does, reached through the C helper), so it
// may touch the mount itself; each resolves once done, or rejects with the one-line error the
// CLI would print.
import { HarnessState, type HarnessStatus, type TraceLine } from './harness';
import type { Rule, RuleState } from './faults';
import { execute } from './protocol';
import type { Model } from './durable';
import type { CrashOpts } from './writes';

export type { Model } from './durable';
export type { CrashOpts } from './writes';
export type { HarnessStatus } from './harness';

export type { Rule, RuleState } from './faults';
export type { TraceLine } from './harness';
import type { Change } from './diff';

export type { Change } from './diff';

export interface HarnessOptions {
  /** Where the upper and checkpoints live (default: /var/tmp/layerfs-harness[-UID]/HASH). */
  state?: string;
  /** What a crash keeps: 'posix' (POSIX-strict, the default) or 'ext4' (data=ordered); see durable.ts. */
  model?: Model;
}

const settle = async <T>(fn: () => T): Promise<T> => fn();

export class Harness {
  private constructor(readonly base: string, readonly mountpoint: string) {}

  /** Mounts a copy-on-write view of base at mountpoint (base is never modified). */
  static async mount(base: string, mountpoint: string, opts: HarnessOptions = {}): Promise<Harness> {
    const h = await settle(() => HarnessState.create(base, mountpoint, opts.state ?? null, opts.model ?? 'posix'));
    return new Harness(h.base, h.mnt);
  }

  private run<T>(cmd: object): Promise<T> {
    return settle(() => execute(this.mountpoint, cmd) as T);
  }

  /** Back to base, whatever the view holds (O(1): the old upper is removed in the background). */
  reset(): Promise<void> { return this.run({ cmd: 'reset' }); }

  checkpoint(name: string): Promise<void> { return this.run({ cmd: 'checkpoint', name }); }

  restore(name: string): Promise<void> { return this.run({ cmd: 'restore', name }); }

  checkpoints(): Promise<string[]> { return this.run({ cmd: 'checkpoints' }); }

  /** What changed since base (or since checkpoint `since`): A(dded), C(hanged), D(eleted), paths from the mount's root. */
  diff(opts: { since?: string } = {}): Promise<Change[]> { return this.run({ cmd: 'diff', ...opts }); }

  /** The changes as an image-layer tar (whiteouts as `.wh.` entries) written to file, or (format upper) as an overlay upper dir. */
  commit(file: string, opts: { format?: 'tar' | 'upper' } = {}): Promise<void> { return this.run({ cmd: 'commit', file, ...opts }); }

  /** A fault rule: calls of op on paths matching the glob fail with errno and/or wait delayMs
   * (the nth and count after it, each with probability prob, seeded). Active when this resolves. */
  inject(rule: Rule): Promise<void> { return this.run({ cmd: 'inject', rule }); }

  /** Every fault rule goes. */
  clearFaults(): Promise<void> { return this.run({ cmd: 'clear' }); }

  /** The rules with how many calls each saw and acted on. */
  faults(): Promise<RuleState[]> { return this.run({ cmd: 'faults' }); }

  /** A mark in the trace (trace({ since }) starts after the last one of that name). */
  mark(name: string): Promise<void> { return this.run({ cmd: 'mark', name }); }

  /** The traced operations: time, pid, op, path(s), args, result, ms. */
  trace(f: { since?: string; op?: string; path?: string } = {}): Promise<TraceLine[]> { return this.run({ cmd: 'trace', ...f }); }

  /** Everything written so far made durable (what sync(2) would do: FUSE never sees it). */
  sync(): Promise<void> { return this.run({ cmd: 'sync' }); }

  /** Power loss, then the mount made anew from what was durable: open files of the old mount
   * fail with EIO; opts keep part of the unsynced writes (the N most recent, or each with a
   * probability, whole or torn into sectors or pages). */
  crash(opts: CrashOpts = {}): Promise<void> { return this.run({ cmd: 'crash', ...opts }); }

  /** After a crash made by a rule: the mount made anew from what was durable. */
  recover(): Promise<void> { return this.run({ cmd: 'recover' }); }

  /** The durability model's state: crashed, pending changes and writes, memory held. */
  status(): Promise<HarnessStatus> { return this.run({ cmd: 'status' }); }

  /** Unmounts and removes the harness's state. */
  unmount(): Promise<void> { return this.run({ cmd: 'umount' }); }
}
