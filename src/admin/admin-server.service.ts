/**
 * The admin listener (`admin: {host, port}`): a second HTTP server. /health and /metrics, which
 * orchestrators and Prometheus poll all day, are answered on the raw request (see
 * health-endpoint.service.ts for why); every other request goes to the same Express application
 * as the proxy port, so Nest's controllers (/backends, /config, /cache) answer there. On the
 * proxy port nothing reaches Express, so admin endpoints never shadow a backend path.
 *
 * It stays up while the proxy drains (metrics remain scrapable) and closes last.
 */
import http, { type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Inject, Injectable, Logger, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import { ProxyMiddleware } from '../proxy/proxy.middleware.js';
import { MetricsEndpoint } from './metrics-endpoint.js';

/** Thrown when the admin listener cannot listen; main.ts prints its message. */
export class AdminListenError extends Error {
  constructor(
    message: string,
    readonly code: string | undefined,
  ) {
    super(message);
  }
}

@Injectable()
export class AdminServer implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger(AdminServer.name);
  private server: Server | undefined;
  /** e.g. "http://127.0.0.1:9901", once listening. */
  url: string | undefined;

  constructor(
    private readonly adapterHost: HttpAdapterHost,
    private readonly proxy: ProxyMiddleware,
    private readonly metrics: MetricsEndpoint,
    @Inject(PROXYMITY_CONFIG) private readonly cfg: ProxymityConfig,
  ) {}

  async onApplicationBootstrap(): Promise<void> {
    const { enabled, host, port } = this.cfg.admin;
    if (!enabled) return;
    const express = this.adapterHost.httpAdapter.getInstance() as http.RequestListener;
    const { proxy, metrics } = this;
    const logger = this.logger;
    const server = http.createServer({ maxHeaderSize: 16 * 1024 }, (req, res) => {
      try {
        const url = req.url ?? '';
        if (proxy.isOwnPath(url)) {
          proxy.prepare(req);
          proxy.serveOwn(req, res, express);
        } else if (url === '/metrics' || url.startsWith('/metrics?')) {
          proxy.prepare(req);
          metrics.serve(req, res);
        } else express(req, res);
      } catch (err) {
        // A bug, not an outcome: answer this one request and keep serving.
        logger.error(`unexpected error handling admin ${req.method} ${req.url}: ${(err as Error).stack ?? String(err)}`);
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' });
        res.end('500 Internal Server Error\n');
      }
    });
    server.keepAliveTimeout = 5_000;
    server.headersTimeout = 10_000;
    server.requestTimeout = 30_000;
    // Node checks those two deadlines every 30 s by default, which would let them run 40 and 60 s.
    (server as { connectionsCheckingInterval?: number }).connectionsCheckingInterval = 1_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => reject(new AdminListenError(`cannot listen on admin ${host}:${port}: ${err.code ?? ''} (${err.message}); set admin.port or admin.enabled: false`, err.code)));
      server.listen(port, host, () => resolve());
    });
    server.on('error', (err) => this.logger.error(`admin listener: ${err.message}`));
    this.server = server;
    const a = server.address() as AddressInfo;
    this.url = `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
    this.logger.log(`admin listener on ${this.url} (/metrics, /backends, /config, ${this.cfg.proxy.healthPath})`);
  }

  async onApplicationShutdown(): Promise<void> {
    const server = this.server;
    if (server === undefined) return;
    this.server = undefined;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
