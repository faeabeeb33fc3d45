// -o option lists as mount(8), fuse-overlayfs and podman write them: comma-separated, values
// may be double-quoted (context="a,b") and may escape a comma or colon with a backslash.
export type OptionMap = Map<string, string | true>;

export function splitOptions(s: string): string[] {
  const out: string[] = [];
  let cur = '', quoted = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === '\\' && i + 1 < s.length) {
      cur += c + s[++i];  // keep the escape: lowerdir parsing needs to see \:
    } else if (c === '"') {
      quoted = !quoted;
      cur += c;
    } else if (c === ',' && !quoted) {
      if (cur) out.push(cur);
      cur = '';
    } else cur += c;
  }
  if (quoted) throw new Error(`unterminated quote in options: ${s}`);
  if (cur) out.push(cur);
  return out;
}

/** Parses several -o strings; a later value of the same key wins, as with mount(8). */
export function parseOptions(lists: string[]): OptionMap {
  const m: OptionMap = new Map();
  for (const list of lists) {
    for (const item of splitOptions(list)) {
      const eq = item.indexOf('=');
      if (eq < 0) m.set(item, true);
      else {
        let v = item.slice(eq + 1);
        if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) v = v.slice(1, -1);
        m.set(item.slice(0, eq), v);
      }
    }
  }
  return m;
}

export function boolOption(m: OptionMap, key: string, def: boolean): boolean {
  const v = m.get(key);
  if (v === undefined) return def;
  if (v === true || v === '1' || v === 'true' || v === 'yes' || v === 'on') return true;
  if (v === '0' || v === 'false' || v === 'no' || v === 'off') return false;
  throw new Error(`bad value for option ${key}: ${v}`);
}

export function numberOption(m: OptionMap, key: string, def: number): number {
  const v = m.get(key);
  if (v === undefined) return def;
  const n = typeof v === 'string' ? Number(v) : NaN;
  if (!Number.isFinite(n) || n < 0) throw new Error(`bad value for option ${key}: ${v === true ? '(none)' : v}`);
  return n;
}

/** An auto|on|off option's value (also 1/0): 1 auto, 2 on, 0 off; -1 for anything else. */
export function autoOnOff(v: string | true): 0 | 1 | 2 | -1 {
  return v === 'auto' ? 1 : v === 'on' || v === '1' || v === true ? 2 : v === 'off' || v === '0' ? 0 : -1;
}
