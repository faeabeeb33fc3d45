// Mount lifecycle: the command that mounts returns only once the mount answers. It starts a
// detached daemon (new session, stdio on /dev/null) that reports on fd 3 — "ok" or one error
// line — and then serves until unmounted or signalled.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { Session, type SessionOptions } from '../fuse/session';
import type { Filesystem } from '../fuse/filesystem';
import { native } from '../sys/native';
import { serviceWanted } from '../service/client';

export interface Mountable {
  fs: Filesystem;
  mountpoint: string;
  session: SessionOptions;
  /** Called once the session is up, e.g. to hand it to the filesystem for notifies. */
  onSession?(s: Session): void;
  /** Called after the mount has ended (flush and close what the filesystem holds). */
  onEnd?(): void;
}

const READY_TIMEOUT_MS = 30_000;
export const DAEMON_FLAG = '--layerfs-daemon-child';

/** Serves in this process until the mount ends; resolves with the exit code. */
export async function serve(m: Mountable, report: (msg: string) => void): Promise<number> {
  native.raiseNofile();
  // objects are created with exactly the mode the caller asked for (fuse/modes.ts); set once
  // for the process, so no thread ever sees it change
  process.umask(0);
  let session: Session;
  try {
    session = new Session(m.fs, m.mountpoint, m.session);
  } catch (e) {
    report(`error cannot mount ${m.mountpoint}: ${(e as Error).message}`);
    return 1;
  }
  m.onSession?.(session);
  const stop = (): void => session.unmount();
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(sig, stop);
  try {
    await session.ready;
  } catch (e) {
    report(`error cannot mount ${m.mountpoint}: ${(e as Error).message}`);
    session.unmount();
    await session.ended;
    m.onEnd?.();
    return 1;
  }
  report('ok');
  await session.ended;
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.off(sig, stop);
  m.onEnd?.();
  return 0;
}

/** In the daemon child: serve and report through fd 3. */
export async function daemonChild(build: () => Mountable): Promise<never> {
  let reported = false;
  const report = (msg: string): void => {
    if (reported) return;
    reported = true;
    try {
      fs.writeSync(3, msg + '\n');
      fs.closeSync(3);
    } catch {
      /* the parent is gone */
    }
  };
  let code = 1;
  try {
    code = await serve(build(), report);
  } catch (e) {
    report(`error ${(e as Error).message}`);
  }
  process.exit(code);
}

/** In the command: start the daemon and wait for its verdict. Returns the error line or null. */
export function startDaemon(argv: string[]): Promise<string | null> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...process.execArgv, process.argv[1], ...argv, DAEMON_FLAG], {
      detached: true,
      stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
    });
    let out = '';
    let done = false;
    const finish = (err: string | null): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      child.unref();
      (child.stdio[3] as NodeJS.ReadableStream | null)?.removeAllListeners();
      (child.stdio[3] as unknown as { destroy(): void } | null)?.destroy();
      resolve(err);
    };
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      finish('the daemon did not answer within 30 s');
    }, READY_TIMEOUT_MS);
    const pipe = child.stdio[3] as NodeJS.ReadableStream;
    pipe.setEncoding('utf8');
    pipe.on('data', (d: string) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl < 0) return;
      const line = out.slice(0, nl);
      finish(line === 'ok' ? null : line.replace(/^error /, ''));
    });
    child.on('exit', (code, sig) => finish(`the daemon exited before the mount was ready (${sig ?? `code ${code}`})`));
    child.on('error', (e) => finish(`cannot start the daemon: ${e.message}`));
  });
}

export interface MountCommand {
  daemon: boolean;          // this process is the daemon child
  argv: string[];           // the command's arguments, re-run by the daemon child
  check(): void;            // validation only: touches nothing
  build(): Mountable;
  foreground: boolean;
  name: string;             // for error lines
  /** A background mount the resident service can take (src/service): handed to the helper. */
  service?: () => never;
}

/** The one mount flow of every command: check, then serve here (-f/-d) or start the daemon. */
export async function runMount(c: MountCommand): Promise<void> {
  const fail = (msg: string): never => {
    process.stderr.write(`${c.name}: ${msg}\n`);
    process.exit(1);
  };
  if (c.daemon) return daemonChild(() => c.build());
  if (c.service && !c.foreground && serviceWanted()) c.service();
  try {
    c.check();
  } catch (e) {
    fail((e as Error).message);
  }
  if (c.foreground) {
    let m: Mountable | undefined;
    try {
      m = c.build();
    } catch (e) {
      fail((e as Error).message);
    }
    process.exitCode = await serve(m!, (msg) => { if (msg !== 'ok') process.stderr.write(`${c.name}: ${msg.replace(/^error /, '')}\n`); });
    return;
  }
  const err = await startDaemon(c.argv);
  if (err) fail(err);
}
