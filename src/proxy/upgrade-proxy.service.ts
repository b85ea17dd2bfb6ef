/**
 * DATA PLANE for HTTP/1.1 Upgrade requests (WebSocket). They arrive as the server's `upgrade`
 * event, which Express and Nest never see. Each goes through the same steps as a request:
 * header policy, route, pool, backend choice (any strategy, sticky included), failover to
 * another backend while nothing has been sent; then the two sockets are joined as a tunnel.
 *
 * The tunnel relays bytes without reading messages, so subprotocols and extensions
 * (permessage-deflate) are negotiated end to end. Only frame boundaries of the backend's stream
 * are tracked (FrameCursor), so that a close frame (1001) can be put between two frames on
 * shutdown or at the end of `websocket.maxLifetime`.
 *
 * Every socket gets its `error` listener before anything else; every path ends in `finish`,
 * which releases the backend slot and counts and logs the tunnel once.
 */
import http, { type ClientRequest, type IncomingMessage } from 'node:http';
import https from 'node:https';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { Inject, Injectable, Logger } from '@nestjs/common';
import { BackendRegistry } from '../backend/backend-registry.service.js';
import type { Backend } from '../backend/backend.js';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import { buildBlockList } from '../load-balancer/client-address.js';
import { LoadBalancerService } from '../load-balancer/load-balancer.service.js';
import { AccessLogService } from '../logging/access-log.service.js';
import { MetricsService, type UpgradeResult } from '../metrics/metrics.service.js';
import type { Verdict } from '../rate-limit/rate-limit.service.js';
import { applyRequestOps, type Route } from '../routing/route.js';
import { RoutingService } from '../routing/routing.service.js';
import { buildResponseHeaders, prepareRequestHeaders, type HeaderPolicy } from './hop-headers.js';
import { classifyUpstreamError, CONNECT_TIMEOUT, ERROR_BODIES, isNotSent, isPassiveFailure, PROXY_ERRORS, READ_TIMEOUT, REASON, type ProxyErrorCode } from './proxy-errors.js';
import { hstsOfSocket } from './hsts.js';
import { FrameCursor, serverCloseFrame } from './ws-frames.js';

/** How long a tunnel told to close (1001) may take before both sockets are destroyed. */
const CLOSE_GRACE_MS = 1000;

@Injectable()
export class UpgradeProxy {
  private readonly logger = new Logger(UpgradeProxy.name);
  readonly tunnels = new Set<Tunnel>();
  /** Set while shutting down: new upgrades get 503. */
  draining = false;
  readonly enabled: boolean;
  readonly idleTimeoutMs: number;
  readonly maxLifetimeMs: number;
  readonly connectTimeoutMs: number;
  readonly handshakeTimeoutMs: number;
  readonly metrics: MetricsService | undefined;
  readonly accessLog: AccessLogService | undefined;
  private readonly policy: HeaderPolicy;
  private readonly maxUrlLength: number;

  constructor(
    private readonly routing: RoutingService,
    readonly lb: LoadBalancerService,
    readonly registry: BackendRegistry,
    metrics: MetricsService,
    accessLog: AccessLogService,
    @Inject(PROXYMITY_CONFIG) cfg: ProxymityConfig,
  ) {
    this.enabled = cfg.websocket.enabled;
    this.idleTimeoutMs = cfg.websocket.idleTimeout;
    this.maxLifetimeMs = cfg.websocket.maxLifetime;
    this.connectTimeoutMs = cfg.upstream.connectTimeout;
    this.handshakeTimeoutMs = cfg.upstream.timeout;
    this.metrics = metrics.enabled ? metrics : undefined;
    metrics.readTunnelsFrom(() => this.tunnels.size);
    this.accessLog = accessLog.enabled ? accessLog : undefined;
    this.policy = { trusted: buildBlockList(cfg.proxy.trustedProxies), forwarded: cfg.proxy.forwarded };
    this.maxUrlLength = cfg.proxy.maxUrlLength;
  }

