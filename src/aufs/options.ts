// aufs mount options: branches (`br=`, `br:`, `dirs=`: path[=perm[+attr]] joined by ':'), and
// the aufs options, with the aufs manual's names: any branches rw (create= and cpup= choose
// among them, placement.ts); options whose behaviour is not built are refused in one line
// rather than ignored.
import { parseOptions, splitOptions, type OptionMap } from '../mount/options';
import { UsageError } from '../mount/validate';
import { overlayConfig, type OverlayConfig } from '../overlay/options';
import { parseCpup, parseCreate, type CpupKind, type CreatePolicy } from './placement';

export type Perm = 'rw' | 'ro' | 'rr';
export interface Branch { path: string; perm: Perm; wh: boolean; nolwh: boolean }

/** A branch as the introspection table shows it (`layerfs aufs MNT`). */
export interface BranchRow { path: string; perm: string; attrs: string[] }

export function branchRow(b: Branch, path = b.path): BranchRow {
  return { path, perm: b.perm, attrs: [...(b.wh ? ['wh'] : []), ...(b.nolwh ? ['nolwh'] : [])] };
}

export const MAX_BRANCHES = 127;
export const AUFS_NAME_MAX = 242;


/** One branch spec: path[=perm[+attr...]]. */
export function branch(spec: string, index: number): Branch {
  const eq = spec.lastIndexOf('=');
  const path = eq < 0 ? spec : spec.slice(0, eq);
  if (!path) throw new UsageError(`bad branch '${spec}': no path`);
  if (!path.startsWith('/')) throw new UsageError(`bad branch '${spec}': the path must be absolute`);
  const def: Perm = index === 0 ? 'rw' : 'ro';
  if (eq < 0) return { path, perm: def, wh: false, nolwh: false };
  const [perm, ...attrs] = spec.slice(eq + 1).split('+');
  if (perm !== 'rw' && perm !== 'ro' && perm !== 'rr') throw new UsageError(`bad branch permission '${perm}' in '${spec}' (rw, ro or rr)`);
  for (const a of attrs) if (a !== 'wh' && a !== 'nolwh' && a !== 'unpin' && a !== 'coo_reg' && a !== 'coo_all') throw new UsageError(`bad branch attribute '${a}' in '${spec}' (wh, nolwh)`);
  return { path, perm, wh: attrs.includes('wh'), nolwh: attrs.includes('nolwh') };
}

/** The branches named by the option lists, and the other options. */
export function splitBranches(lists: string[]): { branches: Branch[]; rest: string[] } {
  let specs: string[] | null = null;
  const rest: string[] = [];
  for (const list of lists) {
    for (const item of splitOptions(list)) {
      const m = /^(br[=:]|dirs=)(.*)$/.exec(item);
      if (m) {
        if (specs) throw new UsageError('branches given twice (one br= or dirs= option)');
        specs = m[2].split(':').filter((s) => s !== '');
      } else rest.push(item);
    }
  }
  if (!specs || specs.length === 0) throw new UsageError('no branches given (-o br=/rw=rw:/ro=ro)');
  if (specs.length > MAX_BRANCHES) throw new UsageError(`too many branches: ${specs.length} (at most ${MAX_BRANCHES})`);
  return { branches: specs.map(branch), rest };
}

export interface AufsConfig {
  branches: Branch[];
  overlay: OverlayConfig;
  alwaysOpaque: boolean;
  statfsSum: boolean;
  showWhiteouts: boolean;
  /** Dirs with parts in several branches are renamed, recorded as overlayfs's redirect xattr. */
  dirren: boolean;
  create: CreatePolicy;
  cpup: CpupKind;
  /** Per branch below the first: writable (an rw branch the union writes in place). */
  rwLowers: boolean[];
}

/** Branches + options -> the union's configuration (the rw branch as upper, its work dir inside it). */
export function aufsConfig(lists: string[]): AufsConfig {
  const { branches, rest } = splitBranches(lists);
  const o: OptionMap = parseOptions([rest.join(',')].filter(Boolean));
  let alwaysOpaque = false, statfsSum = false, showWhiteouts = false, dirren = false;
  let create: CreatePolicy = { kind: 'tdp', low: 0, secs: 30 }, cpup: CpupKind = 'tdp';
  for (const [k, v] of [...o]) {
    switch (k) {
      case 'create': {
        const c = typeof v === 'string' ? parseCreate(v) : null;
        if (!c) throw new UsageError(`bad value for option create: ${String(v)} (tdp, rr, mfs[:SECS], tdmfs:LOW[:SECS], pmfs[:SECS], mfsrr:LOW[:SECS], pmfsrr:LOW[:SECS])`);
        create = c;
        break;
      }
      case 'cpup': {
        const c = typeof v === 'string' ? parseCpup(v) : null;
        if (!c) throw new UsageError(`bad value for option cpup: ${String(v)} (tdp, bup, bu)`);
        cpup = c;
        break;
      }
      case 'udba':
        if (v !== 'none' && v !== 'reval' && v !== 'notify') throw new UsageError(`bad value for option udba: ${String(v)} (none, reval, notify)`);
        o.set('watch', v === 'none' ? '0' : '1');   // changes made in a branch: the inotify watcher
        break;
      case 'diropq':
        if (v === 'a' || v === 'always') alwaysOpaque = true;
        else if (v !== 'w' && v !== 'whiteouted') throw new UsageError(`bad value for option diropq: ${String(v)} (w or a)`);
        break;
      case 'sum':
        statfsSum = true;
        break;
      case 'shwh':
        if (branches.some((b) => b.perm === 'rw')) throw new UsageError('option shwh needs a read-only mount: no rw branch');
        showWhiteouts = true;
        break;
      case 'dirren':
        dirren = true;
        break;
      case 'xino': case 'noxino': case 'trunc_xino': case 'notrunc_xino': case 'xino_auto': case 'plink': case 'noplink':
      case 'nosum': case 'nodirren': case 'noshwh': case 'dirperm1': case 'nodirperm1': case 'warn_perm': case 'nowarn_perm':
      case 'verbose': case 'noverbose': case 'dio': case 'nodio': case 'acl': case 'noacl': case 'rdcache': case 'rdblk': case 'rdhash':
        break;   // inode numbers are stable and hard links survive copy-up without them
      default:
        continue;
    }
    o.delete(k);
  }
  const rw = branches[0].perm === 'rw';
  const lowers = rw ? branches.slice(1) : branches;
  // the overlay options that make aufs semantics: no redirects (EXDEV without dirren)
  o.set('lowerdir', lowers.length ? lowers.map((b) => b.path.replace(/\\/g, '\\\\').replace(/:/g, '\\:')).join(':') : branches[0].path);
  if (rw) {
    o.set('upperdir', branches[0].path);
    o.set('workdir', branches[0].path);
  }
  o.set('redirect_dir', dirren ? 'on' : 'off');
  const overlay = overlayConfig(o);
  if (rw && lowers.length === 0) overlay.lowers = [];   // a single rw branch
  return { branches, overlay, alwaysOpaque, statfsSum, showWhiteouts, dirren, create, cpup, rwLowers: lowers.map((b) => b.perm === 'rw') };
}
