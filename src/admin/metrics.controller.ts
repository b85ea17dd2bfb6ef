import { Controller, Get, NotFoundException, Res, UseGuards } from '@nestjs/common';
import type { ServerResponse } from 'node:http';
import { MetricsService } from '../metrics/metrics.service.js';
import { AdminTokenGuard } from './admin-token.guard.js';

/** GET /metrics in the Prometheus text format. Reachable on the admin listener only. */
@Controller()
@UseGuards(AdminTokenGuard)
export class MetricsController {
  constructor(private readonly metrics: MetricsService) {}

  @Get('metrics')
  async scrape(@Res() res: ServerResponse): Promise<void> {
    if (!this.metrics.enabled) throw new NotFoundException('metrics are disabled (metrics.enabled: false)');
    const body = await this.metrics.scrape();
    res.writeHead(200, { 'content-type': this.metrics.contentType, 'cache-control': 'no-store', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  }
}