  /** The server's `upgrade` listener. Never throws. */
  handle(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', ignore); // before anything else: a reset client must not crash the process
    const upgrade = req.headers.upgrade as string;
    const requestId = prepareRequestHeaders(req, (req.socket as { encrypted?: boolean }).encrypted === true ? 'https' : 'http', this.policy);
    // prepareRequestHeaders removes hop-by-hop fields; an upgrade needs these two back.
    req.headers.connection = 'upgrade';
    req.headers.upgrade = upgrade;
    const target = req.url as string;
    if (!this.enabled) return this.refuse(req, socket, requestId, 'destination_not_found', 'disabled');
    if (this.draining) return this.refuse(req, socket, requestId, 'destination_unavailable', 'no_backend');
    if (target.length > this.maxUrlLength || target.charCodeAt(0) !== 47) return this.refuse(req, socket, requestId, target.length > this.maxUrlLength ? 'uri_too_long' : 'http_request_error', 'error');
    const route = this.routing.table.match(req);
    if (route === undefined) return this.refuse(req, socket, requestId, 'destination_not_found', 'no_route');
    const limit = route.rateLimit;
    if (limit === undefined) return this.open(req, socket, head, route, requestId, target, undefined);
    let verdict: Verdict | Promise<Verdict>;
    try {
      verdict = limit.check(req, route.name);
    } catch (err) {
      this.logger.error(`rate limit check failed: ${(err as Error).stack ?? String(err)}`);
      verdict = { action: 'allow', headers: undefined, retryAfterS: 0, release: undefined };
    }
    if (verdict instanceof Promise) verdict.then((v) => this.afterVerdict(req, socket, head, route, requestId, target, v), () => socket.destroy());
    else this.afterVerdict(req, socket, head, route, requestId, target, verdict);
  }

  private afterVerdict(req: IncomingMessage, socket: Duplex, head: Buffer, route: Route, requestId: string, target: string, v: Verdict): void {
    try {
      if (socket.destroyed) return void v.release?.();
      if (v.action === 'limit') return this.refuse(req, socket, requestId, 'too_many_requests', 'rate_limited', v.headers);
      if (v.action === 'unavailable') return this.refuse(req, socket, requestId, 'rate_limit_unavailable', 'rate_limited');
      this.open(req, socket, head, route, requestId, target, v.release);
    } catch (err) {
      v.release?.();
      this.logger.error(`unexpected error handling upgrade ${req.url}: ${(err as Error).stack ?? String(err)}`);
      socket.destroy();
    }
  }

  private open(req: IncomingMessage, socket: Duplex, head: Buffer, route: Route, requestId: string, target: string, releaseLimit: (() => void) | undefined): void {
    const backend = this.lb.pick(route.pool, req);
    if (backend === undefined) {
      releaseLimit?.();
      return this.refuse(req, socket, requestId, 'destination_unavailable', 'no_backend');
    }
    if (route.rewrites) req.url = route.rewrite(target);
    if (route.requestHeaders !== undefined) applyRequestOps(req.headers, route.requestHeaders);
    if (route.hostHeader !== 'client') req.headers.host = route.hostHeader === 'backend' ? backend.url.host : route.hostHeader;
    const tunnel = new Tunnel(this, req, socket as Socket, head, route, requestId, target);
    tunnel.releaseLimit = releaseLimit;
    this.tunnels.add(tunnel);
    tunnel.connect(backend);
  }

  /** Sends every open tunnel a close frame (1001 Going Away). */
  goAwayAll(): void {
    for (const t of this.tunnels) t.goAway('shutdown');
  }

  /** Destroys whatever is still open (end of the shutdown timeout). */
  destroyAll(): void {
    for (const t of this.tunnels) t.destroy('shutdown');
  }

  private refuse(req: IncomingMessage, socket: Duplex, requestId: string, code: ProxyErrorCode, result: UpgradeResult, extraHeaders?: readonly string[]): void {
    this.metrics?.recordUpgrade(result);
    this.metrics?.recordError(code);
    writeRawError(socket, code, requestId, extraHeaders);
    this.accessLog?.write(summary(req, req.url as string, requestId, PROXY_ERRORS[code].status, 0, 0, 0, undefined, 0, PROXY_ERRORS[code].termination, code, undefined));
  }

  /** @internal */
  debug(message: string): void {
    this.logger.debug(message);
  }

  /** @internal */
  warn(message: string): void {
    this.logger.warn(message);
  }
}

