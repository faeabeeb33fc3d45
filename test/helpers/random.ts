// The seeded PRNG the random test sequences use (the harness's fault rules use the same).
export { mulberry32 } from '../../src/sys/random';
