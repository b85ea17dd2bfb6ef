import { Module } from '@nestjs/common';
import { BackendModule } from '../backend/backend.module.js';
import { MetricsService } from './metrics.service.js';

/** Prometheus metrics; GET /metrics is served by AdminModule on the admin listener. */
@Module({
  imports: [BackendModule],
  providers: [MetricsService],
  exports: [MetricsService],
})
export class MetricsModule {}
