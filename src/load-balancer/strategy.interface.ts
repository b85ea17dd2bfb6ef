import type { IncomingMessage } from 'node:http';
import type { Backend } from '../backend/backend.js';

/**
 * A load-balancing strategy. `pick` runs on the data plane for every request: it must not do
 * I/O, must not throw, and should not allocate.
 */
export interface LbStrategy {
  /**
   * `pool` holds eligible (enabled, healthy) backends only and may be empty: return undefined
   * then. Pools are immutable snapshots, so a strategy may cache work per pool identity.
   */
  pick(pool: readonly Backend[], req: IncomingMessage): Backend | undefined;
}

/** The parts of `loadBalancer` config that strategy factories read (validated by the schema). */
export interface StrategyOptions {
  readonly hash: { readonly key?: string; readonly balanceFactor?: number };
}

/** Injected so that strategies are deterministic under test. */
export interface StrategyDeps {
  /** Uniform in [0, 1). */
  random: () => number;
  /** Epoch milliseconds (slow start). */
  now: () => number;
  /** Every enabled backend, primaries and backups (consistent-hash rings are built over it). */
  backends: readonly Backend[];
}

export type StrategyFactory = (opts: StrategyOptions, deps: StrategyDeps) => LbStrategy;
