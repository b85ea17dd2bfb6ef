/**
 * Terminus indicator for the backend pool. Reads the registry's cached state only: /health
 * never probes anything itself, so orchestrator polling cannot amplify into backend load.
 */
import { Injectable } from '@nestjs/common';
import { HealthIndicatorService, type HealthIndicatorResult } from '@nestjs/terminus';
import { BackendRegistry } from '../backend/backend-registry.service.js';
import { describeBackend } from '../backend/backend-state.js';
import { ProxyEngine } from '../proxy/proxy-engine.service.js';

@Injectable()
export class BackendsHealthIndicator {
  constructor(
    private readonly indicator: HealthIndicatorService,
    private readonly registry: BackendRegistry,
    private readonly engine: ProxyEngine,
  ) {}

  check(key: string): HealthIndicatorResult {
    const session = this.indicator.check(key);
    const backends = this.registry.all.map(describeBackend);
    const healthy = this.registry.healthy.length + this.registry.healthyBackups.length;
    const data = { healthy, total: this.registry.enabled.length, draining: this.engine.draining, backends };
    if (this.engine.draining) return session.down({ ...data, message: 'shutting down' });
    if (healthy === 0) return session.down({ ...data, message: 'no healthy backend' });
    return session.up(data);
  }
}
