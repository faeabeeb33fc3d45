// `layerfs aufs MNT [--json]`: the branches of a mounted aufs-mode union — index, permission,
// free space, path (aufs's /sys/fs/aufs/si_*/br*), read from the mount's root (user.aufs.si).
// `layerfs aufs MNT VERB…`: branches changed while mounted (src/aufs/control.ts).
import * as fs from 'node:fs';
import type { Command } from 'commander';
import { native } from '../sys/native';
import { errnoName } from '../sys/errors';
import { E } from '../sys/constants';
import { INTROSPECT_PREFIX } from './mount';

interface Row { index: number; path: string; perm: string; attrs: string[]; freeBytes: number | null; totalBytes: number | null }

function human(n: number | null): string {
  if (n === null) return '?';
  const u = ['B', 'K', 'M', 'G', 'T', 'P'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)}${u[i]}`;
}

export function registerAufs(program: Command, fail: (msg: string) => never): void {
  program.command('aufs')
    .description("an aufs-mode mount's branches: index, permission, free space, path")
    .argument('<mnt>')
    .argument('[verbs...]', 'add:INDEX:BRANCH ins:INDEX:BRANCH append:BRANCH prepend:BRANCH del:BRANCH mod:BRANCH=PERM')
    .option('--json', 'one JSON array')
    .action((mnt: string, verbs: string[], f: { json?: boolean }) => {
      for (const verb of verbs) {
        const r = native.setxattr(mnt, `${INTROSPECT_PREFIX}ctl`, Buffer.from(verb), 0, 1);
        if (r < 0) {
          const why = native.getxattr(mnt, `${INTROSPECT_PREFIX}error`, 1);
          fail(`aufs ${verb}: ${typeof why !== 'number' && why.length ? why.toString('utf8') : errnoName(-r)}`);
        }
      }
      // the kernel drops its cached names asynchronously: return once it has every invalidation
      for (let i = 0; verbs.length && i < 500; i++) {
        const s = native.getxattr(mnt, `${INTROSPECT_PREFIX}settled`, 1);
        if (typeof s === 'number' || s.toString() === '1') break;
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
      }
      if (verbs.length) return;
      const v = native.getxattr(mnt, `${INTROSPECT_PREFIX}si`, 1);
      if (typeof v === 'number') {
        fail(-v === E.ENODATA || -v === E.EOPNOTSUPP ? `${mnt} is not an aufs-mode layerfs mount` : `${mnt}: ${errnoName(-v)}`);
      }
      const table = JSON.parse(v.toString('utf8')) as { path: string; perm: string; attrs: string[] }[];
      const rows: Row[] = table.map((b, index) => {
        let freeBytes: number | null = null, totalBytes: number | null = null;
        try {
          const s = fs.statfsSync(b.path);
          freeBytes = s.bavail * s.bsize;
          totalBytes = s.blocks * s.bsize;
        } catch { /* a branch this caller cannot see */ }
        return { index, ...b, freeBytes, totalBytes };
      });
      if (f.json) {
        process.stdout.write(JSON.stringify(rows) + '\n');
        return;
      }
      process.stdout.write(['index\tperm\tfree\tsize\tpath', ...rows.map((r) =>
        `${r.index}\t${[r.perm, ...r.attrs].join('+')}\t${human(r.freeBytes)}\t${human(r.totalBytes)}\t${r.path}`)].join('\n') + '\n');
    });
}
