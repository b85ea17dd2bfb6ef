import { Module } from '@nestjs/common';
import { MetricsModule } from '../metrics/metrics.module.js';
import { RateLimitService } from './rate-limit.service.js';

/** Rate limits (GCRA, memory or Redis) and in-flight caps per key. */
@Module({
  imports: [MetricsModule],
  providers: [RateLimitService],
  exports: [RateLimitService],
})
export class RateLimitModule {}
