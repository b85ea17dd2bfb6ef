import { Module } from '@nestjs/common';
import { BackendModule } from '../backend/backend.module.js';
import { MetricsModule } from '../metrics/metrics.module.js';
import { ProxyModule } from '../proxy/proxy.module.js';
import { ReloadModule } from '../reload/reload.module.js';
import { AdminController } from './admin.controller.js';
import { AdminServer } from './admin-server.service.js';
import { AdminTokenGuard } from './admin-token.guard.js';

/** The admin listener and its state endpoints; /metrics comes from MetricsModule, /health from HealthModule. */
@Module({
  imports: [BackendModule, ProxyModule, MetricsModule, ReloadModule],
  controllers: [AdminController],
  providers: [AdminServer, AdminTokenGuard],
  exports: [AdminServer],
})
export class AdminModule {}
