// Random operation sequences for union tests, run in a child process (a mount must never be
// driven from the process serving it): each op's result is 'ok', what it read, or the errno code.
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { mulberry32 } from './random';

/** One op in a child process (the mounts are served by their own daemons). */
const RUNNER = `
const fs = require('fs'), path = require('path');
const [root, json] = process.argv.slice(1);
const out = [];
for (const o of JSON.parse(json)) {
  const p = (r) => path.join(root, r);
  try {
    switch (o.op) {
      case 'noop': break;
      case 'write': fs.writeFileSync(p(o.a), o.data); break;
      case 'append': fs.appendFileSync(p(o.a), o.data); break;
      case 'unlink': fs.unlinkSync(p(o.a)); break;
      case 'mkdir': fs.mkdirSync(p(o.a), 0o755); break;
      case 'rmdir': fs.rmdirSync(p(o.a)); break;
      case 'rmrf': fs.rmSync(p(o.a), { recursive: true }); break;
      case 'rename': fs.renameSync(p(o.a), p(o.b)); break;
      case 'chmod': fs.chmodSync(p(o.a), o.mode); break;
      case 'symlink': fs.symlinkSync(o.b, p(o.a)); break;
      case 'link': fs.linkSync(p(o.a), p(o.b)); break;
      case 'truncate': fs.truncateSync(p(o.a), o.mode); break;
      case 'read': out.push(fs.readFileSync(p(o.a), 'utf8')); continue;
      case 'list': out.push(fs.readdirSync(p(o.a)).sort().join(',')); continue;
    }
    out.push('ok');
  } catch (e) { out.push(e.code); }
}
process.stdout.write(JSON.stringify(out));
`;

export function run(root: string, ops: unknown[]): string[] {
  const r = spawnSync(process.execPath, ['-e', RUNNER, root, JSON.stringify(ops)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout);
}

export interface OpSpace {
  known: string[];   // names that exist at the start (so most ops do something)
  dirs: string[];    // dirs that exist ('' = the root)
  names: string[];   // base names for new objects
  rmrf: string[];    // small dirs a whole-tree removal may take
}

export function randomOps(seed: number, n: number, space: OpSpace): unknown[] {
  const rnd = mulberry32(seed);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)];
  // mostly names that exist (in a branch, or made earlier in the sequence), so most ops do something
  const known = [...space.known];
  const dirs = space.dirs.filter((x) => x);
  const fresh = (): string => path.join(pick(['', ...dirs]), pick(space.names));
  const rel = (): string => (rnd() < 0.6 ? pick(known) : fresh());
  const ops: unknown[] = [];
  for (let i = 0; i < n; i++) {
    const op = pick(['write', 'write', 'write', 'append', 'append', 'unlink', 'mkdir', 'rmdir', 'rename', 'rename', 'chmod', 'symlink', 'link', 'truncate', 'read', 'list', ...(rnd() < 0.3 ? ['rmrf'] : [])]);
    const dirOp = op === 'mkdir' || op === 'rmdir' || op === 'rmrf';
    // whole-tree removals are rare and of small dirs, else the rest of the sequence finds nothing
    const a = op === 'list' ? pick(space.dirs) : op === 'mkdir' ? (rnd() < 0.5 ? pick(dirs) : fresh())
      : op === 'rmrf' ? pick(space.rmrf) : dirOp ? pick(dirs) : op === 'write' || op === 'symlink' ? fresh() : rel();
    // link targets resolve beside the link: a sequence must never write outside the mount
    const b = op === 'symlink' ? pick(['a', 'conf', 'sub']) : fresh();
    if (op === 'write' || op === 'mkdir' || op === 'symlink') known.push(a);
    if (op === 'rename' || op === 'link') known.push(b);
    ops.push({ op, a, b, data: `d${i}`, mode: op === 'truncate' ? Math.floor(rnd() * 5) : pick([0o600, 0o644, 0o755]) });
  }
  return ops;
}

