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
 * h2c and h2 are never tunnelled (h2c smuggling): they are taken out of the Upgrade list, and a
 * request left with no token goes to the backend as an ordinary request, whose answer is relayed
 * before the connection closes. A Content-Length body is forwarded before the handshake's answer;
 * a chunked one gets 400.
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
import { oneValidHost } from './proxy.middleware.js';
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
    // h2c is never tunnelled: after a 101 the client would speak HTTP/2 straight to the backend,
    // past routing, header rules and rate limits ("h2c smuggling"; RFC 9113 §3.1 deprecates it).
    const upgrade = withoutH2(req.headers.upgrade as string);
    const requestId = prepareRequestHeaders(req, (req.socket as { encrypted?: boolean }).encrypted === true ? 'https' : 'http', this.policy);
    // HTTP2-Settings belongs to the h2c upgrade only; clients do not always list it in Connection.
    if (req.headers['http2-settings'] !== undefined) delete req.headers['http2-settings'];
    // prepareRequestHeaders removes hop-by-hop fields; an upgrade needs these two back. With no
    // token left, the request goes to the backend as an ordinary one (its answer is relayed, then
    // the connection closes: see Tunnel.onRefused).
    const plain = upgrade === '';
    if (!plain) {
      req.headers.connection = 'upgrade';
      req.headers.upgrade = upgrade;
    }
    const target = req.url as string;
    if (!this.enabled && !plain) return this.refuse(req, socket, requestId, 'destination_not_found', 'disabled');
    if (this.draining) return this.refuse(req, socket, requestId, 'destination_unavailable', 'no_backend');
    if (!oneValidHost(req)) return this.refuse(req, socket, requestId, 'invalid_host', 'error');
    if (target.length > this.maxUrlLength || target.charCodeAt(0) !== 47) return this.refuse(req, socket, requestId, target.length > this.maxUrlLength ? 'uri_too_long' : 'http_request_error', 'error');
    // Node does not parse the body of a request it hands to `upgrade`: its bytes follow the
    // headers raw (in `head`, then on the socket). A Content-Length body is counted off and
    // forwarded (Tunnel); finding the end of a chunked one would take a chunk parser here, so
    // it is refused rather than forwarded wrong.
    if (req.headers['transfer-encoding'] !== undefined) {
      this.logger.warn(`upgrade ${target.slice(0, 200)} -> 400 upgrade_body_not_supported: an Upgrade request with a Transfer-Encoding (chunked) body is not forwarded [request ${requestId}]`);
      return this.refuse(req, socket, requestId, 'upgrade_body_not_supported', 'error');
    }
    const route = this.routing.table.match(req);
    if (route === undefined) return this.refuse(req, socket, requestId, 'destination_not_found', 'no_route');
    const cl = req.headers['content-length'];
    if (cl !== undefined && route.maxBodySize > 0 && Number(cl) > route.maxBodySize) return this.refuse(req, socket, requestId, 'request_too_large', 'error');
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
    const plain = req.headers.upgrade === undefined; // handle() left no Upgrade token to ask for
    if (route.rewrites) req.url = route.rewrite(target);
    if (route.requestHeaders !== undefined) applyRequestOps(req.headers, route.requestHeaders);
    if (route.hostHeader !== 'client') req.headers.host = route.hostHeader === 'backend' ? backend.url.host : route.hostHeader;
    const tunnel = new Tunnel(this, req, socket as Socket, head, route, requestId, target, plain);
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
  /** Client bytes that follow the request (and its body): the new protocol's, sent after the 101. */
  private head: Buffer;
  /** The part of a Content-Length body that came with the headers (empty if none). */
  private readonly bodyHead: Buffer;
  /** Body bytes still to be read from the client socket. */
  private bodyLeft = 0;
  /** Set once body bytes were taken from the client socket: they cannot be sent to another backend. */
  private bodyStreamed = false;
  /** Stops forwarding the body (detaches its listeners, pauses the client); set while it is read. */
  private stopBody: (() => void) | undefined = undefined;

  constructor(
    private readonly proxy: UpgradeProxy,
    private readonly req: IncomingMessage,
    private readonly client: Socket,
    head: Buffer,
    private readonly route: Route,
    private readonly requestId: string,
    private readonly target: string,
    /** No Upgrade token was left to ask for: an ordinary request whose answer is relayed, then the connection closed. */
    private readonly plain: boolean,
  ) {
    // Node hands an Upgrade request over without reading its body: a Content-Length body is the
    // first bytes of `head`, then of the socket (handle() refused chunked ones).
    const cl = req.headers['content-length'];
    const length = cl === undefined ? 0 : Number(cl);
    if (length > 0) {
      const inHead = Math.min(length, head.length);
      this.bodyHead = head.subarray(0, inHead);
      this.head = head.subarray(inHead);
      this.bodyLeft = length - inHead;
      this.bytesIn = inHead;
    } else {
      this.bodyHead = head.subarray(0, 0);
      this.head = head;
    }
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
        // Read the rest of the body only now, so that a connect failure can still go to another backend.
        if (this.bodyLeft > 0 && this.upstream === up) this.pumpBody(up);
      });
    });
    up.on('timeout', () => {
      const connecting = !connected;
      up.destroy(Object.assign(new Error(connecting ? 'connect timeout (upstream.connectTimeout)' : 'no handshake answer (upstream.timeout)'), { code: connecting ? CONNECT_TIMEOUT : READ_TIMEOUT }));
    });
    up.on('response', (res) => this.onRefused(res));
    up.on('upgrade', (res, socket, head) => this.onUpgrade(res, socket, head));
    if (this.bodyLeft === 0) {
      if (this.bodyHead.length > 0) up.end(this.bodyHead);
      else up.end();
      return;
    }
    if (this.bodyHead.length > 0) up.write(this.bodyHead);
    // A client waiting for 100 Continue before its body gets the backend's.
    if (this.req.headers.expect !== undefined) up.once('continue', () => this.client.write('HTTP/1.1 100 Continue\r\n\r\n'));
  }

  /**
   * Forwards the rest of a Content-Length body from the client socket, exactly `bodyLeft` bytes
   * with backpressure, then ends the request. Bytes after the body stay out of the upstream until
   * the backend's 101 (they become `head`); the client socket is left paused.
   */
  private pumpBody(up: ClientRequest): void {
    const client = this.client;
    this.bodyStreamed = true;
    const onData = (chunk: Buffer): void => {
      const left = this.bodyLeft;
      if (chunk.length < left) {
        this.bodyLeft = left - chunk.length;
        this.bytesIn += chunk.length;
        if (!up.write(chunk)) client.pause();
        return;
      }
      this.stopBody?.();
      this.bodyLeft = 0;
      this.bytesIn += left;
      if (chunk.length > left) this.head = chunk.subarray(left);
      up.end(chunk.subarray(0, left));
    };
    const onDrain = (): void => void client.resume();
    const onEnd = (): void => this.destroy('client_closed'); // the body will never be complete
    this.stopBody = () => {
      this.stopBody = undefined;
      client.removeListener('data', onData);
      client.removeListener('end', onEnd);
      up.removeListener('drain', onDrain);
      client.pause();
    };
    client.on('data', onData);
    client.on('end', onEnd);
    up.on('drain', onDrain);
    client.resume();
  }

  private onUpstreamError(err: NodeJS.ErrnoException): void {
    const backend = this.backend;
    this.upstream = undefined;
    this.stopBody?.();
    if (this.opened) return this.destroy('upstream_reset');
    this.release();
    if (this.finished || backend === undefined) return;
    const code = classifyUpstreamError(err);
    if (isPassiveFailure(code)) this.proxy.registry.reportPassiveFailure(backend, code, `${code}: ${err.message}`);
    const policy = this.route.retry;
    if (isNotSent(code) && policy.onConnectFailure && this.attempts < policy.attempts && !this.bodyStreamed) {
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
    this.stopBody?.(); // an answer before the whole body: nothing more goes up
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
    res.on('end', () => {
      this.finish(status, undefined, 'rejected');
      closeAfterGrace(this.client);
    });
  }

  private onUpgrade(res: IncomingMessage, upSocket: Socket, upHead: Buffer): void {
    const client = this.client;
    upSocket.on('error', ignore);
    if (this.finished || client.destroyed) {
      upSocket.destroy();
      return;
    }
    // A switch nobody asked for (RFC 9110 §15.2.2), or to HTTP/2: not tunnelled (see handle()).
    const switched = res.headers.upgrade;
    if (this.plain || (switched !== undefined && namesH2(switched))) {
      upSocket.destroy();
      this.stopBody?.();
      const backend = this.backend;
      this.release();
      this.proxy.warn(`upgrade ${this.target} -> 502 http_protocol_error from "${backend?.id}": 101 to "${switched ?? ''}", which the proxy did not ask for [request ${this.requestId}]`);
      return this.fail(new Error('unrequested protocol switch'), 'http_protocol_error');
    }
    // The backend may switch before the whole body is read: the rest follows through the tunnel, in order.
    this.stopBody?.();
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
    if (this.bodyStreamed) client.resume(); // pumpBody left it paused
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
    if (this.plain) return; // an ordinary request: it gets shutdownTimeout to finish, as the others do
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

/**
 * The Upgrade list without HTTP/2 tokens, or '' when none is left. h2c is never tunnelled (see
 * handle()); "h2" is dropped too, since a backend that accepted it in cleartext would open the
 * same bypass (a server must ignore it in Upgrade: RFC 7540 §3.2).
 */
function withoutH2(value: string | undefined): string {
  if (value === undefined) return '';
  if (value.indexOf(',') < 0) return isH2(value.trim()) ? '' : value; // one token (WebSocket): no split
  let out = '';
  for (const part of value.split(',')) {
    const token = part.trim();
    if (token !== '' && !isH2(token)) out = out === '' ? token : `${out}, ${token}`;
  }
  return out;
}

function namesH2(value: string): boolean {
  return value.indexOf(',') < 0 ? isH2(value.trim()) : value.split(',').some((t) => isH2(t.trim()));
}

/** "h2c" or "h2", any case, with or without a "/version". */
function isH2(token: string): boolean {
  const slash = token.indexOf('/');
  const n = slash < 0 ? token.length : slash;
  if (n !== 2 && n !== 3) return false;
  if ((token.charCodeAt(0) | 0x20) !== 0x68 || token.charCodeAt(1) !== 0x32) return false;
  return n === 2 || (token.charCodeAt(2) | 0x20) === 0x63;
}

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
  closeAfterGrace(socket);
}

/**
 * For a connection answered and ended without a tunnel: whatever the client still sends (a body
 * not forwarded, pipelined requests) is read and dropped, never forwarded, so that its close is
 * seen; a client that has not closed CLOSE_GRACE_MS after the answer was ended is cut.
 */
function closeAfterGrace(socket: Duplex): void {
  if (socket.destroyed) return;
  socket.resume();
  // From now, not from the answer's last byte: a client that reads nothing never gets there.
  armGrace(socket);
}

function armGrace(socket: Duplex): void {
  if (socket.destroyed) return;
  const grace = setTimeout(destroySocket, CLOSE_GRACE_MS, socket);
  grace.unref();
  socket.once('close', () => clearTimeout(grace));
}

function destroySocket(socket: Duplex): void {
  socket.destroy();
}
