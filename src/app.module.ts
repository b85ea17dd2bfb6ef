import { type DynamicModule, Module } from '@nestjs/common';
import { AdminModule } from './admin/index.js';
import { BackendModule } from './backend/index.js';
import { ConfigModule, type ProxymityConfig } from './config/index.js';
import { HealthModule } from './health/index.js';
import { LoadBalancerModule } from './load-balancer/index.js';
import { LoggingModule } from './logging/index.js';
import { MetricsModule } from './metrics/index.js';
import { ProxyModule } from './proxy/index.js';

@Module({})
export class AppModule {
  static forRoot(config: ProxymityConfig): DynamicModule {
    return {
      module: AppModule,
      imports: [ConfigModule.forRoot(config), BackendModule, LoadBalancerModule, ProxyModule, HealthModule.forRoot(config.proxy.healthPath), MetricsModule, LoggingModule, AdminModule],
    };
  }
}
