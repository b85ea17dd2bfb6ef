import { Module } from '@nestjs/common';
import { BackendModule } from '../backend/backend.module.js';
import { CacheModule } from '../cache/cache.module.js';
import { MetricsModule } from '../metrics/metrics.module.js';
import { ProxyModule } from '../proxy/proxy.module.js';
import { ReloadModule } from '../reload/reload.module.js';
import { AdminController } from './admin.controller.js';
import { CacheController } from './cache.controller.js';
import { MetricsEndpoint } from './metrics-endpoint.js';
import { AdminServer } from './admin-server.service.js';
import { AdminTokenGuard } from './admin-token.guard.js';

/** The admin listener, /metrics and the state endpoints; /health comes from HealthModule. */
@Module({
  imports: [BackendModule, CacheModule, ProxyModule, MetricsModule, ReloadModule],
  controllers: [AdminController, CacheController],
  providers: [AdminServer, AdminTokenGuard, MetricsEndpoint],
  exports: [AdminServer],
})
export class AdminModule {}
