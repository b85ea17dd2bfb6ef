import type { Backend } from '../../backend/backend.js';

/** True when every backend of the pool has the same configured weight. */
export function uniformWeights(pool: readonly Backend[]): boolean {
  for (let i = 1; i < pool.length; i++) if (pool[i].weight !== pool[0].weight) return false;
  return true;
}

/**
 * When the last slow-start ramp in the pool ends (epoch ms), or 0 if none is running. A ramp
 * starts only when a backend becomes healthy, which also replaces the pool snapshot, so this
 * can be computed once per snapshot and compared with the clock per pick.
 */
export function rampEnd(pool: readonly Backend[]): number {
  let end = 0;
  for (const b of pool) if (b.slowStartMs > 0 && b.healthySince > 0) end = Math.max(end, b.healthySince + b.slowStartMs);
  return end;
}

/**
 * nginx's smooth weighted round-robin step over the backends of `pool` that `include` accepts:
 * add each one's effective weight to its `current`, take the largest, subtract the total.
 * `current` is indexed by backend slot and owned by the calling strategy.
 */
export function smoothPick(pool: readonly Backend[], current: number[], now: number, include?: (b: Backend) => boolean): Backend | undefined {
  let total = 0;
  let best: Backend | undefined;
  let bestCurrent = -Infinity;
  for (const b of pool) {
    if (include !== undefined && !include(b)) continue;
    const w = b.effectiveWeight(now);
    const c = (current[b.slot] ?? 0) + w;
    current[b.slot] = c;
    total += w;
    if (c > bestCurrent) {
      bestCurrent = c;
      best = b;
    }
  }
  if (best !== undefined) current[best.slot] = bestCurrent - total;
  return best;
}
