import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Mount tests share /dev/fuse, loop devices and the kernel's mount table: run files one by one.
    fileParallelism: false,
    reporters: ['default'],
    globalSetup: ['test/helpers/global-setup.ts'],
  },
});
