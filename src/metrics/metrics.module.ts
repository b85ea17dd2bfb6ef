import { Module } from '@nestjs/common';
import { BackendModule } from '../backend/backend.module.js';
import { MetricsController } from './metrics.controller.js';
import { MetricsService } from './metrics.service.js';

/** Prometheus metrics; GET /metrics is served on the admin listener only (see AdminModule). */
@Module({
  imports: [BackendModule],
  controllers: [MetricsController],
  providers: [MetricsService],
  exports: [MetricsService],
})
export class MetricsModule {}
