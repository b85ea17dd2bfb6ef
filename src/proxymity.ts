/**
 * Builds and starts a Proxymity instance from a validated config. Used by main.ts and by the
 * end-to-end tests, which run the real application on 127.0.0.1:0.
 */
import 'reflect-metadata';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import type { INestApplication, LoggerService, LogLevel } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { AdminServer } from './admin/index.js';
import { AppModule } from './app.module.js';
import { ListenersService } from './tls/index.js';
import { ProxyHttpAdapter } from './proxy/index.js';
import type { ProxymityConfig } from './config/index.js';

export interface RunningProxymity {
  readonly app: INestApplication;
  readonly server: Server;
  /** e.g. "http://127.0.0.1:8080" (IPv6 hosts in brackets). */
  readonly url: string;
  readonly port: number;
  /** The admin listener's URL (undefined when admin.enabled is false). */
  readonly adminUrl: string | undefined;
  /** URLs of the extra listeners (`listeners:`), by name. */
  readonly listeners: Record<string, string>;
  /** Graceful shutdown, as on SIGTERM. */
  close(signal?: string): Promise<void>;
}

export interface StartOptions {
  logger?: LoggerService | LogLevel[] | false;
  /** The file the config was read from: it is watched and re-read on SIGHUP and POST /config/reload. */
  configFile?: string;
}

export async function startProxymity(config: ProxymityConfig, opts: StartOptions = {}): Promise<RunningProxymity> {
  const adapter = new ProxyHttpAdapter({ maxHeaderSize: config.proxy.maxHeaderSize });
  const app = await NestFactory.create(AppModule.forRoot(config, opts.configFile), adapter, {
    // A body parser would consume or rewrite the stream the proxy must forward (nestjs/nest#9348).
    bodyParser: false,
    abortOnError: false,
    logger: opts.logger ?? ['log', 'warn', 'error'],
  });
  (app.getHttpAdapter().getInstance() as { disable(setting: string): void }).disable('x-powered-by');
  try {
    await app.listen(config.proxy.port, config.proxy.host);
  } catch (err) {
    // Stop the probes and timers that init started, so the process can exit with the error.
    await app.close().catch(() => undefined);
    throw err;
  }
  const server = app.getHttpServer() as Server;
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' || address.address.includes(':') ? `[${address.address}]` : address.address;
  return {
    app,
    server,
    port: address.port,
    adminUrl: app.get(AdminServer).url,
    listeners: app.get(ListenersService).urls(),
    url: `http://${host}:${address.port}`,
    // NestApplicationContext.close(signal) passes the signal to the shutdown hooks; its type omits it.
    close: (signal?: string) => (app.close as (signal?: string) => Promise<void>).call(app, signal),
  };
}
