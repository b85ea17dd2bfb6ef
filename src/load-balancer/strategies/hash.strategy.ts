import type { IncomingMessage } from 'node:http';
import type { Backend } from '../../backend/backend.js';
import type { LbStrategy } from '../strategy.interface.js';
import { compileKey, murmur3, type KeyReader } from './hash-key.js';
import { RoundRobinStrategy } from './round-robin.strategy.js';

/**
 * Virtual nodes per unit of weight. 160 (ketama's count) leaves about ±3% imbalance between 3
 * backends; 1000 keeps it under ±2%. Rings are capped at MAX_POINTS in total (the count per
 * weight shrinks for very large or heavily weighted pools), so memory stays bounded.
 */
export const POINTS_PER_WEIGHT = 1000;
const MAX_POINTS = 200_000;

/**
 * Consistent hashing on a ketama-style ring (`ip-hash`, and `hash` with a configured key).
 *
 * The ring holds every enabled backend, healthy or not, and never changes while the backend
 * set does not: a key maps to the first ring point clockwise from its hash whose backend is in
 * the eligible pool. So an unhealthy backend's keys move to a deterministic next backend and
 * come back when it recovers, and adding or removing one of N backends moves about 1/N of the
 * keys. Lookup is a binary search, O(log points).
 *
 * With `balanceFactor` c (Envoy and HAProxy's bounded loads), a backend whose in-flight count
 * would exceed ceil(c × average) is passed over for the next point, so one hot key cannot
 * overload a backend. Requests without the key's value are spread round-robin.
 */
export class HashStrategy implements LbStrategy {
  private readonly points: Uint32Array;
  private readonly owners: readonly Backend[];
  private readonly fallback = new RoundRobinStrategy();
  private lastPool: readonly Backend[] | undefined = undefined;
  private inPool: Uint8Array;

  constructor(
    backends: readonly Backend[],
    private readonly key: KeyReader,
    private readonly balanceFactor: number | undefined,
  ) {
    const ring: { point: number; owner: Backend }[] = [];
    const totalWeight = backends.reduce((sum, b) => sum + b.weight, 0);
    const perWeight = Math.max(40, Math.min(POINTS_PER_WEIGHT, Math.floor(MAX_POINTS / Math.max(1, totalWeight))));
    for (const b of backends) {
      for (let i = 0; i < perWeight * b.weight; i++) ring.push({ point: murmur3(`${b.id}#${i}`), owner: b });
    }
    ring.sort((x, y) => x.point - y.point || x.owner.slot - y.owner.slot);
    this.points = Uint32Array.from(ring, (r) => r.point);
    this.owners = ring.map((r) => r.owner);
    this.inPool = new Uint8Array(backends.reduce((m, b) => Math.max(m, b.slot + 1), 0));
  }

  static fromSpec(backends: readonly Backend[], spec: string, balanceFactor: number | undefined): HashStrategy {
    return new HashStrategy(backends, compileKey(spec), balanceFactor);
  }

  pick(pool: readonly Backend[], req: IncomingMessage): Backend | undefined {
    const n = pool.length;
    if (n === 0) return undefined;
    const value = this.key(req);
    if (value === undefined) return this.fallback.pick(pool);
    if (pool !== this.lastPool) this.index(pool);
    const points = this.points;
    const total = points.length;
    if (total === 0) return undefined;
    const start = this.search(murmur3(value));
    // Bounded loads: a backend may hold at most balanceFactor × its weighted share of the
    // requests in flight (this one included).
    let perWeight = Infinity;
    if (this.balanceFactor !== undefined) {
      let inFlight = 1;
      let weight = 0;
      for (const b of pool) {
        inFlight += b.inFlight;
        weight += b.weight;
      }
      perWeight = (this.balanceFactor * inFlight) / weight;
    }
    let fallback: Backend | undefined;
    for (let k = 0; k < total; k++) {
      const owner = this.owners[(start + k) % total];
      if (this.inPool[owner.slot] !== 1) continue;
      if (owner.inFlight + 1 <= Math.ceil(perWeight * owner.weight)) return owner;
      fallback ??= owner;
    }
    return fallback;
  }

  /** First ring index whose point is >= h (wrapping to 0). */
  private search(h: number): number {
    const points = this.points;
    let lo = 0;
    let hi = points.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (points[mid] < h) lo = mid + 1;
      else hi = mid;
    }
    return lo === points.length ? 0 : lo;
  }

  private index(pool: readonly Backend[]): void {
    this.lastPool = pool;
    this.inPool.fill(0);
    for (const b of pool) if (b.slot < this.inPool.length) this.inPool[b.slot] = 1;
  }
}
