import type { IncomingMessage } from 'node:http';
import type { Backend } from '../../backend/backend.js';
import type { LbStrategy } from '../strategy.interface.js';

/**
 * Plain round-robin over the eligible pool: over k·n picks from a stable pool of n, each
 * backend is picked exactly k times. When the pool changes the cursor simply continues.
 */
export class RoundRobinStrategy implements LbStrategy {
  private cursor = 0;

  pick(pool: readonly Backend[], _req?: IncomingMessage): Backend | undefined {
    const n = pool.length;
    if (n === 0) return undefined;
    let i = this.cursor;
    if (i >= n) i = 0;
    this.cursor = i + 1;
    return pool[i];
  }
}