class Tunnel {
  backend: Backend | undefined = undefined;
  private lastBackend: Backend | undefined = undefined;
  private readonly tried: Backend[] = [];
  private attempts = 0;
  private upstream: ClientRequest | undefined = undefined;
  private upSocket: Socket | undefined = undefined;
  private readonly started = performance.now();
  private opened = false;
  private finished = false;
  private closing = false;
  private closeSent = false;
  /** Gives back a rate-limit in-flight slot (maxConcurrent), if the tunnel holds one. */
  releaseLimit: (() => void) | undefined = undefined;
  private closeReason: string | undefined = undefined;
  private status = 0;
  private error: ProxyErrorCode | undefined = undefined;
  private bytesIn = 0;
  private bytesOut = 0;
  private readonly cursor = new FrameCursor();
  private lifetimeTimer: NodeJS.Timeout | undefined = undefined;
  private graceTimer: NodeJS.Timeout | undefined = undefined;

  constructor(
    private readonly proxy: UpgradeProxy,
    private readonly req: IncomingMessage,
    private readonly client: Socket,
    private readonly head: Buffer,
    private readonly route: Route,
    private readonly requestId: string,
    private readonly target: string,
  ) {
    client.once('close', () => {
      if (!this.opened) {
        // The client left during the handshake: cancel it.
        this.upstream?.destroy();
        this.finish(499, 'client_closed');
      }
    });
  }

  connect(backend: Backend): void {
    this.backend = backend;
    this.attempts++;
    backend.inFlight++; // a tunnel counts as a request in flight (least-connections, maxConnections)
    const options: http.RequestOptions = {
      hostname: backend.hostname,
      port: backend.port,
      method: this.req.method,
      path: backend.basePath === '' ? this.req.url : backend.basePath + this.req.url,
      headers: this.req.headers,
      agent: false, // an upgraded connection is never pooled
      // Makes the request emit `timeout` for its socket's timeouts (connect, then handshake).
      timeout: this.proxy.connectTimeoutMs,
    };
    if (this.route.hostHeader === 'backend') this.req.headers.host = backend.url.host;
    let up: ClientRequest;
    try {
      up = backend.protocol === 'https:' ? https.request({ ...options, ...backend.tls, servername: backend.tls?.servername ?? backend.hostname }) : http.request(options);
    } catch (err) {
      this.release();
      return this.fail(Object.assign(new Error((err as Error).message), { code: 'ERR_INVALID_REQUEST' }));
    }
    this.upstream = up;
    up.on('error', (err: NodeJS.ErrnoException) => {
      if (this.upstream === up) this.onUpstreamError(err);
    });
    // Connected means TCP up and, for https, the TLS handshake done: a stalled TLS handshake is
    // a connect timeout (as in nginx and Envoy), which may go to another backend.
    let connected = false;
    up.on('socket', (s: Socket) => {
      s.setTimeout(this.proxy.connectTimeoutMs);
      // The socket's timer measures silence, which let a silent TLS handshake run twice
      // connectTimeout; a deadline from the start bounds the whole connect (as the pooled agent's).
      const deadline = setTimeout(() => {
        if (!connected) up.emit('timeout');
      }, this.proxy.connectTimeoutMs);
      s.once('close', () => clearTimeout(deadline));
      s.once(backend.protocol === 'https:' ? 'secureConnect' : 'connect', () => {
        connected = true;
        clearTimeout(deadline);
        s.setTimeout(this.proxy.handshakeTimeoutMs);
      });
    });
    up.on('timeout', () => {
      const connecting = !connected;
      up.destroy(Object.assign(new Error(connecting ? 'connect timeout (upstream.connectTimeout)' : 'no handshake answer (upstream.timeout)'), { code: connecting ? CONNECT_TIMEOUT : READ_TIMEOUT }));
    });
    up.on('response', (res) => this.onRefused(res));
    up.on('upgrade', (res, socket, head) => this.onUpgrade(res, socket, head));
    up.end();
  }

