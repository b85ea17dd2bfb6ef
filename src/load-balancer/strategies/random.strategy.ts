import type { IncomingMessage } from 'node:http';
import type { Backend } from '../../backend/backend.js';
import type { LbStrategy } from '../strategy.interface.js';
import { rampEnd, uniformWeights } from './weights.js';

/**
 * Weighted random. Equal weights: O(1). Otherwise a cumulative-weight table, built once per
 * pool snapshot, and a binary search: O(log n). While a slow-start ramp is running the table is
 * rebuilt per pick (O(n)), since weights then change with time.
 */
export class RandomStrategy implements LbStrategy {
  private lastPool: readonly Backend[] | undefined = undefined;
  private uniform = true;
  private rampUntil = 0;
  private cumulative: Float64Array = new Float64Array(0);

  constructor(
    private readonly random: () => number,
    private readonly now: () => number = Date.now,
  ) {}

  pick(pool: readonly Backend[], _req?: IncomingMessage): Backend | undefined {
    const n = pool.length;
    if (n === 0) return undefined;
    if (pool !== this.lastPool) {
      this.lastPool = pool;
      this.rampUntil = rampEnd(pool);
      this.uniform = uniformWeights(pool);
      this.build(pool);
    } else if (this.rampUntil !== 0) {
      if (this.now() < this.rampUntil) this.build(pool);
      else {
        this.rampUntil = 0;
        this.build(pool); // once more at full weights
      }
    }
    if (this.uniform && this.rampUntil === 0) return pool[Math.floor(this.random() * n)];
    const cum = this.cumulative;
    const target = this.random() * cum[n - 1];
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cum[mid] > target) hi = mid;
      else lo = mid + 1;
    }
    return pool[lo];
  }

  private build(pool: readonly Backend[]): void {
    const now = this.now();
    if (this.cumulative.length < pool.length) this.cumulative = new Float64Array(pool.length);
    let sum = 0;
    for (let i = 0; i < pool.length; i++) {
      sum += pool[i].effectiveWeight(now);
      this.cumulative[i] = sum;
    }
  }
}
