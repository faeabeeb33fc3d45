// LAYERFS_* defaults (LAYERFS_PASSTHROUGH, LAYERFS_URING, LAYERFS_FUSE_MINOR, ...) belong to the
// command that asked for a mount. The resident service builds each mount inside withEnv() with
// the variables its helper forwarded; a process serving its own mount reads its own environment.
let current: NodeJS.ProcessEnv = process.env;

export function env(name: string): string | undefined {
  return current[name];
}

/** Runs build (synchronous) with vars as the LAYERFS_* environment. */
export function withEnv<T>(vars: NodeJS.ProcessEnv, build: () => T): T {
  const saved = current;
  current = vars;
  try {
    return build();
  } finally {
    current = saved;
  }
}
