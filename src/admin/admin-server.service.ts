/**
 * The admin listener (`admin: {host, port}`): a second HTTP server that hands every request to
 * the same Express application as the proxy port, so Nest's controllers (/metrics, /backends,
 * /config, /health) answer there. On the proxy port only the health path ever reaches Express
 * (ProxyServerBinding), so admin endpoints never shadow a backend path.
 *
 * It stays up while the proxy drains (metrics remain scrapable) and closes last.
 */
import http, { type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Inject, Injectable, Logger, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';

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
    @Inject(PROXYMITY_CONFIG) private readonly cfg: ProxymityConfig,
  ) {}

  async onApplicationBootstrap(): Promise<void> {
    const { enabled, host, port } = this.cfg.admin;
    if (!enabled) return;
    const express = this.adapterHost.httpAdapter.getInstance() as http.RequestListener;
    const server = http.createServer({ maxHeaderSize: 16 * 1024 }, express);
    server.keepAliveTimeout = 5_000;
    server.headersTimeout = 10_000;
    server.requestTimeout = 30_000;
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
