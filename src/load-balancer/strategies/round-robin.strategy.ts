import type { IncomingMessage } from 'node:http';
import type { Backend } from '../../backend/backend.js';
import type { LbStrategy } from '../strategy.interface.js';
import { anySlowStart, uniformWeights } from './weights.js';

/**
 * nginx's smooth weighted round-robin: every pick adds each backend's effective weight to its
 * `current`, takes the largest, and subtracts the total from the winner. Weights 5,1,1 give
 * a a b a c a a (never a burst of five). With equal weights (and no slow start) it is plain
 * round-robin, O(1): over k·n picks from a stable pool of n each backend gets exactly k.
 * Weighted picks are O(n), as in nginx.
 */
export class RoundRobinStrategy implements LbStrategy {
  private cursor = 0;
  private lastPool: readonly Backend[] | undefined = undefined;
  private plain = true;
  /** Smooth-WRR state per backend slot. */
  private current: number[] = [];

  constructor(private readonly now: () => number = Date.now) {}

  pick(pool: readonly Backend[], _req?: IncomingMessage): Backend | undefined {
    const n = pool.length;
    if (n === 0) return undefined;
    if (pool !== this.lastPool) {
      this.lastPool = pool;
      this.plain = uniformWeights(pool) && !anySlowStart(pool);
    }
    if (this.plain) {
      let i = this.cursor;
      if (i >= n) i = 0;
      this.cursor = i + 1;
      return pool[i];
    }
    return this.smooth(pool);
  }

  private smooth(pool: readonly Backend[]): Backend {
    const now = this.now();
    const current = this.current;
    let total = 0;
    let best = pool[0];
    let bestCurrent = -Infinity;
    for (const b of pool) {
      const w = b.effectiveWeight(now);
      const c = (current[b.slot] ?? 0) + w;
      current[b.slot] = c;
      total += w;
      if (c > bestCurrent) {
        bestCurrent = c;
        best = b;
      }
    }
    current[best.slot] = bestCurrent - total;
    return best;
  }
}
