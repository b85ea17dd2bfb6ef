import type { Backend } from '../../backend/backend.js';

/** True when every backend of the pool has the same configured weight. */
export function uniformWeights(pool: readonly Backend[]): boolean {
  for (let i = 1; i < pool.length; i++) if (pool[i].weight !== pool[0].weight) return false;
  return true;
}

/** True when any backend of the pool may be in a slow-start ramp (weights vary with time). */
export function anySlowStart(pool: readonly Backend[]): boolean {
  for (const b of pool) if (b.slowStartMs > 0) return true;
  return false;
}
