// The service's mounts, for `layerfs ps`: mountpoint, mode, layers, the pid that asked, open
// handles, request counts, and a share of the service's resident memory.
import * as fs from 'node:fs';
import type { Session } from '../fuse/session';
import { native } from '../sys/native';
import type { OverlayConfig } from '../overlay/options';

export interface MountEntry {
  session: Session;
  mode: string;
  prog: string;
  source: string;
  pid: number;          // who asked: the mount helper's parent (the engine, mount(8), a shell)
  since: number;
  lowers: string[];
  upper: string | null;
  work: string | null;
}

function rssKiB(): number {
  const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) : 0;
}

export class MountTable {
  private readonly entries = new Set<MountEntry>();

  add(session: Session, o: { mode: string; prog: string; source: string; pid: number; cfg: OverlayConfig }): MountEntry {
    const e: MountEntry = {
      session, mode: o.mode, prog: o.prog, source: o.source, pid: o.pid, since: Date.now(),
      lowers: o.cfg.lowers, upper: o.cfg.upper ?? null, work: o.cfg.work ?? null,
    };
    this.entries.add(e);
    return e;
  }

  remove(e: MountEntry): void {
    this.entries.delete(e);
  }

  get size(): number {
    return this.entries.size;
  }

  sessions(): Session[] {
    return [...this.entries].map((e) => e.session);
  }

  private rows(): Record<string, unknown>[] {
    const rss = rssKiB();
    const n = Math.max(1, this.entries.size);
    return [...this.entries].map((e) => {
      const counts = native.opCounts(e.session.sid);
      let requests = 0;
      for (let i = 0; i < 64; i++) requests += counts[i];
      return {
        mountpoint: e.session.mountpoint, mode: e.mode, program: e.prog, source: e.source, pid: e.pid,
        since: new Date(e.since).toISOString(), lowers: e.lowers, upper: e.upper, work: e.work,
        openHandles: e.session.openHandles, requests, rssShareKiB: Math.round(rss / n),
      };
    });
  }

  json(): string {
    return JSON.stringify({ pid: process.pid, rssKiB: rssKiB(), mounts: this.rows() }) + '\n';
  }

  text(): string {
    const rows = this.rows();
    const head = `layerfs service pid ${process.pid}, ${rows.length} mount${rows.length === 1 ? '' : 's'}, RSS ${(rssKiB() / 1024).toFixed(1)} MiB\n`;
    const lines = rows.map((r) => [r.mountpoint, r.mode, r.pid, r.openHandles, r.requests, `${r.rssShareKiB} KiB`,
      `${(r.lowers as string[]).join(':')}${r.upper ? ` upper=${r.upper}` : ''}`].join('\t'));
    return head + (rows.length ? ['MOUNTPOINT\tMODE\tPID\tHANDLES\tREQUESTS\tRSS-SHARE\tLAYERS', ...lines].join('\n') + '\n' : '');
  }
}
