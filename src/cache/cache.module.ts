import { Module } from '@nestjs/common';
import { LoadBalancerModule } from '../load-balancer/load-balancer.module.js';
import { MetricsModule } from '../metrics/metrics.module.js';
import { ResponseCacheService } from './response-cache.service.js';

/** The response cache (RFC 9111 shared cache in memory); purges are served by AdminModule. */
@Module({
  imports: [LoadBalancerModule, MetricsModule],
  providers: [ResponseCacheService],
  exports: [ResponseCacheService],
})
export class CacheModule {}
