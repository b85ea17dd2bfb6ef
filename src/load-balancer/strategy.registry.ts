/**
 * Strategies by the name users write in `loadBalancer.strategy`. Adding one is a new file in
 * strategies/ plus one line here; the config schema derives its allowed names from this map.
 */
import { HashStrategy } from './strategies/hash.strategy.js';
import { LeastConnectionsStrategy } from './strategies/least-connections.strategy.js';
import { PowerOfTwoStrategy } from './strategies/power-of-two.strategy.js';
import { RandomStrategy } from './strategies/random.strategy.js';
import { RoundRobinStrategy } from './strategies/round-robin.strategy.js';
import type { StrategyFactory } from './strategy.interface.js';

const powerOfTwo: StrategyFactory = (_, d) => new PowerOfTwoStrategy(d.random, d.now);

export const STRATEGIES: ReadonlyMap<string, StrategyFactory> = new Map<string, StrategyFactory>([
  ['round-robin', (_, d) => new RoundRobinStrategy(d.now)],
  ['least-connections', (_, d) => new LeastConnectionsStrategy(d.now)],
  ['power-of-two', powerOfTwo],
  ['p2c', powerOfTwo],
  ['random', (_, d) => new RandomStrategy(d.random, d.now)],
  ['ip-hash', (o, d) => HashStrategy.fromSpec(d.backends, 'client-ip', o.hash.balanceFactor)],
  ['hash', (o, d) => HashStrategy.fromSpec(d.backends, o.hash.key ?? 'client-ip', o.hash.balanceFactor)],
]);

export const STRATEGY_NAMES: readonly string[] = [...STRATEGIES.keys()];
