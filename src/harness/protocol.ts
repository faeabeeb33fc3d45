// The harness's commands as JSON objects — `{"cmd": "reset"}`, `{"cmd": "inject", "rule": {...}}`,
// `{"cmd": "crash", "keepLast": 3}` — one dispatcher for the CLI (`harness ctl`), the TypeScript
// API and the socket (`harness serve`: one JSON object a line each way, every request answered
// `{"id", "ok": true, "result"}` or `{"id", "ok": false, "error"}`; a malformed line gets an
// error back, never silence).
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { UsageError } from '../mount/validate';
import { HarnessState } from './harness';
import { checkCrashOpts, checkRule } from './faults';
import type { Change } from './diff';

/** A change with its path from the mount's root. */
export const rooted = (c: Change): Change => ({ ...c, path: `/${c.path}` });

const FIELDS: Record<string, string[]> = {
  reset: [], diff: ['since'], checkpoint: ['name'], restore: ['name'], checkpoints: [], commit: ['file', 'format'], umount: [],
  inject: ['rule'], faults: [], clear: [], mark: ['name'], trace: ['since', 'op', 'path'],
  sync: [], crash: ['keepLast', 'keepProb', 'torn', 'seed'], recover: [], status: [],
};
export const COMMANDS = Object.keys(FIELDS);

function str(c: Record<string, unknown>, k: string, required: boolean): string | undefined {
  const v = c[k];
  if (v === undefined && !required) return undefined;
  if (typeof v !== 'string' || !v) throw new UsageError(`${String(c.cmd)} needs ${k} (a string)`);
  return v;
}

/** Runs one command on the harness mounted at mnt; its result (JSON-able), or a UsageError. */
export function execute(mnt: string, cmd: unknown): unknown {
  if (!cmd || typeof cmd !== 'object' || Array.isArray(cmd)) throw new UsageError('a command is a JSON object: {"cmd": "reset"}');
  const c = cmd as Record<string, unknown>;
  const name = c.cmd;
  if (typeof name !== 'string' || !FIELDS[name]) throw new UsageError(`unknown command '${String(name)}' (${COMMANDS.join(', ')})`);
  const extra = Object.keys(c).find((k) => k !== 'cmd' && k !== 'id' && !FIELDS[name].includes(k));
  if (extra) throw new UsageError(`unknown field '${extra}' of ${name}${FIELDS[name].length ? ` (${FIELDS[name].join(', ')})` : ''}`);
  const h = HarnessState.of(mnt);
  switch (name) {
    case 'reset': return h.reset();
    case 'diff': return h.diff(str(c, 'since', false)).map(rooted);
    case 'checkpoint': return h.checkpoint(str(c, 'name', true)!);
    case 'restore': return h.restore(str(c, 'name', true)!);
    case 'checkpoints': return h.checkpoints();
    case 'commit': {
      const format = str(c, 'format', false) ?? 'tar';
      if (format !== 'tar' && format !== 'upper') throw new UsageError(`unknown commit format '${format}' (tar, upper)`);
      if (format === 'upper') return h.commitUpper(str(c, 'file', true)!);
      const fd = fs.openSync(path.resolve(str(c, 'file', true)!), 'wx', 0o644);
      try {
        return h.commitTar(fd);
      } finally {
        fs.closeSync(fd);
      }
    }
    case 'umount': return h.destroy();
    case 'inject': return h.inject(wrap(() => checkRule(c.rule)));
    case 'faults': return h.rules();
    case 'clear': return h.clearFaults();
    case 'mark': return h.mark(str(c, 'name', true)!);
    case 'trace': return h.trace({ since: str(c, 'since', false), op: str(c, 'op', false), path: str(c, 'path', false) });
    case 'sync': return h.syncAll();
    case 'crash': {
      const { cmd: _c, id: _i, ...opts } = c;
      return h.crash(wrap(() => checkCrashOpts(opts)));
    }
    case 'recover': return h.recover();
    default: return h.status();
  }
}

function wrap<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw e instanceof UsageError ? e : new UsageError((e as Error).message);
  }
}

/** One request line answered. */
export function answer(mnt: string, line: string): string {
  let req: unknown, id: unknown = null;
  try {
    req = JSON.parse(line);
    if (req && typeof req === 'object') id = (req as { id?: unknown }).id ?? null;
  } catch {
    return JSON.stringify({ id, ok: false, error: `not a JSON command: ${line.slice(0, 80)}` });
  }
  try {
    const result = execute(mnt, req);
    return JSON.stringify({ id, ok: true, ...(result === undefined ? {} : { result }) });
  } catch (e) {
    return JSON.stringify({ id, ok: false, error: (e as Error).message.split('\n')[0] });
  }
}

/**
 * Serves the harness at mnt on a unix socket until it is unmounted (by an `umount` command or
 * otherwise). Requests are answered in order, one at a time (a reset finishes before the next).
 */
export function serve(mnt: string, socketPath: string, onReady: () => void): void {
  HarnessState.of(mnt);   // a harness mount, or one line and exit
  if (fs.existsSync(socketPath)) {
    if (!fs.statSync(socketPath).isSocket()) throw new UsageError(`${socketPath} exists and is not a socket`);
    fs.unlinkSync(socketPath);   // a previous server's, gone with it
  }
  const server = net.createServer((conn) => {
    let buf = '';
    conn.setEncoding('utf8');
    conn.on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line) conn.write(answer(mnt, line) + '\n');
      }
    });
    conn.on('error', () => conn.destroy());
  });
  const stop = (): void => {
    clearInterval(watch);
    server.close();
    fs.rmSync(socketPath, { force: true });
  };
  // the harness went (umount, or unmounted by other means): so does its server
  const watch = setInterval(() => {
    try {
      HarnessState.of(mnt);
    } catch {
      stop();
    }
  }, 500);
  server.listen(socketPath, () => {
    fs.chmodSync(socketPath, 0o600);
    onReady();
  });
}
