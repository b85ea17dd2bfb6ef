export { LoadBalancerModule } from './load-balancer.module.js';
export { LoadBalancerService } from './load-balancer.service.js';
export type { LbStrategy, StrategyDeps, StrategyFactory } from './strategy.interface.js';
export { STRATEGIES, STRATEGY_NAMES } from './strategy.registry.js';
