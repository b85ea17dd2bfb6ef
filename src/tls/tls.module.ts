import { Module } from '@nestjs/common';
import { MetricsModule } from '../metrics/metrics.module.js';
import { ProxyModule } from '../proxy/proxy.module.js';
import { ListenersService } from './listeners.service.js';

/** HTTPS (HTTP/2 and HTTP/1.1) and redirect listeners (`listeners:`). */
@Module({
  imports: [ProxyModule, MetricsModule],
  providers: [ListenersService],
  exports: [ListenersService],
})
export class TlsModule {}
