/**
 * Strategies by the name users write in `loadBalancer.strategy`. Adding one is a new file in
 * strategies/ plus one line here; the config schema derives its allowed names from this map.
 */
import { RoundRobinStrategy } from './strategies/round-robin.strategy.js';
import type { StrategyFactory } from './strategy.interface.js';

export const STRATEGIES: ReadonlyMap<string, StrategyFactory> = new Map<string, StrategyFactory>([
  ['round-robin', () => new RoundRobinStrategy()],
]);

export const STRATEGY_NAMES: readonly string[] = [...STRATEGIES.keys()];
