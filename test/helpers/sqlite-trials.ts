// SQLite under power loss: a writer commits transactions in a harness mount and prints an ack
// after each COMMIT returns; the harness crashes at a seeded random operation on the database's
// files (before or after it); after the remount, sqlite3 recovers the database and a checker
// counts what survived. Every trial checks: integrity_check is ok, the rows and the counter
// agree (a transaction is all or nothing), and no acknowledged commit is missing.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { CrashOpts, Harness } from '../../src/harness/api';
import { mulberry32 } from './random';

export interface SqliteConfig { journal: 'truncate' | 'persist' | 'delete' | 'wal'; sync: 'full' | 'extra' | 'normal' | 'off' }

export interface TrialCounts { trials: number; crashedMidRun: number; acked: number; lost: number; corrupt: number; failures: string[] }

const BASE_ROWS = 50;
const TXNS = 12;

/** The fixture's database (made on the host, not through the harness): BASE_ROWS rows, counter 0. */
export function makeDb(file: string, c: SqliteConfig): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const sql = [`PRAGMA journal_mode=${c.journal};`, 'CREATE TABLE t(i INTEGER PRIMARY KEY, v BLOB);', 'CREATE TABLE c(n INTEGER);', 'INSERT INTO c VALUES(0);',
    'BEGIN;', ...Array.from({ length: BASE_ROWS }, (_, i) => `INSERT INTO t VALUES(${i + 1}, randomblob(700));`), 'COMMIT;'].join('\n');
  const r = spawnSync('sqlite3', ['-bail', file], { input: sql, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`sqlite3: ${r.stderr}`);
}

function writerScript(c: SqliteConfig): string {
  const lines = [`PRAGMA journal_mode=${c.journal};`, `PRAGMA synchronous=${c.sync};`];
  for (let k = 1; k <= TXNS; k++) {
    lines.push('BEGIN;', `INSERT INTO t VALUES(${BASE_ROWS + k}, randomblob(${300 + 97 * k}));`,
      `UPDATE t SET v = randomblob(500) WHERE i = ${1 + ((k * 7) % BASE_ROWS)};`, `UPDATE c SET n = ${k};`, 'COMMIT;', `SELECT 'ack ${k}';`);
    if (c.journal === 'wal' && k % 5 === 0) lines.push('PRAGMA wal_checkpoint(TRUNCATE);');
  }
  return lines.join('\n') + '\n';
}

/** What the database holds after recovery: integrity, rows, counter (or why it cannot be read). */
function check(file: string): { ok: boolean; rows: number; n: number; why: string } {
  if (!fs.existsSync(file)) return { ok: false, rows: 0, n: -1, why: 'database file missing' };
  const r = spawnSync('sqlite3', ['-bail', file], { input: 'PRAGMA integrity_check;\nSELECT count(*) FROM t;\nSELECT n FROM c;\n', encoding: 'utf8', timeout: 30_000 });
  const out = r.stdout.trim().split('\n');
  if (r.status !== 0 || out.length !== 3) return { ok: false, rows: 0, n: -1, why: `sqlite3: ${(r.stderr || r.stdout).trim().split('\n')[0]}` };
  return { ok: out[0] === 'ok', rows: Number(out[1]), n: Number(out[2]), why: out[0] };
}

/** How many harness operations on the database's files one full run makes. */
export async function opsOfRun(h: Harness, mnt: string, c: SqliteConfig): Promise<number> {
  await h.reset();
  await h.mark('run');
  const r = spawnSync('sqlite3', ['-bail', path.join(mnt, 'db')], { input: writerScript(c), encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`sqlite3 (no crash): ${r.stderr}`);
  return (await h.trace({ since: 'run', path: '/db*' })).length;
}

export async function trials(h: Harness, mnt: string, c: SqliteConfig, n: number, seed: number, keep: CrashOpts = {}): Promise<TrialCounts> {
  const total = await opsOfRun(h, mnt, c);
  const rnd = mulberry32(seed);
  const out: TrialCounts = { trials: 0, crashedMidRun: 0, acked: 0, lost: 0, corrupt: 0, failures: [] };
  const db = path.join(mnt, 'db');
  for (let t = 0; t < n; t++) {
    await h.reset();
    const nth = 1 + Math.floor(rnd() * total);
    const when = rnd() < 0.5 ? 'before' : 'after';
    await h.inject({ op: '*', path: '/db*', nth, count: 1, crash: when, ...keep, ...(keep.seed !== undefined ? { seed: keep.seed + t } : {}) });
    const w = spawnSync('sqlite3', ['-bail', db], { input: writerScript(c), encoding: 'utf8', timeout: 60_000 });
    const acks = (w.stdout.match(/^ack \d+$/gm) ?? []).map((l) => Number(l.slice(4)));
    const last = acks.length ? acks[acks.length - 1] : 0;
    const st = await h.status();
    if (st.errors?.length) out.failures.push(`trial ${t}: the model failed: ${st.errors[0]}`);
    if (st.crashed) {
      out.crashedMidRun++;
      await h.recover();
    } else await h.crash();
    await h.clearFaults();
    const got = check(db);
    out.trials++;
    out.acked += last;
    const atomic = got.rows === BASE_ROWS + got.n;
    if (!got.ok || !atomic) {
      out.corrupt++;
      out.failures.push(`trial ${t} (op ${nth} ${when}): ${got.why}, rows ${got.rows}, counter ${got.n}`);
    } else if (got.n < last) {
      out.lost++;
      out.failures.push(`trial ${t} (op ${nth} ${when}): acked ${last}, counter ${got.n}`);
    }
  }
  return out;
}
