import type { IncomingMessage } from 'node:http';
import type { Backend } from '../../backend/backend.js';
import type { LbStrategy } from '../strategy.interface.js';

/**
 * nginx's least_conn: the backend with the fewest requests in flight relative to its
 * (effective) weight. Ties are broken round-robin: the scan starts one further each pick, so
 * idle backends share traffic evenly instead of the first in the list taking it all. O(n).
 */
export class LeastConnectionsStrategy implements LbStrategy {
  private start = 0;

  constructor(private readonly now: () => number = Date.now) {}

  pick(pool: readonly Backend[], _req?: IncomingMessage): Backend | undefined {
    const n = pool.length;
    if (n === 0) return undefined;
    if (n === 1) return pool[0];
    const now = this.now();
    let s = this.start;
    if (s >= n) s = 0;
    this.start = s + 1;
    let best = pool[s];
    let bestLoad = best.inFlight / best.effectiveWeight(now);
    for (let k = 1; k < n; k++) {
      const b = pool[(s + k) % n];
      const load = b.inFlight / b.effectiveWeight(now);
      if (load < bestLoad) {
        best = b;
        bestLoad = load;
      }
    }
    return best;
  }
}
