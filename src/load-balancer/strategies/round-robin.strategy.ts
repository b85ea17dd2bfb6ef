import type { IncomingMessage } from 'node:http';
import type { Backend } from '../../backend/backend.js';
import type { LbStrategy } from '../strategy.interface.js';
import { rampEnd, smoothPick, uniformWeights } from './weights.js';

/**
 * nginx's smooth weighted round-robin: every pick adds each backend's effective weight to its
 * `current`, takes the largest, and subtracts the total from the winner. Weights 5,1,1 give
 * a a b a c a a (never a burst of five). With equal weights and no slow-start ramp running it
 * is plain round-robin, O(1): over k·n picks from a stable pool of n each backend gets exactly
 * k. Weighted picks are O(n), as in nginx.
 */
export class RoundRobinStrategy implements LbStrategy {
  private cursor = 0;
  private lastPool: readonly Backend[] | undefined = undefined;
  private uniform = true;
  private rampUntil = 0;
  /** Smooth-WRR state per backend slot. */
  private readonly current: number[] = [];

  constructor(private readonly now: () => number = Date.now) {}

  pick(pool: readonly Backend[], _req?: IncomingMessage): Backend | undefined {
    const n = pool.length;
    if (n === 0) return undefined;
    if (pool !== this.lastPool) {
      this.lastPool = pool;
      this.uniform = uniformWeights(pool);
      this.rampUntil = rampEnd(pool);
    }
    if (this.uniform && (this.rampUntil === 0 || this.now() >= this.rampUntil)) {
      let i = this.cursor;
      if (i >= n) i = 0;
      this.cursor = i + 1;
      return pool[i];
    }
    return smoothPick(pool, this.current, this.now());
  }
}
