import { Module } from '@nestjs/common';
import { BackendModule } from '../backend/backend.module.js';
import { CacheModule } from '../cache/cache.module.js';
import { LoadBalancerModule } from '../load-balancer/load-balancer.module.js';
import { LoggingModule } from '../logging/logging.module.js';
import { MetricsModule } from '../metrics/metrics.module.js';
import { RoutingModule } from '../routing/routing.module.js';
import { ProxyEngine } from './proxy-engine.service.js';
import { ProxyServerBinding } from './proxy-server.binding.js';
import { UpgradeProxy } from './upgrade-proxy.service.js';
import { ProxyMiddleware } from './proxy.middleware.js';

@Module({
  imports: [BackendModule, CacheModule, LoadBalancerModule, RoutingModule, MetricsModule, LoggingModule],
  providers: [ProxyEngine, ProxyMiddleware, ProxyServerBinding, UpgradeProxy],
  exports: [ProxyEngine, ProxyMiddleware, UpgradeProxy],
})
export class ProxyModule {}
