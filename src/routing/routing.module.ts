import { Module } from '@nestjs/common';
import { LoadBalancerModule } from '../load-balancer/load-balancer.module.js';
import { RateLimitModule } from '../rate-limit/rate-limit.module.js';
import { RoutingService } from './routing.service.js';

/** Routes: which pool a request goes to, and with which per-route policy. */
@Module({
  imports: [LoadBalancerModule, RateLimitModule],
  providers: [RoutingService],
  exports: [RoutingService],
})
export class RoutingModule {}
