import type { IncomingMessage } from 'node:http';
import type { Backend } from '../backend/backend.js';

/**
 * A load-balancing strategy. `pick` runs on the data plane for every request: it must not do
 * I/O, must not throw, and should not allocate.
 */
export interface LbStrategy {
  /** `pool` holds eligible (enabled, healthy) backends only and may be empty: return undefined then. */
  pick(pool: readonly Backend[], req: IncomingMessage): Backend | undefined;
}

/** Injected so that strategies are deterministic under test. */
export interface StrategyDeps {
  /** Uniform in [0, 1). */
  random: () => number;
  /** Milliseconds, monotonic enough for rate and ramp calculations. */
  now: () => number;
}

export type StrategyFactory = (deps: StrategyDeps) => LbStrategy;
