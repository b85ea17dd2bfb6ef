import { Controller, Get } from '@nestjs/common';
import { HealthCheck, HealthCheckService, type HealthCheckResult } from '@nestjs/terminus';
import { BackendsHealthIndicator } from './backends.health.js';

/**
 * The proxy's own health endpoint (readiness for orchestrators): 200 while at least one
 * backend is healthy, 503 when none is or while draining. Its path comes from
 * `proxy.healthPath` (see HealthModule.forRoot).
 */
@Controller()
export class HealthController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly backends: BackendsHealthIndicator,
  ) {}

  @Get('health')
  @HealthCheck()
  check(): Promise<HealthCheckResult> {
    return this.health.check([() => this.backends.check('backends')]);
  }
}
