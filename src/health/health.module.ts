import { type DynamicModule, Module } from '@nestjs/common';
import { PATH_METADATA } from '@nestjs/common/constants.js';
import { ScheduleModule } from '@nestjs/schedule';
import { TerminusModule } from '@nestjs/terminus';
import { BackendModule } from '../backend/backend.module.js';
import { ProxyModule } from '../proxy/proxy.module.js';
import { BackendsHealthIndicator } from './backends.health.js';
import { DrainService } from './drain.service.js';
import { HealthProbeService } from './health-probe.service.js';
import { HealthController } from './health.controller.js';

@Module({})
export class HealthModule {
  /** `healthPath` is `proxy.healthPath`; the controller's route is set from it before routing is built. */
  static forRoot(healthPath: string): DynamicModule {
    Reflect.defineMetadata(PATH_METADATA, healthPath, HealthController.prototype.check);
    return {
      module: HealthModule,
      // Terminus' own logging would print an error for every 503 an orchestrator polls;
      // the registry already logs each health transition once.
      imports: [TerminusModule.forRoot({ logger: false }), ScheduleModule.forRoot(), BackendModule, ProxyModule],
      controllers: [HealthController],
      providers: [BackendsHealthIndicator, HealthProbeService, DrainService],
    };
  }
}
