/**
 * Graceful shutdown. On SIGTERM/SIGINT (main.ts calls app.close):
 * 1. /health answers 503 and proxied responses carry `Connection: close`;
 * 2. after `proxy.shutdownDelay` the listener closes (new connections are refused) and idle
 *    keep-alive connections are closed;
 * 3. in-flight requests get up to `proxy.shutdownTimeout` to finish, then remaining
 *    connections are cut. Probes and agents are stopped afterwards by their owners'
 *    onApplicationShutdown hooks.
 */
import type { Server } from 'node:http';
import { Inject, Injectable, Logger, type BeforeApplicationShutdown } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import { ProxyEngine } from '../proxy/proxy-engine.service.js';
import { UpgradeProxy } from '../proxy/upgrade-proxy.service.js';

const POLL_MS = 50;

@Injectable()
export class DrainService implements BeforeApplicationShutdown {
  private readonly logger = new Logger(DrainService.name);

  constructor(
    private readonly adapterHost: HttpAdapterHost,
    private readonly engine: ProxyEngine,
    private readonly upgrades: UpgradeProxy,
    @Inject(PROXYMITY_CONFIG) private readonly cfg: ProxymityConfig,
  ) {}

  async beforeApplicationShutdown(signal?: string): Promise<void> {
    const { shutdownDelay, shutdownTimeout } = this.cfg.proxy;
    this.engine.draining = true;
    this.upgrades.draining = true;
    this.logger.log(`shutting down${signal ? ` on ${signal}` : ''}: ${this.engine.inFlight} request(s) in flight, waiting up to ${shutdownTimeout}ms`);
    if (shutdownDelay > 0) await sleep(shutdownDelay);

    const server = this.adapterHost.httpAdapter?.getHttpServer() as Server | undefined;
    if (server === undefined) return;
    if (server.listening) server.close();
    const deadline = Date.now() + shutdownTimeout;
    // WebSocket tunnels get a close frame (1001 Going Away) websocket.closeDelay after the listener closed.
    const goAwayAt = Date.now() + this.cfg.websocket.closeDelay;
    let toldTunnels = false;
    for (;;) {
      server.closeIdleConnections();
      if (!toldTunnels && Date.now() >= goAwayAt) {
        toldTunnels = true;
        if (this.upgrades.tunnels.size > 0) this.logger.log(`closing ${this.upgrades.tunnels.size} WebSocket tunnel(s) with 1001 Going Away`);
        this.upgrades.goAwayAll();
      }
      if (this.engine.inFlight === 0 && this.upgrades.tunnels.size === 0) break;
      if (Date.now() >= deadline) {
        this.logger.warn(`shutdown timeout: cutting ${this.engine.inFlight} request(s) and ${this.upgrades.tunnels.size} tunnel(s) still open`);
        break;
      }
      await sleep(POLL_MS);
    }
    this.upgrades.destroyAll();
    server.closeAllConnections();
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
