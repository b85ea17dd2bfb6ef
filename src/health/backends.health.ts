/**
 * Terminus indicator for the backend pool. Reads the registry's cached state only: /health
 * never probes anything itself, so orchestrator polling cannot amplify into backend load.
 */
import { Injectable } from '@nestjs/common';
import { HealthIndicatorService, type HealthIndicatorResult } from '@nestjs/terminus';
import { BackendRegistry } from '../backend/backend-registry.service.js';
import type { ProbeResult } from '../backend/backend.js';
import { ProxyEngine } from '../proxy/proxy-engine.service.js';

function probeJson(p: ProbeResult) {
  return { at: new Date(p.at).toISOString(), ok: p.ok, detail: p.detail, latencyMs: p.latencyMs };
}

@Injectable()
export class BackendsHealthIndicator {
  constructor(
    private readonly indicator: HealthIndicatorService,
    private readonly registry: BackendRegistry,
    private readonly engine: ProxyEngine,
  ) {}

  check(key: string): HealthIndicatorResult {
    const session = this.indicator.check(key);
    const backends = this.registry.all.map((b) => ({
      name: b.id,
      url: b.url.href,
      state: !b.enabled ? 'disabled' : b.healthy ? 'up' : b.checked || b.lastChange !== undefined ? 'down' : 'unknown',
      inFlight: b.inFlight,
      ...(b.lastChange ? { since: new Date(b.lastChange.at).toISOString(), reason: `${b.lastChange.source}: ${b.lastChange.reason}` } : {}),
      ...(b.lastProbe ? { lastProbe: probeJson(b.lastProbe), recentProbes: b.recentProbes.map(probeJson) } : {}),
      ...(b.ejected ? { ejectedUntil: new Date(b.ejectedUntil).toISOString(), ejections: b.ejections } : {}),
    }));
    const healthy = this.registry.healthy.length + this.registry.healthyBackups.length;
    const data = { healthy, total: this.registry.enabled.length, draining: this.engine.draining, backends };
    if (this.engine.draining) return session.down({ ...data, message: 'shutting down' });
    if (healthy === 0) return session.down({ ...data, message: 'no healthy backend' });
    return session.up(data);
  }
}
