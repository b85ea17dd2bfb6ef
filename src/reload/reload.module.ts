import { Module } from '@nestjs/common';
import { BackendModule } from '../backend/backend.module.js';
import { CacheModule } from '../cache/cache.module.js';
import { LoadBalancerModule } from '../load-balancer/load-balancer.module.js';
import { MetricsModule } from '../metrics/metrics.module.js';
import { RoutingModule } from '../routing/routing.module.js';
import { ReloadService } from './reload.service.js';

/** Hot reload of the config file (file watch, SIGHUP, admin endpoint). */
@Module({
  imports: [BackendModule, CacheModule, LoadBalancerModule, RoutingModule, MetricsModule],
  providers: [ReloadService],
  exports: [ReloadService],
})
export class ReloadModule {}
