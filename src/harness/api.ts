// The harness from TypeScript: `import { Harness } from 'layerfs'`. The calls run in the caller's
// process but never serve the mount (the resident service does, reached through the C helper),
// so they may touch the mount themselves; each resolves once done, or rejects with the one-line
// error the CLI would print.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { HarnessState, type HarnessStatus, type TraceLine } from './harness';
import { checkCrashOpts, checkRule, type Rule, type RuleState } from './faults';
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

/** A change with its path from the mount's root, as `harness ctl MNT diff --json` prints it. */
export const rooted = (c: Change): Change => ({ ...c, path: `/${c.path}` });

const settle = async <T>(fn: () => T): Promise<T> => fn();

export class Harness {
  private constructor(readonly base: string, readonly mountpoint: string) {}

  /** Mounts a copy-on-write view of base at mountpoint (base is never modified). */
  static async mount(base: string, mountpoint: string, opts: HarnessOptions = {}): Promise<Harness> {
    const h = await settle(() => HarnessState.create(base, mountpoint, opts.state ?? null, opts.model ?? 'posix'));
    return new Harness(h.base, h.mnt);
  }

  private state(): HarnessState {
    return HarnessState.of(this.mountpoint);
  }

  /** Back to base, whatever the view holds (O(1): the old upper is removed in the background). */
  reset(): Promise<void> { return settle(() => this.state().reset()); }

  checkpoint(name: string): Promise<void> { return settle(() => this.state().checkpoint(name)); }

  restore(name: string): Promise<void> { return settle(() => this.state().restore(name)); }

  checkpoints(): Promise<string[]> { return settle(() => this.state().checkpoints()); }

  /** What changed since base: A(dded), C(hanged), D(eleted), paths from the mount's root. */
  diff(): Promise<Change[]> { return settle(() => this.state().diff().map(rooted)); }

  /** The changes as an image-layer tar (whiteouts as `.wh.` entries) written to file. */
  commit(file: string): Promise<void> {
    return settle(() => {
      const fd = fs.openSync(path.resolve(file), 'wx', 0o644);
      try {
        this.state().commitTar(fd);
      } finally {
        fs.closeSync(fd);
      }
    });
  }

  /** A fault rule: calls of op on paths matching the glob fail with errno and/or wait delayMs
   * (the nth and count after it, each with probability prob, seeded). Active when this resolves. */
  inject(rule: Rule): Promise<void> { return settle(() => this.state().inject(checkRule(rule))); }

  /** Every fault rule goes. */
  clearFaults(): Promise<void> { return settle(() => this.state().clearFaults()); }

  /** The rules with how many calls each saw and acted on. */
  faults(): Promise<RuleState[]> { return settle(() => this.state().rules()); }

  /** A mark in the trace (trace({ since }) starts after the last one of that name). */
  mark(name: string): Promise<void> { return settle(() => this.state().mark(name)); }

  /** The traced operations: time, pid, op, path(s), args, result, ms. */
  trace(f: { since?: string; op?: string; path?: string } = {}): Promise<TraceLine[]> { return settle(() => this.state().trace(f)); }

  /** Everything written so far made durable (what sync(2) would do: FUSE never sees it). */
  sync(): Promise<void> { return settle(() => this.state().syncAll()); }

  /** Power loss, then the mount made anew from what was durable: open files of the old mount
   * fail with EIO; opts keep part of the unsynced writes (the N most recent, or each with a
   * probability, whole or torn into sectors or pages). */
  crash(opts: CrashOpts = {}): Promise<void> { return settle(() => this.state().crash(checkCrashOpts(opts as Record<string, unknown>))); }

  /** After a crash made by a rule: the mount made anew from what was durable. */
  recover(): Promise<void> { return settle(() => this.state().recover()); }

  /** The durability model's state: crashed, pending changes and writes, memory held. */
  status(): Promise<HarnessStatus> { return settle(() => this.state().status()); }

  /** Unmounts and removes the harness's state. */
  unmount(): Promise<void> { return settle(() => this.state().destroy()); }
}