  private onUpstreamError(err: NodeJS.ErrnoException): void {
    const backend = this.backend;
    this.upstream = undefined;
    if (this.opened) return this.destroy('upstream_reset');
    this.release();
    if (this.finished || backend === undefined) return;
    const code = classifyUpstreamError(err);
    if (isPassiveFailure(code)) this.proxy.registry.reportPassiveFailure(backend, code, `${code}: ${err.message}`);
    const policy = this.route.retry;
    if (isNotSent(code) && policy.onConnectFailure && this.attempts < policy.attempts) {
      this.tried.push(backend);
      const next = this.proxy.lb.pickExcluding(this.route.pool, this.req, this.tried);
      if (next !== undefined) {
        this.proxy.metrics?.recordRetry('connect_failure');
        this.proxy.debug(`upgrade ${this.target}: retrying on "${next.id}" after ${code} from "${backend.id}" [request ${this.requestId}]`);
        return this.connect(next);
      }
    }
    this.proxy.warn(`upgrade ${this.target} -> ${PROXY_ERRORS[code].status} ${code} from "${backend.id}": ${err.message} [request ${this.requestId}]`);
    this.fail(err, code);
  }

  private fail(err: NodeJS.ErrnoException, code: ProxyErrorCode = classifyUpstreamError(err)): void {
    this.error = code;
    this.proxy.metrics?.recordError(code);
    writeRawError(this.client, code, this.requestId);
    this.finish(PROXY_ERRORS[code].status, undefined, 'error');
  }

  /** The backend answered the handshake with something other than 101: relay it, then close. */
  private onRefused(res: IncomingMessage): void {
    const backend = this.backend;
    this.release();
    const status = res.statusCode ?? 502;
    if (backend !== undefined && status >= 500 && this.proxy.registry.consider5xx) this.proxy.registry.reportPassiveFailure(backend, 'http_5xx', `HTTP ${status}`);
    const headers = buildResponseHeaders(res.rawHeaders, this.requestId, res.httpVersion);
    let head = `HTTP/1.1 ${status} ${res.statusMessage ?? ''}\r\n`;
    for (let i = 0; i < headers.length; i += 2) {
      const name = headers[i].toLowerCase();
      if (name !== 'content-length' && name !== 'connection') head += `${headers[i]}: ${headers[i + 1]}\r\n`;
    }
    head += 'connection: close\r\n\r\n';
    this.client.write(head);
    res.on('error', () => this.client.destroy());
    res.pipe(this.client); // the body, then the end of the connection
    res.on('end', () => this.finish(status, undefined, 'rejected'));
  }

  private onUpgrade(res: IncomingMessage, upSocket: Socket, upHead: Buffer): void {
    const client = this.client;
    upSocket.on('error', ignore);
    if (this.finished || client.destroyed) {
      upSocket.destroy();
      return;
    }
    this.opened = true;
    this.upSocket = upSocket;
    this.status = 101;
    this.proxy.metrics?.recordUpgrade('success');
    upSocket.setTimeout(0);
    upSocket.setNoDelay(true);
    client.setNoDelay(true);
    let head = `HTTP/1.1 101 ${res.statusMessage || 'Switching Protocols'}\r\n`;
    const raw = res.rawHeaders;
    for (let i = 0; i < raw.length; i += 2) head += `${raw[i]}: ${raw[i + 1]}\r\n`;
    client.write(`${head}\r\n`);
    if (upHead.length > 0) this.toClient(upHead);
    if (this.head.length > 0) this.toBackend(this.head);

    client.on('data', (chunk: Buffer) => this.toBackend(chunk));
    upSocket.on('data', (chunk: Buffer) => this.toClient(chunk));
    client.on('drain', () => upSocket.resume());
    upSocket.on('drain', () => client.resume());
    client.on('end', () => upSocket.end());
    upSocket.on('end', () => client.end());
    client.on('close', () => this.destroy(this.closeReason ?? 'client_closed'));
    upSocket.on('close', () => {
      // After a 1001 the client gets time to answer it; its close (or the grace timer) ends the tunnel.
      if (!this.closeSent) this.destroy(this.closeReason ?? 'backend_closed');
    });
    // Idle: no byte either way (every message crosses the client socket) for idleTimeout.
    client.setTimeout(this.proxy.idleTimeoutMs, () => this.destroy('idle_timeout'));
    if (this.proxy.maxLifetimeMs > 0) this.lifetimeTimer = setTimeout(() => this.goAway('max_lifetime'), this.proxy.maxLifetimeMs);
  }

  private toBackend(chunk: Buffer): void {
    this.bytesIn += chunk.length;
    if (this.closing) return; // going away: nothing more is relayed
    if (!(this.upSocket as Socket).write(chunk)) this.client.pause();
  }

