import { Module } from '@nestjs/common';
import { ScheduleModule } from '@nestjs/schedule';
import { TerminusModule } from '@nestjs/terminus';
import { BackendModule } from '../backend/backend.module.js';
import { ProxyModule } from '../proxy/proxy.module.js';
import { BackendsHealthIndicator } from './backends.health.js';
import { DrainService } from './drain.service.js';
import { HealthEndpoint } from './health-endpoint.service.js';
import { HealthProbeService } from './health-probe.service.js';

/** Active probes, the health endpoint (`proxy.healthPath` on every listener) and graceful drain. */
@Module({
  // Terminus' own logging would print an error for every 503 an orchestrator polls;
  // the registry already logs each health transition once.
  imports: [TerminusModule.forRoot({ logger: false }), ScheduleModule.forRoot(), BackendModule, ProxyModule],
  providers: [BackendsHealthIndicator, HealthEndpoint, HealthProbeService, DrainService],
})
export class HealthModule {}
