import type { IncomingMessage } from 'node:http';
import type { Backend } from '../../backend/backend.js';
import type { LbStrategy } from '../strategy.interface.js';

/**
 * Power of two choices (Envoy's default least-request): two distinct backends at random, keep
 * the one with fewer requests in flight relative to weight. O(1), and avoids the herd effect
 * of always choosing the global minimum. `(inFlight + 1) / weight` lets weights count while
 * both are idle.
 */
export class PowerOfTwoStrategy implements LbStrategy {
  constructor(
    private readonly random: () => number,
    private readonly now: () => number = Date.now,
  ) {}

  pick(pool: readonly Backend[], _req?: IncomingMessage): Backend | undefined {
    const n = pool.length;
    if (n === 0) return undefined;
    if (n === 1) return pool[0];
    const i = Math.floor(this.random() * n);
    let j = Math.floor(this.random() * (n - 1));
    if (j >= i) j++;
    const a = pool[i];
    const b = pool[j];
    const now = this.now();
    return (b.inFlight + 1) / b.effectiveWeight(now) < (a.inFlight + 1) / a.effectiveWeight(now) ? b : a;
  }
}
