// `layerfs layer pack|unpack`: an overlay upper dir as an image-layer tar (`.wh.` whiteouts) and back.
import * as fs from 'node:fs';
import type { Command } from 'commander';
import { packUpper, PackError } from './pack';
import { unpackLayer, UnpackError, type UnpackForm } from './unpack';

type Fail = (msg: string) => never;

function openOut(file: string | undefined, fail: Fail): number {
  if (!file || file === '-') {
    if (process.stdout.isTTY) fail('layer pack: refusing to write a tar to a terminal (use -f FILE or a pipe)');
    return 1;
  }
  try {
    return fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o644);
  } catch (e) {
    return fail(`layer pack: ${file}: ${(e as NodeJS.ErrnoException).code}`);
  }
}

function openIn(file: string | undefined, fail: Fail): number {
  if (!file || file === '-') return 0;
  try {
    return fs.openSync(file, 'r');
  } catch (e) {
    return fail(`layer unpack: ${file}: ${(e as NodeJS.ErrnoException).code}`);
  }
}

export function registerLayer(program: Command, fail: Fail): void {
  const layer = program.command('layer').description('image layers: an overlay upper dir as a layer tar (.wh. whiteouts) and back');
  layer.command('pack')
    .description('write UPPER as an image-layer tar (to stdout or -f FILE)')
    .argument('<upper>')
    .option('-f, --file <tar>', 'the tar to write (- = stdout)')
    .option('--lowerdir <l1:l2>', "the mount's lower dirs (top first): needed for redirected dirs and metacopy files")
    .action((upper: string, f: { file?: string; lowerdir?: string }) => {
      const out = openOut(f.file, fail);
      try {
        const r = packUpper(upper, f.lowerdir ? f.lowerdir.split(':').filter(Boolean) : [], out);
        if (out !== 1) process.stderr.write(`layerfs: ${r.entries} entries (${r.whiteouts} whiteouts, ${r.opaque} opaque dirs), ${r.bytes} bytes of data\n`);
      } catch (e) {
        if (out !== 1 && f.file) fs.rmSync(f.file, { force: true });   // no half-written layer left behind
        if (e instanceof PackError) fail(`layer pack: ${e.message}`);
        throw e;
      } finally {
        if (out !== 1) fs.closeSync(out);
      }
    });
  layer.command('unpack')
    .description('extract an image-layer tar (stdin or -f FILE) into the empty dir DIR')
    .argument('<dir>')
    .option('-f, --file <tar>', 'the tar to read (- = stdin)')
    .option('--oci', 'keep .wh. whiteouts and .wh..wh..opq markers as files (a lower layerfs mounts as it is)')
    .action((dir: string, f: { file?: string; oci?: boolean }) => {
      const inFd = openIn(f.file, fail);
      try {
        const r = unpackLayer(inFd, dir, (f.oci ? 'oci' : 'overlay') as UnpackForm);
        for (const n of r.notes) process.stderr.write(`layerfs: note: ${n}\n`);
      } catch (e) {
        if (e instanceof UnpackError) fail(`layer unpack: ${e.message}`);
        throw e;
      } finally {
        if (inFd !== 0) fs.closeSync(inFd);
      }
    });
}
