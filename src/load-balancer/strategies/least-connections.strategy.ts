import type { IncomingMessage } from 'node:http';
import type { Backend } from '../../backend/backend.js';
import type { LbStrategy } from '../strategy.interface.js';
import { smoothPick } from './weights.js';

/**
 * nginx's least_conn: the backends with the fewest requests in flight relative to their
 * (effective) weight; among those tied, smooth weighted round-robin, as nginx does. So idle
 * backends share traffic by weight (5:1 weights give 5:1 when nothing is in flight), ties are
 * spread evenly, and slow start is honoured. O(n).
 */
export class LeastConnectionsStrategy implements LbStrategy {
  private readonly current: number[] = [];
  private minLoad = 0;
  private now = 0;
  private readonly tied = (b: Backend): boolean => b.inFlight / b.effectiveWeight(this.now) === this.minLoad;

  constructor(private readonly clock: () => number = Date.now) {}

  pick(pool: readonly Backend[], _req?: IncomingMessage): Backend | undefined {
    const n = pool.length;
    if (n === 0) return undefined;
    if (n === 1) return pool[0];
    const now = this.clock();
    let min = Infinity;
    let count = 0;
    let only: Backend | undefined;
    for (const b of pool) {
      const load = b.inFlight / b.effectiveWeight(now);
      if (load < min) {
        min = load;
        count = 1;
        only = b;
      } else if (load === min) count++;
    }
    if (count === 1) return only;
    this.minLoad = min;
    this.now = now;
    return smoothPick(pool, this.current, now, this.tied);
  }
}
