import { type DynamicModule, Module } from '@nestjs/common';
import { AdminModule } from './admin/index.js';
import { BackendModule } from './backend/index.js';
import { ConfigModule, type ProxymityConfig } from './config/index.js';
import { HealthModule } from './health/index.js';
import { LoadBalancerModule } from './load-balancer/index.js';
import { LoggingModule } from './logging/index.js';
import { MetricsModule } from './metrics/index.js';
import { ProxyModule } from './proxy/index.js';
import { ReloadModule } from './reload/index.js';
import { TlsModule } from './tls/index.js';

@Module({})
export class AppModule {
  /** `file`: where the config was read from (enables reloading it); undefined for an in-memory config. */
  static forRoot(config: ProxymityConfig, file?: string): DynamicModule {
    return {
      module: AppModule,
      imports: [ConfigModule.forRoot(config, file), BackendModule, LoadBalancerModule, ProxyModule, HealthModule, MetricsModule, LoggingModule, ReloadModule, AdminModule, TlsModule],
    };
  }
}
