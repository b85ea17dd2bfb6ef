import { createHash } from 'node:crypto';
import { Controller, Get, Inject, UseGuards } from '@nestjs/common';
import { BackendRegistry } from '../backend/backend-registry.service.js';
import { describeBackendInDetail } from '../backend/backend-state.js';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import { ProxyEngine } from '../proxy/proxy-engine.service.js';
import { AdminTokenGuard } from './admin-token.guard.js';

const SECRET = '[REDACTED]';

/** State endpoints of the admin listener (token-protected when a token is set). */
@Controller()
@UseGuards(AdminTokenGuard)
export class AdminController {
  private readonly version: string;
  private readonly loadedAt = new Date().toISOString();
  private readonly shown: unknown;

  constructor(
    private readonly registry: BackendRegistry,
    private readonly engine: ProxyEngine,
    @Inject(PROXYMITY_CONFIG) cfg: ProxymityConfig,
  ) {
    const json = JSON.stringify(cfg);
    this.version = createHash('sha256').update(json).digest('hex').slice(0, 16);
    this.shown = JSON.parse(json, (key, value) => ((key === 'token' || key === 'secret') && typeof value === 'string' ? SECRET : value));
  }

  /** Health state, counters and the last probe results of every backend. */
  @Get('backends')
  backends() {
    return {
      healthy: this.registry.healthy.length + this.registry.healthyBackups.length,
      total: this.registry.enabled.length,
      inFlight: this.engine.inFlight,
      draining: this.engine.draining,
      backends: this.registry.all.map(describeBackendInDetail),
    };
  }

  /** The effective config (defaults filled in, durations in ms, secrets redacted) and its version. */
  @Get('config')
  config() {
    return { version: this.version, loadedAt: this.loadedAt, config: this.shown };
  }
}
