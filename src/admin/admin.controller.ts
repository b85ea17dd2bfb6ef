import { Controller, ForbiddenException, Get, HttpCode, Inject, Post, UnprocessableEntityException, UseGuards } from '@nestjs/common';
import { BackendRegistry } from '../backend/backend-registry.service.js';
import { describeBackendInDetail } from '../backend/backend-state.js';
import { ConfigStore } from '../config/config-store.js';
import { redactSecrets } from '../config/config-summary.js';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import { ProxyEngine } from '../proxy/proxy-engine.service.js';
import { ReloadService, type ReloadResult } from '../reload/reload.service.js';
import { adminToken, AdminTokenGuard } from './admin-token.guard.js';


/** State endpoints of the admin listener (token-protected when a token is set). */
@Controller()
@UseGuards(AdminTokenGuard)
export class AdminController {
  private readonly reloadAllowed: boolean;

  constructor(
    private readonly registry: BackendRegistry,
    private readonly engine: ProxyEngine,
    private readonly store: ConfigStore,
    private readonly reloader: ReloadService,
    @Inject(PROXYMITY_CONFIG) cfg: ProxymityConfig,
  ) {
    this.reloadAllowed = adminToken(cfg) !== undefined;
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
    return { version: this.store.version, loadedAt: this.store.loadedAt.toISOString(), file: this.store.file ?? null, config: redactSecrets(this.store.current) };
  }

  /** Reads the config file again and applies it (200 applied or unchanged, 422 refused). Needs the admin token. */
  @Post('config/reload')
  @HttpCode(200)
  async reload(): Promise<ReloadResult> {
    if (!this.reloadAllowed) throw new ForbiddenException('POST /config/reload needs an admin token: set admin.token or $PROXYMITY_ADMIN_TOKEN');
    const result = await this.reloader.reloadFromFile('admin endpoint');
    if (result.result === 'failure') throw new UnprocessableEntityException(result);
    return result;
  }
}
