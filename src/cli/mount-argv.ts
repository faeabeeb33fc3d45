// The command line of the programs mount(8) and the engines run (layerfs-overlay, layerfs-aufs):
//   PROG [-f] [-d] -o OPTS [SOURCE] MNT       (fuse-overlayfs's form)
//   PROG SOURCE MNT -o OPTS                    (mount.fuse's order)
// An unknown flag is warned about and ignored, as fuse-overlayfs's callers expect.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DAEMON_FLAG } from '../mount/lifecycle';

// dist/src/cli -> the package's own package.json
export const VERSION = (JSON.parse(fs.readFileSync(path.resolve(__dirname, '../../../package.json'), 'utf8')) as { version: string }).version;

export interface MountArgv { options: string[]; positional: string[]; foreground: boolean; debug: boolean; daemon: boolean }

export function parseMountArgv(prog: string, argv: string[], usage: string, version: string): MountArgv {
  const fail = (msg: string): never => {
    process.stderr.write(`${prog}: ${msg}\n`);
    process.exit(1);
  };
  const out: MountArgv = { options: [], positional: [], foreground: false, debug: false, daemon: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === DAEMON_FLAG) out.daemon = true;
    else if (a === '-f') out.foreground = true;
    else if (a === '-d' || a === '--debug') out.debug = true;
    else if (a === '-o') {
      if (i + 1 >= argv.length) fail('-o needs a value');
      out.options.push(argv[++i]);
    } else if (a.startsWith('-o')) out.options.push(a.slice(2));
    else if (a === '-h' || a === '--help') {
      process.stdout.write(`${usage}\n`);
      process.exit(0);
    } else if (a === '-V' || a === '--version') {
      process.stdout.write(`${version}\n`);
      process.exit(0);
    } else if (a.startsWith('-') && a !== '-') process.stderr.write(`${prog}: warning: unknown flag ${a} ignored\n`);
    else out.positional.push(a);
  }
  if (out.positional.length < 1 || out.positional.length > 2) fail(usage);
  return out;
}
