/**
 * Puts ProxyMiddleware in front of Express on the Node server's `request` event, and applies
 * the client-side timeouts. Runs once at bootstrap (control plane).
 */
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { Inject, Injectable, Logger, type OnApplicationBootstrap } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import { hstsOfSocket } from './hsts.js';
import { answerInternalError } from './proxy-errors.js';
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
    const serve = (req: IncomingMessage, res: ServerResponse): void => {
      try {
        if (!proxy.handle(req, res)) proxy.serveOwn(req, res, express);
      } catch (err) {
        answerInternalError(req, res, err, logger);
      }
    };
    server.on('request', function proxymityRequest(req: IncomingMessage, res: ServerResponse) {
      if (res.socket === null) whenAtHead(req, res, serve);
      else serve(req, res);
    });
    server.on('checkContinue', continueAfter(serve));

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
    server.on('connect', refuseConnect);
  }
}

/** Requests a connection may have waiting behind the one being answered before it is read no further. */
export const MAX_QUEUED_PIPELINED = 32;
const kQueued = Symbol('proxymity.pipelined');
type PipelinedSocket = Socket & { [kQueued]?: number; _paused?: boolean };

/**
 * A pipelined HTTP/1.1 request (sent before the answer to the one ahead of it on the
 * connection): Node parses every request in a read at once and hands each over, and its answer
 * waits in line for a socket. Forwarded at once, one connection could hold a thousand upstream
 * requests (and backend connections) in flight, starving every other client. As nginx and
 * HAProxy do, a connection's requests are forwarded one at a time: this one when its answer's
 * turn comes (Node gives it the socket), on the tick after, once the answer before it has
 * closed and released what it held (backend slot, in-flight and rate-limit counts). Its body,
 * if any, waits unread meanwhile. A connection that closes first takes the request with it,
 * never forwarded.
 * Queued requests write nothing, so Node's own brake (it stops reading a connection whose
 * answers are not being taken) never engages: past MAX_QUEUED_PIPELINED waiting requests the
 * connection is paused the way Node pauses it (its `_paused` flag, which it clears, and resumes
 * reading, as answers go out), so one client cannot queue requests without bound.
 */
export function whenAtHead(req: IncomingMessage, res: ServerResponse, serve: (req: IncomingMessage, res: ServerResponse) => void): void {
  const socket = req.socket as PipelinedSocket;
  const queued = (socket[kQueued] ?? 0) + 1;
  socket[kQueued] = queued;
  if (queued > MAX_QUEUED_PIPELINED && socket._paused !== true) {
    socket._paused = true;
    socket.pause();
  }
  res.once('socket', () => {
    socket[kQueued] = (socket[kQueued] ?? 1) - 1;
    process.nextTick(serveIfOpen, req, res, serve);
  });
}

function serveIfOpen(req: IncomingMessage, res: ServerResponse, serve: (req: IncomingMessage, res: ServerResponse) => void): void {
  if (req.socket.destroyed) return;
  serve(req, res);
}

/**
 * `Expect: 100-continue` (Node hands such a request to 'checkContinue' when a listener is set,
 * and otherwise answers 100 before anything looks at it): the request is looked at first, so a
 * body it would refuse (over maxBodySize: 413; no route: 404; rate limited: 429) is refused
 * before the client sends it, as nginx does; a request that goes on gets its 100 Continue.
 */
export function continueAfter(serve: (req: IncomingMessage, res: ServerResponse) => void): (req: IncomingMessage, res: ServerResponse) => void {
  const go = (req: IncomingMessage, res: ServerResponse): void => {
    // Answered without its 100, the client may never send the body, and the connection's next
    // bytes would be read as that body: such an answer closes the connection.
    const keepAlive = res.shouldKeepAlive;
    res.shouldKeepAlive = false;
    serve(req, res);
    if (!res.headersSent && !res.writableEnded) {
      res.shouldKeepAlive = keepAlive;
      res.writeContinue();
    }
  };
  return function proxymityContinue(req: IncomingMessage, res: ServerResponse) {
    if (res.socket === null) whenAtHead(req, res, go);
    else go(req, res);
  };
}

