/**
 * Puts ProxyMiddleware in front of Express on the Node server's `request` event, and applies
 * the client-side timeouts. Runs once at bootstrap (control plane).
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { Inject, Injectable, Logger, type OnApplicationBootstrap } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import { hstsOfSocket } from './hsts.js';
import { ProxyMiddleware } from './proxy.middleware.js';
import { UpgradeProxy } from './upgrade-proxy.service.js';

type RequestListener = (req: IncomingMessage, res: ServerResponse) => void;

@Injectable()
export class ProxyServerBinding implements OnApplicationBootstrap {
  private readonly logger = new Logger(ProxyServerBinding.name);

  constructor(
    private readonly adapterHost: HttpAdapterHost,
    private readonly proxy: ProxyMiddleware,
    private readonly upgrades: UpgradeProxy,
    @Inject(PROXYMITY_CONFIG) private readonly cfg: ProxymityConfig,
  ) {}

  onApplicationBootstrap(): void {
    const server = this.adapterHost.httpAdapter.getHttpServer() as Server;
    const listeners = server.listeners('request') as RequestListener[];
    if (listeners.length !== 1) throw new Error(`expected exactly one request listener (Express) on the HTTP server, found ${listeners.length}`);
    const express = listeners[0];
    server.removeAllListeners('request');
    const proxy = this.proxy;
    const logger = this.logger;
    server.on('request', function proxymityRequest(req: IncomingMessage, res: ServerResponse) {
      try {
        if (!proxy.handle(req, res)) proxy.serveOwn(req, res, express);
      } catch (err) {
        // A bug, not an expected outcome: answer this one request and keep serving.
        logger.error(`unexpected error handling ${req.method} ${req.url}: ${(err as Error).stack ?? String(err)}`);
        if (!res.headersSent) {
          res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8', connection: 'close' });
          res.end('500 Internal Server Error: proxy_internal_error\n');
        } else res.destroy();
      }
    });

    // Upgrade requests (WebSocket) never reach Express: the server emits `upgrade` instead.
    const upgrades = this.upgrades;
    server.on('upgrade', function proxymityUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer) {
      try {
        upgrades.handle(req, socket, head);
      } catch (err) {
        logger.error(`unexpected error handling upgrade ${req.url}: ${(err as Error).stack ?? String(err)}`);
        socket.destroy();
      }
    });

    applyClientTimeouts(server, this.cfg.proxy);
    server.on('clientError', answerClientError);
  }
}

/**
 * A request Node could not parse (malformed, headers too large, headers too slow): 400, 431 or
 * 408 naming the parser's error, then the connection closes. Every listener uses it; on an https
 * listener with `hsts` the answer carries it too.
 */
export function answerClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
  if (err.code === 'ECONNRESET' || !socket.writable) {
    socket.destroy();
    return;
  }
  const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
  const text = status === 431 ? 'Request Header Fields Too Large' : status === 408 ? 'Request Timeout' : 'Bad Request';
  const body = `${status} ${text}: ${err.code ?? 'malformed request'}\n`;
  const hsts = hstsOfSocket(socket);
  socket.end(
    `HTTP/1.1 ${status} ${text}\r\ncontent-type: text/plain\r\ncontent-length: ${body.length}\r\n` +
      `${hsts !== undefined ? `strict-transport-security: ${hsts}\r\n` : ''}connection: close\r\n\r\n${body}`,
  );
}

/** The timeout properties Node's HTTP/1.1 server code reads from its server (http, https, and HTTP/2's HTTP/1.1 fallback). */
export interface ClientTimeoutTarget {
  keepAliveTimeout?: number;
  headersTimeout?: number;
  requestTimeout?: number;
  connectionsCheckingInterval?: number;
}

/**
 * The client-side timeouts of a listener, for its HTTP/1.1 connections: `proxy.keepAliveTimeout`
 * and `proxy.headersTimeout`, and no whole-request limit (uploads may legitimately take long;
 * they are bounded by socket inactivity upstream instead; Node's default would cut them at 300 s).
 * Node checks header and request deadlines on a timer, every 30 s by default, so a 10 s
 * headersTimeout could run 40 s; here the check runs every tenth of headersTimeout (at most every
 * 30 s, at least 100 ms apart). Call before `listen`: Node starts that timer on 'listening'.
 */
export function applyClientTimeouts(server: ClientTimeoutTarget, p: { keepAliveTimeout: number; headersTimeout: number }): void {
  server.keepAliveTimeout = p.keepAliveTimeout;
  server.headersTimeout = p.headersTimeout;
  server.requestTimeout = 0;
  server.connectionsCheckingInterval = Math.min(30_000, Math.max(100, Math.floor(p.headersTimeout / 10)));
}
