/**
 * GET /metrics on the admin listener, in the Prometheus text format (token-protected when a
 * token is set). Answered on the raw Node request, not through Express, for the reason given in
 * src/health/health-endpoint.service.ts: Prometheus scrapes it all day, and one scrape through
 * Express under traffic deoptimised 26 of the functions every proxied request runs through.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Injectable, Logger } from '@nestjs/common';
import { markLikeProxied, sendLikeProxied } from '../health/health-endpoint.service.js';
import { MetricsService } from '../metrics/metrics.service.js';
import { AdminTokenGuard, UNAUTHORIZED } from './admin-token.guard.js';

@Injectable()
export class MetricsEndpoint {
  private readonly logger = new Logger(MetricsEndpoint.name);

  constructor(
    private readonly metrics: MetricsService,
    private readonly token: AdminTokenGuard,
  ) {}

  /** Answers a request for /metrics; never throws. */
  serve(req: IncomingMessage, res: ServerResponse): void {
    markLikeProxied(res);
    const method = req.method;
    if (method !== 'GET' && method !== 'HEAD') return sendError(res, 405, 'Method Not Allowed', `${method} /metrics: use GET or HEAD`, ['allow', 'GET, HEAD']);
    // Nest's error bodies, as the admin listener's other endpoints answer.
    if (!this.token.accepts(req.headers.authorization)) return sendError(res, 401, 'Unauthorized', UNAUTHORIZED);
    if (!this.metrics.enabled) return sendError(res, 404, 'Not Found', 'metrics are disabled (metrics.enabled: false)');
    this.metrics.scrape().then(
      (body) => sendLikeProxied(res, 200, ['content-type', this.metrics.contentType, 'cache-control', 'no-store'], body, method === 'HEAD'),
      (err: unknown) => {
        this.logger.error(`metrics scrape failed: ${(err as Error).stack ?? String(err)}`);
        sendError(res, 500, 'Internal Server Error', 'metrics scrape failed');
      },
    );
  }
}

function sendError(res: ServerResponse, statusCode: number, error: string, message: string, extra: readonly string[] = []): void {
  sendLikeProxied(res, statusCode, ['content-type', 'application/json; charset=utf-8', ...extra], JSON.stringify({ message, error, statusCode }), false);
}