/**
 * CONNECT on a proxy listener (Node hands it to the 'connect' event, and with no listener closes
 * the connection without a word): 405, as for CONNECT over HTTP/2. A reverse proxy opens no tunnels.
 */
export function refuseConnect(req: IncomingMessage, socket: Duplex | ServerResponse): void {
  // HTTP/2 (Node's compatibility layer hands over the response, not a socket): a 405 on the stream.
  if ((req as { stream?: unknown }).stream !== undefined) {
    const res = socket as ServerResponse;
    res.writeHead(405, { allow: 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS', 'content-type': 'text/plain' });
    res.end('405 Method Not Allowed: CONNECT is not served (a reverse proxy opens no tunnels)\n');
    return;
  }
  socket = socket as Duplex;
  socket.on('error', () => undefined);
  // Pipelined behind an answer still being sent: a 405 would land inside it.
  if ((socket as { _httpMessage?: unknown })._httpMessage != null) return void socket.destroy();
  const body = '405 Method Not Allowed: CONNECT is not served (a reverse proxy opens no tunnels)\n';
  const hsts = hstsOfSocket(socket);
  socket.end(
    `HTTP/1.1 405 Method Not Allowed\r\nallow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\ncontent-type: text/plain\r\ncontent-length: ${body.length}\r\n` +
      `${hsts !== undefined ? `strict-transport-security: ${hsts}\r\n` : ''}connection: close\r\n\r\n${body}`,
  );
  const grace = setTimeout(destroySocket, CLOSE_GRACE_MS, socket);
  grace.unref();
  socket.once('close', () => clearTimeout(grace));
}

/**
 * A request Node could not parse (malformed, headers or a chunk extension too large, headers too
 * slow): 400, 431, 413 or 408 naming the parser's error, on the main listener and the extra ones
 * (on an https listener with `hsts`, with it). As Node's own handler does, nothing is written
 * once a response on the connection has begun (its body would be corrupted) and anything that
 * is not the HTTP parser's, such as a TLS handshake that timed out, only closes the socket. The
 * answer goes out with a FIN; the socket is destroyed once the client closes too, or after
 * CLOSE_GRACE_MS (the client may still be sending what the proxy will not read).
 */
export function answerClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
  const code = err.code ?? '';
  const ours = code.startsWith('HPE_') || code === 'ERR_HTTP_REQUEST_TIMEOUT';
  const inFlight = (socket as { _httpMessage?: { _headerSent?: boolean } | null })._httpMessage;
  if (!ours || !socket.writable || inFlight?._headerSent === true) {
    socket.destroy();
    return;
  }
  const [status, text] = CLIENT_ERROR_STATUS[code] ?? BAD_REQUEST;
  const body = `${status} ${text}: ${code}\n`;
  const hsts = hstsOfSocket(socket);
  socket.end(
    `HTTP/1.1 ${status} ${text}\r\ncontent-type: text/plain\r\ncontent-length: ${body.length}\r\n` +
      `${hsts !== undefined ? `strict-transport-security: ${hsts}\r\n` : ''}connection: close\r\n\r\n${body}`,
  );
  const grace = setTimeout(destroySocket, CLOSE_GRACE_MS, socket);
  grace.unref();
  socket.once('close', () => clearTimeout(grace));
}

/** How long a connection answered for an unparsable request may stay half-open. */
const CLOSE_GRACE_MS = 2000;
const BAD_REQUEST: readonly [number, string] = [400, 'Bad Request'];
const CLIENT_ERROR_STATUS: Readonly<Record<string, readonly [number, string]>> = {
  HPE_HEADER_OVERFLOW: [431, 'Request Header Fields Too Large'],
  HPE_CHUNK_EXTENSIONS_OVERFLOW: [413, 'Payload Too Large'],
  ERR_HTTP_REQUEST_TIMEOUT: [408, 'Request Timeout'],
};

function destroySocket(socket: Duplex): void {
  socket.destroy();
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
