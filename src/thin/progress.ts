// Progress of a long check or dump on a terminal: nothing for the first second (or
// LAYERFS_PROGRESS_AFTER_MS), then one line on stderr rewritten at most every 100 ms, cleared at
// the end. Never on a pipe or file: scripts read stdout and a one-line error on stderr.
import * as fs from 'node:fs';

export type OnProgress = (done: number, total: number) => void;

export interface Progress { tick: OnProgress; note(text: string): void; end(): void }

export function progress(label: string): Progress {
  const tty = process.stderr.isTTY === true;
  const after = Number(process.env.LAYERFS_PROGRESS_AFTER_MS ?? 1000);
  const t0 = Date.now();
  let last = 0, shown = false;
  const show = (text: string): void => {
    const now = Date.now();
    if (!tty || now - t0 < after || now - last < 100) return;
    last = now;
    shown = true;
    fs.writeSync(2, `\r\x1b[K${label}: ${text}`);
  };
  return {
    tick: (done, total) => show(`${total ? Math.floor((done / total) * 100) : 0}% (${done}/${total})`),
    note: show,
    end: () => {
      if (shown) fs.writeSync(2, '\r\x1b[K');
    },
  };
}