  private toClient(chunk: Buffer): void {
    this.bytesOut += chunk.length;
    if (this.closing) {
      // Waiting for a frame boundary to put the close frame in.
      const end = this.cursor.feed(chunk);
      if (end < 0) {
        this.client.write(chunk);
        return;
      }
      this.client.write(chunk.subarray(0, end));
      this.sendClose();
      return;
    }
    this.cursor.feed(chunk);
    if (!this.client.write(chunk)) this.upSocket?.pause();
  }

  /** Ends the tunnel with a close frame (1001) to the client, at the next frame boundary. */
  goAway(reason: string): void {
    if (this.finished || this.closing) return;
    if (!this.opened) return this.destroy(reason);
    this.closing = true;
    this.closeReason = reason;
    this.graceTimer = setTimeout(() => this.destroy(reason), CLOSE_GRACE_MS);
    if (this.cursor.atBoundary) this.sendClose();
  }

  private sendClose(): void {
    this.closeSent = true;
    this.upSocket?.destroy();
    this.client.end(serverCloseFrame(1001, 'going away'));
  }

  destroy(reason: string): void {
    if (this.finished) return;
    this.closeReason ??= reason;
    this.upstream?.destroy();
    this.upSocket?.destroy();
    this.client.destroy();
    this.finish(this.opened ? 101 : 499, this.closeReason);
  }

  /** Gives back the backend slot of the current attempt (kept as `lastBackend` for metrics and logs). */
  private release(): void {
    const b = this.backend;
    if (b !== undefined) {
      b.inFlight--;
      this.lastBackend = b;
      this.backend = undefined;
    }
  }

  private finish(status: number, closeReason: string | undefined, result?: UpgradeResult): void {
    if (this.finished) return;
    this.finished = true;
    if (this.lifetimeTimer !== undefined) clearTimeout(this.lifetimeTimer);
    if (this.graceTimer !== undefined) clearTimeout(this.graceTimer);
    this.release();
    this.releaseLimit?.();
    const backend = this.lastBackend;
    this.proxy.tunnels.delete(this);
    const m = this.proxy.metrics;
    if (m !== undefined) {
      if (result !== undefined) m.recordUpgrade(result);
      else if (!this.opened) m.recordUpgrade('client_closed');
      m.recordTunnelBytes(this.bytesIn, this.bytesOut);
      m.recordRequest(backend, this.req.method, status, (performance.now() - this.started) / 1000);
    }
    const termination = this.error !== undefined ? PROXY_ERRORS[this.error].termination : status === 499 ? 'client_closed' : undefined;
    this.proxy.accessLog?.write(
      summary(this.req, this.target, this.requestId, status, performance.now() - this.started, this.bytesIn, this.bytesOut, backend?.id, this.attempts, termination, this.error, this.opened ? closeReason : undefined),
    );
  }
}

function summary(
  req: IncomingMessage, target: string, requestId: string, status: number, durationMs: number, bytesIn: number, bytesOut: number,
  backend: string | undefined, attempts: number, termination: string | undefined, error: ProxyErrorCode | undefined, closeReason: string | undefined,
) {
  return { req, target, requestId, status, durationMs, bytesIn, bytesOut, backend, attempts, connectMs: -1, headerMs: -1, termination, error, responseHeaders: undefined, closeReason };
}

function ignore(): void {}

/** An error answer written straight to a socket that has not been upgraded. */
function writeRawError(socket: Duplex, code: ProxyErrorCode, requestId: string, extraHeaders?: readonly string[]): void {
  if (socket.destroyed || !socket.writable) {
    socket.destroy();
    return;
  }
  const status = PROXY_ERRORS[code].status;
  const body = ERROR_BODIES[code];
  let extra = '';
  if (extraHeaders !== undefined) for (let i = 0; i < extraHeaders.length; i += 2) extra += `${extraHeaders[i]}: ${extraHeaders[i + 1]}\r\n`;
  const hsts = hstsOfSocket(socket);
  if (hsts !== undefined) extra += `strict-transport-security: ${hsts}\r\n`;
  socket.end(
    `HTTP/1.1 ${status} ${REASON[status] ?? ''}\r\ncontent-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\n${status === 503 ? 'retry-after: 1\r\n' : ''}content-length: ${Buffer.byteLength(body)}\r\nproxy-status: proxymity; error=${code}\r\nx-request-id: ${requestId}\r\n${extra}connection: close\r\n\r\n${body}`,
  );
}
