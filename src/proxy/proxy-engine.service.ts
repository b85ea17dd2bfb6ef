/**
 * DATA PLANE. The only file that imports http-proxy.
 *
 * Constraints (see STYLE.md §3): nothing here throws into the caller, nothing awaits, nothing is
 * parsed or built per request that could be built per backend, and every failure becomes one
 * response (or one cut connection once a response has begun), one log line and one count.
 *
 * Each backend gets one http-proxy server (its "forwarder") with a fixed target and agent, its
 * `error` listener registered once, and a pass list of exactly one pass, `forwardPass`, which
 * replaces http-proxy's own `deleteLength`, `timeout`, `XHeaders` and `stream` passes:
 * - `stream` runs `url.parse` on every request and rebuilds the path with `common.urlJoin`,
 *   which collapses `//` and re-escapes characters, so the backend would not get the path the
 *   client sent; it copies the header object and ten TLS keys into a fresh options object;
 * - its `proxyTimeout` aborts with the same ECONNRESET as a real reset, so a timeout (504)
 *   could not be told from a reset (502);
 * - it aborts the upstream request only on the client's `aborted` event, which Node no longer
 *   emits once the request body is complete, so a client that gives up while the backend
 *   thinks would leave the upstream request running;
 * - `deleteLength` rewrites DELETE/OPTIONS framing, and we set X-Forwarded-* ourselves.
 * Calling `forwarder.web(req, res)` with no options argument keeps http-proxy from copying its
 * options per call; responses are handled here (the `selfHandleResponse` path), with headers
 * written in one `writeHead` call.
 */
import type { ClientRequest, IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { Inject, Injectable, Logger } from '@nestjs/common';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import httpProxy from 'http-proxy';
import { BackendRegistry } from '../backend/backend-registry.service.js';
import type { Backend } from '../backend/backend.js';
import type { ConnectTimed } from '../backend/upstream-agent.js';
import { kOwner, sendUpstream, type Owned, type UpstreamListeners } from '../backend/upstream-request.js';
import { LoadBalancerService } from '../load-balancer/load-balancer.service.js';
import { AccessLogService } from '../logging/access-log.service.js';
import { MetricsService, type RetryReason } from '../metrics/metrics.service.js';
import type { Route } from '../routing/route.js';
import { applyResponseOps } from '../routing/route.js';
import type { CacheTransaction } from '../cache/cache-transaction.js';
import { NOT_MODIFIED_FIELDS, type StoredResponse } from '../cache/stored-response.js';
import { buildResponseHeaders, VIA_11 } from './hop-headers.js';
import { rawHeader } from '../backend/raw-header.js';
import { hstsOf } from './hsts.js';
import {
  classifyUpstreamError,
  CLIENT_CLOSED,
  CONNECT_TIMEOUT,
  ERROR_BODIES,
  isNotSent,
  isPassiveFailure,
  PROXY_ERRORS,
  READ_TIMEOUT,
  RETRY_LIMIT_EXCEEDED,
  BODY_IDLE_TIMEOUT,
  CLIENT_BODY_TIMEOUT,
  CLIENT_SEND_TIMEOUT,
  cut,
  TOTAL_TIMEOUT,
  type ProxyErrorCode,
} from './proxy-errors.js';


/** Extra response headers set before forwarding (the rate limit's quota headers). */
export const kResponseHeaders = Symbol('proxymity.responseHeaders');
export type WithResponseHeaders = ServerResponse & { [kResponseHeaders]?: readonly string[] };
const kBackend = Symbol('proxymity.backend');

type Forwarder = httpProxy;
type WithExchange<T> = Owned<T, Exchange>;

/** Methods that RFC 9110 §9.2.2 calls idempotent: safe to resend after a reset. */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/**
 * Per-request state: the one object a proxied request allocates besides what Node and the
 * upstream request need. Fixed shape, so handlers that read it stay monomorphic.
 */
class Exchange {
  /** Backend of the current attempt; holds one of its `inFlight` slots until released. */
  backend: Backend | undefined = undefined;
  upstream: ClientRequest | undefined = undefined;
  tried: Backend[] | undefined = undefined;
  attempts = 0;
  staleRetried = false;
  /** Counted in the engine's retry budget while true. */
  retrying = false;
  /** A request body byte has been handed to an upstream request: the request can no longer be replayed. */
  bodyStarted = false;
  /** Request body bytes seen (counted when the access log, maxBodySize on a chunked upload, or replay needs them). */
  bodyBytes = 0;
  /** The body so far, kept while it may still be replayed on another try (retry.bufferBody). */
  replay: Buffer[] | undefined = undefined;
  /** upstream.headerTimeout / totalTimeout timers, only when those are configured. */
  headerTimer: NodeJS.Timeout | undefined = undefined;
  totalTimer: NodeJS.Timeout | undefined = undefined;
  /** Set when the client connection closed (normally or not); nothing more is written. */
  closed = false;
  /** An HTTP/2 client reset its stream before the response was complete (any error code, NO_ERROR included). */
  aborted = false;
  /** Backend of the last attempt (kept after its slot is released, for metrics and logs). */
  lastBackend: Backend | undefined = undefined;
  /** The error that ended the exchange, when the proxy answered or cut it, and the access log's name for the ending. */
  error: ProxyErrorCode | undefined = undefined;
  termination: string | undefined = undefined;
  /** performance.now() when the request reached the engine, and when the last attempt was sent. */
  readonly startedAt = performance.now();
  attemptStartedAt = 0;
  /** ms; -1 = not measured (pooled connection, or no answer). */
  connectMs = -1;
  headerMs = -1;
  /** Bytes the client socket had written before this response (bytes_out is the difference). */
  readonly writtenBefore: number;
  /** The response header list as written, kept only when the access log wants response headers. */
  responseHeaders: string[] | undefined = undefined;
  /** The backend's response whose body is being relayed to the client (see `relay`). */
  body: IncomingMessage | undefined = undefined;
  /** That response announced trailers: they follow its body. */
  bodyTrailers = false;
  /** `drain` on the client response resumes the body; registered the first time the client falls behind. */
  drainListening = false;
  /**
   * The client holds up the response: the body is paused for it, or the end is written but not
   * yet taken. proxy.sendTimeout's timer runs meanwhile (one per exchange that ever falls behind,
   * restarted in place on the next stall); the backend's silence then is not held against it.
   */
  stalled = false;
  sendTimer: NodeJS.Timeout | undefined = undefined;
  /** `unsent()` when the timer last started: less when it fires means the client took some. */
  sendPending = 0;
  /** A stored body larger than one slice, written a slice at a time as the client takes it, and how far. */
  storedBody: Buffer | undefined = undefined;
  storedAt = 0;
  /** Queued behind an earlier response on its HTTP/1.1 connection when it began (see watchQueued). */
  queued = false;
  /** The cache's part in this request (routes with the cache on). */
  cache: CacheTransaction | undefined = undefined;

  constructor(
    readonly engine: ProxyEngine,
    readonly req: IncomingMessage,
    readonly res: ServerResponse,
    readonly requestId: string,
    /** No request body: the request can be replayed on another backend. */
    readonly bodyless: boolean,
    /** The route it matched: pool, retry policy, timeouts, limits (of the config it started with). */
    readonly route: Route,
    /** The request target as the client sent it (before a route rewrote it), for logs. */
    readonly target: string,
  ) {
    this.writtenBefore = req.socket?.bytesWritten ?? Number.NaN;
  }
}

@Injectable()
export class ProxyEngine {
  private readonly logger = new Logger(ProxyEngine.name);
  /** Proxied requests whose client connection has not closed yet (graceful shutdown waits on it). */
  inFlight = 0;
  /** Set while shutting down: responses carry `Connection: close`. */
  draining = false;
  /** Exchanges currently on a retry (the retry budget's numerator). */
  retriesInFlight = 0;
  /** Set when metrics are on: the data plane records into it. */
  private readonly metrics: MetricsService | undefined;
  /** Set when access logs are on; otherwise no record is built. */
  private readonly accessLog: AccessLogService | undefined;
  /** Request bodies are counted for the access log (bytes_in). */
  readonly countBodies: boolean;
  /** Some https listener has `hsts`: responses on TLS connections look up their listener's value (kHsts). */
  private readonly hsts: boolean;
  /** proxy.sendTimeout (restart-only, like all of proxy.*). */
  readonly sendTimeoutMs: number;

  constructor(
    private readonly registry: BackendRegistry,
    private readonly lb: LoadBalancerService,
    metrics: MetricsService,
    accessLog: AccessLogService,
    @Inject(PROXYMITY_CONFIG) cfg: ProxymityConfig,
  ) {
    this.metrics = metrics.enabled ? metrics : undefined;
    metrics.readInFlightFrom(() => this.inFlight);
    this.accessLog = accessLog.enabled ? accessLog : undefined;
    this.countBodies = accessLog.enabled;
    this.hsts = cfg.listeners.some((l) => l.protocol === 'https' && l.hsts !== undefined);
    this.sendTimeoutMs = cfg.proxy.sendTimeout;
  }

  /** Forwards `req` to `backend`; every outcome is handled inside. */
  forward(req: IncomingMessage, res: ServerResponse, backend: Backend, requestId: string, route: Route, target: string = req.url as string, cache?: CacheTransaction): void {
    const ex = new Exchange(this, req, res, requestId, isBodyless(req), route, target);
    (res as WithExchange<ServerResponse>)[kOwner] = ex;
    ex.cache = cache;
    const retry = route.retry;
    if (!ex.bodyless && retry.bufferBody > 0 && retry.methods.has(req.method as string) && req.headers.trailer === undefined) {
      const cl = req.headers['content-length'];
      if (cl === undefined || Number(cl) <= retry.bufferBody) ex.replay = [];
    }
    res.on('close', onClientClose); // emitted once; `on` spares the once() wrapper
    if (req.httpVersionMajor === 2) watchReset(ex);
    else if (res.socket === null) watchQueued(ex);
    this.inFlight++;
    if (route.totalTimeoutMs > 0) ex.totalTimer = setTimeout(onTotalTimeout, route.totalTimeoutMs, ex);
    this.attempt(ex, backend);
  }

  /** Answers with the error `code` (no backend involved). */
  reject(req: IncomingMessage, res: ServerResponse, code: ProxyErrorCode, requestId: string, extraHeaders?: readonly string[]): void {
    if (code === 'destination_unavailable') {
      this.logger.warn(`${req.method} ${req.url} -> 503 ${code}: no backend available (unhealthy, disabled or at maxConnections) [request ${requestId}]`);
    } else {
      // The client's mistake (400/413/414): worth a trace, not an alert.
      this.logger.debug(`${req.method} ${req.url?.slice(0, 200)} -> ${PROXY_ERRORS[code].status} ${code} [request ${requestId}]`);
    }
    writeError(res, code, requestId, this.sendTimeoutMs, extraHeaders);
    const status = PROXY_ERRORS[code].status;
    if (this.metrics !== undefined) {
      this.metrics.recordError(code);
      this.metrics.recordRequest(undefined, req.method, status, 0);
    }
    if (this.accessLog !== undefined) {
      this.accessLog.write({
        req, target: req.url as string, requestId, status, durationMs: 0, bytesIn: 0, bytesOut: 0, backend: undefined, attempts: 0,
        connectMs: -1, headerMs: -1, termination: PROXY_ERRORS[code].termination, error: code, responseHeaders: undefined,
      });
    }
  }

  /**
   * A request that waited for another request's fill and whose client left meanwhile: it never
   * reached the engine, but is counted (499) and logged like any other.
   */
  recordClientGone(req: IncomingMessage, requestId: string, target: string, startedAt: number, cache: CacheTransaction): void {
    const durationMs = performance.now() - startedAt;
    this.logger.debug(`${req.method} ${target}: client closed the connection while waiting for the cache (499) [request ${requestId}]`);
    if (this.metrics !== undefined) {
      this.metrics.recordRequest(undefined, req.method, 499, durationMs / 1000);
      this.metrics.recordCache(cache.result);
    }
    this.accessLog?.write({
      req, target, requestId, status: 499, durationMs, bytesIn: 0, bytesOut: 0, backend: undefined, attempts: 0,
      connectMs: -1, headerMs: -1, termination: CLIENT_CLOSED, error: undefined, responseHeaders: undefined, cache: cache.result,
    });
  }

  /** Answers from the cache: `cache.stored` (a hit, or a stale stand-in when no backend is available). */
  serveFromCache(req: IncomingMessage, res: ServerResponse, requestId: string, route: Route, target: string, cache: CacheTransaction): void {
    const ex = new Exchange(this, req, res, requestId, true, route, target);
    (res as WithExchange<ServerResponse>)[kOwner] = ex;
    ex.cache = cache;
    res.on('close', onClientClose); // emitted once; `on` spares the once() wrapper
    if (req.httpVersionMajor === 2) watchReset(ex);
    else if (res.socket === null) watchQueued(ex);
    this.inFlight++;
    this.respondFromCache(ex, cache, cache.stored as StoredResponse);
  }

  /**
   * Writes a stored response: the whole of it, its headers alone (HEAD), or a 304 when the
   * client's own conditionals match it. Age, Via, X-Request-Id and Cache-Status are this request's.
   */
  private respondFromCache(ex: Exchange, tx: CacheTransaction, stored: StoredResponse): void {
    const res = ex.res;
    if (res.headersSent || ex.closed) return;
    const notModified = stored.notModifiedFor(tx.ifNoneMatch, tx.ifModifiedSince);
    let headers = notModified ? stored.notModifiedHeaders() : stored.headers.slice();
    headers.push('age', String(Math.max(0, Math.floor(stored.age()))), 'via', VIA_11, 'x-request-id', ex.requestId, 'cache-status', tx.cacheStatus);
    // A Set-Cookie the backend gave this client with its 304 (never stored).
    if (tx.extraHeaders !== undefined) headers.push(...tx.extraHeaders);
    const status = notModified ? 304 : stored.status;
    try {
      headers = this.finishHeaders(ex, headers);
      if (ex.req.httpVersionMajor === 2) res.writeHead(status, forHttp2(headers));
      else res.writeHead(status, notModified ? 'Not Modified' : stored.statusMessage, headers);
      if (this.accessLog?.wantsResponseHeaders === true) ex.responseHeaders = headers;
    } catch {
      // A stored header Node refuses for this client (HTTP/2's stricter rules): nothing was sent yet.
      for (const name of res.getHeaderNames()) res.removeHeader(name);
      ex.error = 'proxy_internal_error';
      ex.termination = PROXY_ERRORS.proxy_internal_error.termination;
      writeError(res, 'proxy_internal_error', ex.requestId, this.sendTimeoutMs);
      return;
    }
    if (notModified || ex.req.method === 'HEAD') res.end();
    else if (stored.body.length <= STORED_SLICE) res.end(stored.body);
    else {
      ex.storedBody = stored.body;
      return writeStored(ex);
    }
    if (!res.writableFinished) stall(ex);
  }

  /** The route's response header changes, rate-limit headers and HSTS, on any response that goes to the client. */
  private finishHeaders(ex: Exchange, headers: string[]): string[] {
    const route = ex.route;
    if (route.responseHeaders !== undefined) headers = applyResponseOps(headers, route.responseHeaders);
    const extra = (ex.res as WithResponseHeaders)[kResponseHeaders];
    if (extra !== undefined) headers.push(...extra);
    if (this.hsts) {
      const value = hstsOf(ex.req);
      if (value !== undefined) headers.push('strict-transport-security', value);
    }
    return headers;
  }

  private attempt(ex: Exchange, backend: Backend): void {
    ex.backend = backend;
    ex.lastBackend = backend;
    if (ex.route.hostHeader === 'backend') ex.req.headers.host = backend.url.host;
    ex.attempts++;
    backend.inFlight++;
    const forwarder = (backend.forwarder as Forwarder | undefined) ?? this.createForwarder(backend);
    forwarder.web(ex.req, ex.res);
  }

  private createForwarder(backend: Backend): Forwarder {
    const forwarder = httpProxy.createProxyServer({ target: backend.url as unknown as string, agent: backend.agent, [kBackend]: backend } as httpProxy.ServerOptions);
    (forwarder as unknown as { webPasses: unknown[] }).webPasses = [forwardPass];
    // The one error listener of this forwarder: every upstream failure arrives here.
    forwarder.on('error', (err: Error, _req: IncomingMessage, res: ServerResponse | import('node:net').Socket) => {
      const ex = (res as WithExchange<ServerResponse>)[kOwner];
      if (ex !== undefined) this.onUpstreamError(ex, err as NodeJS.ErrnoException);
    });
    backend.forwarder = forwarder;
    return forwarder;
  }

  /** @internal called by the handlers below. */
  onUpstreamError(ex: Exchange, err: NodeJS.ErrnoException): void {
    const up = ex.upstream;
    const answered = (up as { res?: IncomingMessage & { upgrade?: boolean } } | undefined)?.res;
    if (answered?.complete === true && answered.upgrade !== true) {
      // The answer arrived in full; only the rest of the upload failed (a backend that answers
      // 413 and resets). The client gets that answer, the backend is not blamed. (Not a 101
      // with Upgrade: Node counts it complete, and never gives it to the engine; see
      // onSocketClose in upstream-agent.ts.)
      if (up !== undefined && !ex.req.complete) {
        ex.req.unpipe(up);
        ex.req.resume();
      }
      return;
    }
    const backend = ex.backend;
    ex.upstream = undefined;
    this.release(ex);
    if (up !== undefined && ex.bodyStarted) ex.req.unpipe(up);
    if (ex.closed || backend === undefined) return; // the client left first; counted as 499 there
    const code = classifyUpstreamError(err);
    const beforeResponse = !ex.res.headersSent;
    // A keep-alive socket the backend closed just as we reused it: not the backend's fault.
    const stale = beforeResponse && code === 'connection_terminated' && up?.reusedSocket === true;
    if (isPassiveFailure(code) && !stale) this.registry.reportPassiveFailure(backend, code, `${code}: ${err.message}`);

    if (code === 'client_timeout') {
      // The client's doing, not the backend's: answered 408 (or cut), never retried or served stale.
      ex.error = code;
      ex.termination = PROXY_ERRORS[code].termination;
      this.logger.debug(`${ex.req.method} ${ex.req.url} -> 408 ${code}: ${err.message} [request ${ex.requestId}]`);
      writeError(ex.res, code, ex.requestId, this.sendTimeoutMs);
      return;
    }
    if (beforeResponse) {
      const next = this.retryTarget(ex, backend, code, stale, up);
      if (next !== undefined) {
        this.logger.debug(`retrying ${ex.req.method} ${ex.req.url} on "${next.id}" after ${code} from "${backend.id}" [request ${ex.requestId}]`);
        this.retryOn(ex, next);
        return;
      }
      const standIn = ex.cache?.onError();
      if (standIn !== undefined) {
        this.logger.warn(`${ex.req.method} ${ex.req.url}: ${code} from "${backend.id}" (${err.message}); served the stale stored response (stale-if-error) [request ${ex.requestId}]`);
        this.respondFromCache(ex, ex.cache as CacheTransaction, standIn);
        return;
      }
      const status = PROXY_ERRORS[code].status;
      ex.error = code;
      ex.termination = ex.attempts > 1 ? RETRY_LIMIT_EXCEEDED : PROXY_ERRORS[code].termination;
      this.logger.warn(`${ex.req.method} ${ex.req.url} -> ${status} ${code} from "${backend.id}" after ${ex.attempts} attempt(s): ${err.message} [request ${ex.requestId}]`);
      writeError(ex.res, code, ex.requestId, this.sendTimeoutMs);
      return;
    }
    if (ex.res.writableFinished) return; // answered in full; onClientClose drains the upload
    // Headers already went out: the only honest signal left is to cut the connection.
    ex.error = code;
    ex.termination = PROXY_ERRORS[code].termination;
    this.logger.warn(`${ex.req.method} ${ex.req.url}: response from "${backend.id}" cut mid-body (${code}: ${err.message}) [request ${ex.requestId}]`);
    cut(ex.res, code);
  }

  private retryTarget(ex: Exchange, failed: Backend, code: ProxyErrorCode | 'status', stale: boolean, up?: ClientRequest): Backend | undefined {
    // Once a body byte went upstream, only a body kept for replay (retry.bufferBody) can be sent again.
    if (ex.bodyStarted && ex.replay === undefined) return undefined;
    const method = ex.req.method ?? '';
    if (stale && !ex.staleRetried && IDEMPOTENT.has(method)) {
      // One replay on a fresh connection to the same backend: the request never reached its
      // application. It is not a retry in the policy's sense and does not count against it.
      ex.staleRetried = true;
      ex.attempts--;
      this.metrics?.recordRetry('stale_connection');
      // Fresh, not another pooled connection: those that have idled as long are likely closed too
      // (not those freed since the failed one was: they were just used).
      const freedAt = (up?.socket as { freedAt?: number } | null | undefined)?.freedAt;
      (failed.agent as { dropIdle?: (freedBy?: number) => void }).dropIdle?.(freedAt);
      return failed;
    }
    const policy = ex.route.retry;
    if (ex.attempts >= policy.attempts) return undefined;
    const allowed =
      code === 'status' ? policy.methods.has(method)
      : isNotSent(code) ? policy.onConnectFailure
      : code === 'connection_terminated' ? policy.onReset && policy.methods.has(method)
      : code === 'http_response_timeout' ? policy.onTimeout && policy.methods.has(method)
      : false;
    if (!allowed) return undefined;
    if (!ex.retrying) {
      const budget = Math.max(policy.budget.minRetries, Math.floor((policy.budget.percent / 100) * this.inFlight));
      if (this.retriesInFlight >= budget) {
        this.logger.debug(`not retrying ${method} ${ex.req.url}: retry budget (${budget}) spent [request ${ex.requestId}]`);
        return undefined;
      }
      ex.retrying = true;
      this.retriesInFlight++;
    }
    (ex.tried ??= []).push(failed);
    const next = this.lb.pickExcluding(ex.route.pool, ex.req, ex.tried);
    if (next !== undefined) this.metrics?.recordRetry(retryReason(code));
    return next;
  }

  /** Starts the next try, after the backoff when one is configured. */
  private retryOn(ex: Exchange, next: Backend): void {
    const { base, max } = ex.route.retry.backoff;
    if (base === 0) return this.attempt(ex, next);
    const delay = Math.floor(Math.random() * Math.min(max, base * 2 ** (ex.attempts - 1)));
    setTimeout(() => {
      if (!ex.closed && ex.error === undefined) this.attempt(ex, next);
    }, delay);
  }

  /** @internal */
  onUpstreamResponse(ex: Exchange, up: ClientRequest, pres: IncomingMessage): void {
    if (ex.headerTimer !== undefined) {
      clearTimeout(ex.headerTimer);
      ex.headerTimer = undefined;
    }
    if (ex.upstream !== up || ex.closed) {
      pres.resume();
      return;
    }
    if (pres.statusCode === 101) {
      // Switching protocols, with no Upgrade field (with one, see onSocketClose in
      // upstream-agent.ts), on a request that asked for no upgrade: not an answer to relay.
      up.destroy();
      this.onUpstreamError(ex, Object.assign(new Error('the backend answered 101 Switching Protocols to a request that asked for no upgrade'), { code: 'HPE_UNEXPECTED_UPGRADE' }));
      return;
    }
    const res = ex.res;
    const backend = ex.backend;
    const now = performance.now();
    ex.headerMs = now - ex.attemptStartedAt;
    ex.connectMs = up.reusedSocket ? -1 : ((up.socket as ConnectTimed | null)?.connectMs ?? -1);
    if (backend !== undefined) {
      this.metrics?.recordResponseHeaders(backend, ex.headerMs / 1000);
      const status = pres.statusCode ?? 0;
      if (status >= 500 && this.registry.consider5xx) this.registry.reportPassiveFailure(backend, 'http_5xx', `HTTP ${status}`);
      else if (backend.passiveFailures !== 0) this.registry.reportSuccess(backend);
      const policy = ex.route.retry;
      if ((policy.on5xx && status >= 500) || (policy.onGatewayError && (status === 502 || status === 503 || status === 504))) {
        const next = this.retryTarget(ex, backend, 'status', false);
        if (next !== undefined) {
          // Nothing has been written to the client yet: drop this answer and try elsewhere.
          this.logger.debug(`retrying ${ex.req.method} ${ex.req.url} on "${next.id}" after HTTP ${status} from "${backend.id}" [request ${ex.requestId}]`);
          ex.upstream = undefined;
          this.release(ex);
          if (ex.bodyStarted) {
            ex.req.unpipe(up);
            // The upload to this backend is abandoned: free its connection (it never finishes otherwise).
            if (!up.writableFinished) up.destroy();
          }
          pres.resume();
          this.retryOn(ex, next);
          return;
        }
      }
    }
    const tx = ex.cache;
    if (tx !== undefined) {
      const verdict = tx.onResponse(pres);
      if (verdict !== undefined) {
        ex.upstream = undefined;
        this.release(ex);
        pres.resume();
        // The backend's 304 names other validators than ours: ask it again, for the full response.
        if (verdict === 'refetch') {
          delete ex.req.headers['if-none-match'];
          delete ex.req.headers['if-modified-since'];
          if (backend !== undefined) this.attempt(ex, backend);
          else writeError(res, 'proxy_internal_error', ex.requestId, this.sendTimeoutMs);
          return;
        }
        // Answered from the cache: the backend confirmed the stored response (304), or failed
        // and stale-if-error lets the stored one stand in.
        this.respondFromCache(ex, tx, verdict);
        return;
      }
    }
    // This answer goes to the client: the request will not be sent again.
    ex.replay = undefined;
    let trailers = rawHeader(pres.rawHeaders, 'trailer') !== undefined;
    try {
      let headers = buildResponseHeaders(pres.rawHeaders, ex.requestId, pres.httpVersion);
      if (tx !== undefined && !tx.quiet) {
        headers.push('cache-status', tx.cacheStatus);
        // The client's own conditionals, taken off the request so the answer could be stored, match it.
        if (tx.notModifiedToClient) return this.notModifiedFromResponse(ex, tx, pres, headers);
      }
      headers = this.finishHeaders(ex, headers);
      const route = ex.route;
      if (route.pool.sticky !== undefined && backend !== undefined) {
        const cookie = this.lb.stickyCookie(route.pool, ex.req, backend);
        if (cookie !== undefined) headers.push('set-cookie', cookie);
      }
      try {
        writeResponseHead(ex, pres, headers);
      } catch (err) {
        // A Trailer field on a response that cannot carry trailers to this client (an HTTP/1.0
        // client, HEAD, 204, 304, a Content-Length body): Node refuses it. The backend did
        // nothing wrong; the response goes without its trailers, as nginx sends it.
        if ((err as NodeJS.ErrnoException).code !== 'ERR_HTTP_TRAILER_INVALID') throw err;
        resetResponseHead(res);
        headers = withoutField(headers, 'trailer');
        trailers = false;
        writeResponseHead(ex, pres, headers);
      }
      if (this.accessLog?.wantsResponseHeaders === true) ex.responseHeaders = headers;
    } catch (err) {
      // Node refuses a header the backend sent (e.g. an invalid character): that is a bad response.
      const e = err as NodeJS.ErrnoException;
      // writeHead may have set some headers and the status line before it threw: none of them
      // may reach the error answer.
      resetResponseHead(res);
      up.destroy();
      // Refused only because the client speaks HTTP/2: the backend did nothing wrong.
      const h2 = ex.req.httpVersionMajor === 2 && e.code?.startsWith('ERR_HTTP2') === true;
      this.onUpstreamError(ex, Object.assign(new Error(`invalid response header: ${e.message}`), { code: h2 ? 'ERR_PROXYMITY_H2_HEADER' : 'HPE_INVALID_HEADER' }));
      return;
    }
    (pres as WithExchange<IncomingMessage>)[kOwner] = ex;
    pres.on('error', onUpstreamBodyError);
    if (tx?.storing === true) tx.capture(pres);
    // Announced trailers (gRPC-web status, checksums) are copied after the body.
    relay(ex, pres, trailers);
    // Node sends the headers with the first body byte. A chunked body (a stream: server-sent
    // events, chunked long polls) may not start for a while: its headers go out on the next tick
    // if no body byte has come with them. A body with a length comes at once, in the same write
    // (no extra write, and no tick, for the common answer); 204, 304 and HEAD are not chunked.
    if (res.chunkedEncoding && !res.writableEnded) process.nextTick(flushHead, ex);
  }

  /**
   * Answers 304 to a client whose conditionals match the backend's full response (which is
   * still read to its end when the cache stores it, and drained otherwise).
   */
  private notModifiedFromResponse(ex: Exchange, tx: CacheTransaction, pres: IncomingMessage, built: string[]): void {
    const res = ex.res;
    let headers: string[] = [];
    for (let i = 0; i < built.length; i += 2) {
      const n = built[i].toLowerCase();
      if (NOT_MODIFIED_FIELDS.has(n) || n === 'via' || n === 'x-request-id' || n === 'cache-status' || n === 'set-cookie') headers.push(built[i], built[i + 1]);
    }
    headers = this.finishHeaders(ex, headers);
    (pres as WithExchange<IncomingMessage>)[kOwner] = ex;
    pres.on('error', onUpstreamBodyError);
    if (tx.storing) tx.capture(pres);
    pres.resume();
    try {
      if (ex.req.httpVersionMajor === 2) res.writeHead(304, forHttp2(headers));
      else res.writeHead(304, 'Not Modified', headers);
    } catch {
      res.destroy();
      return;
    }
    res.end();
  }

  /** @internal a chunked upload passed proxy.maxBodySize: stop it, answer 413 if still possible. */
  onBodyTooLarge(ex: Exchange): void {
    const up = ex.upstream;
    ex.upstream = undefined;
    this.release(ex);
    if (up !== undefined) {
      ex.req.unpipe(up);
      up.destroy();
    }
    ex.error = 'request_too_large';
    ex.termination = PROXY_ERRORS.request_too_large.termination;
    this.logger.warn(`${ex.req.method} ${ex.req.url} -> 413 request_too_large: body passed ${ex.route.maxBodySize} bytes [request ${ex.requestId}]`);
    writeError(ex.res, 'request_too_large', ex.requestId, this.sendTimeoutMs);
  }

  /** @internal the client took none of the response for proxy.sendTimeout; its connection is cut next. */
  onSendTimeout(ex: Exchange): void {
    // The client's doing: logged as such; the close that follows cancels the upstream request.
    this.logger.debug(`${ex.req.method} ${ex.req.url}: the client took none of the response for ${this.sendTimeoutMs} ms (proxy.sendTimeout); connection closed [request ${ex.requestId}]`);
  }

  /** @internal the client connection closed: normal end, or the client gave up. */
  onClientClose(ex: Exchange): void {
    ex.closed = true;
    if (ex.retrying) {
      ex.retrying = false;
      this.retriesInFlight--;
    }
    if (ex.totalTimer !== undefined) clearTimeout(ex.totalTimer);
    if (ex.headerTimer !== undefined) clearTimeout(ex.headerTimer);
    if (ex.sendTimer !== undefined) clearTimeout(ex.sendTimer);
    if (ex.queued) (ex.req.socket as QueueingSocket)[kQueued]?.delete(ex);
    if (ex.cache !== undefined) ex.cache.onClose();
    this.inFlight--;
    const up = ex.upstream;
    this.release(ex);
    if (this.metrics !== undefined || this.accessLog !== undefined) this.record(ex);
    if (!finished(ex)) {
      // 499 in nginx's and Caddy's terms: nothing is written, the upstream request is cancelled.
      if (up !== undefined && !up.destroyed) up.destroy();
      this.logger.debug(`${ex.req.method} ${ex.req.url}: client closed the connection (499) [request ${ex.requestId}]`);
    } else if (!ex.req.complete) {
      // The backend answered before reading the whole upload (a 413, say): the client has its
      // answer, so stop feeding the upstream and let the rest of the upload drain away, as
      // nginx discards it, rather than reset a client that did nothing wrong.
      if (up !== undefined) {
        ex.req.unpipe(up);
        if (!up.destroyed) up.destroy();
      }
      ex.req.resume();
    }
    ex.upstream = undefined;
  }

  /** Metrics and the access-log line of a finished exchange. */
  private record(ex: Exchange): void {
    const res = ex.res;
    const complete = finished(ex);
    // The client got what the backend (or the proxy) answered, or nothing it could use: 499.
    const status = complete || (res.headersSent && ex.error !== undefined) ? res.statusCode : 499;
    const durationMs = performance.now() - ex.startedAt;
    const error = ex.error;
    if (this.metrics !== undefined) {
      if (error !== undefined) this.metrics.recordError(error);
      this.metrics.recordRequest(ex.lastBackend, ex.req.method, status, durationMs / 1000);
      if (ex.cache !== undefined && !ex.cache.quiet) this.metrics.recordCache(ex.cache.result);
    }
    if (this.accessLog === undefined) return;
    const req = ex.req;
    const cl = req.headers['content-length'];
    this.accessLog.write({
      req,
      target: ex.target,
      requestId: ex.requestId,
      status,
      durationMs,
      bytesIn: cl !== undefined && req.complete ? Number(cl) : ex.bodyBytes,
      bytesOut: (req.socket?.bytesWritten ?? Number.NaN) - ex.writtenBefore,
      backend: ex.lastBackend?.id,
      attempts: ex.attempts,
      connectMs: ex.connectMs,
      headerMs: ex.headerMs,
      termination: ex.termination ?? (status === 499 ? CLIENT_CLOSED : undefined),
      error,
      responseHeaders: ex.responseHeaders,
      cache: ex.cache?.quiet === false ? ex.cache.result : undefined,
    });
  }

  private release(ex: Exchange): void {
    const b = ex.backend;
    if (b !== undefined) {
      b.inFlight--;
      ex.backend = undefined;
    }
  }
}

// ---- handlers shared by every request: registered per request, allocated once -------------

/** Methods Node sends without a body framing header when they have no body (no `Content-Length: 0`). */
const NO_BODY_BY_DEFAULT = new Set(['GET', 'HEAD', 'DELETE', 'OPTIONS', 'TRACE', 'CONNECT']);

/**
 * The request's headers as a flat [name, value, ...] list. Given a list, Node validates and
 * writes them in one pass; given an object, it first stores each through setHeader (a
 * lower-cased copy and an array per header) and writes them later. What Node adds by itself
 * for an object is added here: Host when the client sent none (HTTP/1.0), and
 * `Content-Length: 0` on a bodyless request whose method normally has a body.
 */
function upstreamHeaders(req: IncomingMessage, bodyless: boolean, backend: Backend): (string | string[])[] {
  const h = req.headers;
  const out: (string | string[])[] = [];
  for (const name in h) {
    const value = h[name];
    if (value !== undefined) out.push(name, value);
  }
  if (h.host === undefined) out.push('host', backend.url.host);
  if (bodyless && h['content-length'] === undefined && h['transfer-encoding'] === undefined && !NO_BODY_BY_DEFAULT.has(req.method as string)) out.push('content-length', '0');
  return out;
}

/** The single http-proxy pass: starts the upstream request for the forwarder's backend. */
function forwardPass(req: IncomingMessage, res: ServerResponse, options: { [kBackend]: Backend }): boolean {
  const ex = (res as WithExchange<ServerResponse>)[kOwner] as Exchange;
  const backend = options[kBackend];
  const url = req.url as string;
  let up: ClientRequest;
  let pooled = false;
  try {
    // Checked before the request takes a socket: a pooled one is already connected, so the body
    // can flow at once; on a new connection it waits for the connect (see below).
    pooled = backend.hasFreeSocket();
    up = sendUpstream(backend, backend.agent, backend.port, req.method as string, backend.basePath === '' ? url : backend.basePath + url, upstreamHeaders(req, ex.bodyless, backend), ex, UPSTREAM_LISTENERS);
  } catch (err) {
    // Node validates the method, path and headers here; a request it cannot send is the client's fault.
    const e = err as NodeJS.ErrnoException;
    ex.engine.onUpstreamError(ex, Object.assign(new Error(e.message), { code: 'ERR_INVALID_REQUEST' }));
    return true;
  }
  ex.upstream = up;
  ex.attemptStartedAt = performance.now();
  const headerMs = ex.route.headerTimeoutMs;
  if (headerMs > 0) {
    if (ex.headerTimer !== undefined) clearTimeout(ex.headerTimer);
    ex.headerTimer = setTimeout(onHeaderTimeout, headerMs, ex, up);
  }
  if (ex.bodyless) up.end();
  else if (pooled) startBody(ex, up);
  else {
    // On a new connection the body starts flowing once it is up, so a request whose connection
    // is refused or times out has sent nothing and can still go to another backend.
    up.once('socket', onUpstreamSocket);
  }
  return true;
}

function onUpstreamSocket(this: WithExchange<ClientRequest>, socket: import('node:net').Socket): void {
  const up = this;
  const ex = up[kOwner];
  if (ex === undefined) return;
  if (!socket.connecting) startBody(ex, up);
  else socket.once(ex.backend?.protocol === 'https:' ? 'secureConnect' : 'connect', () => startBody(ex, up));
}

function startBody(ex: Exchange, up: ClientRequest): void {
  if (ex.upstream !== up || ex.closed) return;
  const req = ex.req;
  if (!ex.bodyStarted) {
    ex.bodyStarted = true;
    (req as WithExchange<IncomingMessage>)[kOwner] = ex;
    // Content-Length bodies were checked against maxBodySize up front; chunked ones are counted,
    // and every body is when the access log reports bytes_in or it is kept for a replay.
    if (ex.replay !== undefined || ex.engine.countBodies || (ex.route.maxBodySize > 0 && req.headers['content-length'] === undefined)) req.on('data', onRequestData);
  } else if (ex.replay !== undefined) {
    // A retry: first what earlier tries were sent, then the rest as it arrives.
    for (const chunk of ex.replay) up.write(chunk);
    if (req.readableEnded) {
      up.end();
      return;
    }
  }
  if (req.headers.trailer === undefined) req.pipe(up);
  else {
    req.pipe(up, { end: false });
    req.once('end', forwardRequestTrailers);
  }
}

function forwardRequestTrailers(this: WithExchange<IncomingMessage>): void {
  const ex = this[kOwner];
  const up = ex?.upstream;
  if (up === undefined || up.destroyed) return;
  up.addTrailers(this.trailers);
  up.end();
}

/** Sends the response headers now if no body byte has taken them out yet (see onUpstreamResponse). */
function flushHead(ex: Exchange): void {
  const res = ex.res as ServerResponse & { _headerSent?: boolean };
  if (!ex.closed && res._headerSent !== true && !res.writableEnded) res.flushHeaders();
}

/** Writes the backend's status and the response headers to the client. */
function writeResponseHead(ex: Exchange, pres: IncomingMessage, headers: string[]): void {
  // HTTP/2 has no reason phrase (Node warns if one is given), and stricter header rules.
  if (ex.req.httpVersionMajor === 2) ex.res.writeHead(pres.statusCode ?? 502, forHttp2(headers));
  else ex.res.writeHead(pres.statusCode ?? 502, pres.statusMessage, headers);
}

/** Undoes a writeHead that threw: the headers it set, and the reason phrase (a later writeHead keeps one already set). */
function resetResponseHead(res: ServerResponse): void {
  for (const name of res.getHeaderNames()) res.removeHeader(name);
  // HTTP/2 has no reason phrase (setting one draws a Node warning).
  if (res.req.httpVersionMajor === 1) res.statusMessage = '';
}

/** A flat [name, value, ...] list without the named field (lower-case name). */
function withoutField(headers: string[], name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < headers.length; i += 2) if (headers[i]!.toLowerCase() !== name) out.push(headers[i]!, headers[i + 1]!);
  return out;
}

/**
 * Relays the backend's response body to the client: what `pres.pipe(res)` did, for less. pipe()
 * creates about ten closures per response and adds six listeners to the two streams with them
 * (three through once() wrappers, which allocate again), and takes them off at the end; this
 * adds two shared ones, and a third only on a client that falls behind, once per response.
 * Measured at a fixed rate, small GETs cost 1-13% less CPU per request (means of 3.6% and 7.9%
 * in two batches of six paired runs; docs/benchmarks.md#relaying-the-response-body).
 * Backpressure is pipe's: a write the client cannot take yet pauses the body until `drain`.
 * Nothing is written once the client connection closed; onClientClose cancels the upstream.
 */
function relay(ex: Exchange, pres: IncomingMessage, trailers: boolean): void {
  ex.body = pres;
  ex.bodyTrailers = trailers;
  pres.on('data', onBodyData);
  pres.on('end', onBodyEnd);
}

function onBodyData(this: WithExchange<IncomingMessage>, chunk: Buffer): void {
  const ex = this[kOwner] as Exchange;
  const res = ex.res;
  if (ex.closed || ex.body !== this || res.writableEnded) return;
  if (res.write(chunk)) return;
  this.pause();
  stall(ex);
}

function onClientDrain(this: WithExchange<ServerResponse>): void {
  const ex = this[kOwner];
  if (ex === undefined || ex.closed) return;
  ex.stalled = false;
  if (ex.storedBody !== undefined) return writeStored(ex);
  // The backend's idle timer may have run out during the stall (and been ignored): restart it,
  // or a backend that now stays silent would never time out. Refreshed in place, no new timer.
  (ex.upstream?.socket as (Socket & { _unrefTimer?: () => void }) | null | undefined)?._unrefTimer?.();
  ex.body?.resume();
}

/** Stored bodies up to this size are written in one call; larger ones a slice at a time. */
const STORED_SLICE = 64 * 1024;

/**
 * Writes a large stored body with backpressure, as a relayed one is: slices (views, no copies)
 * until the client falls behind, the rest on `drain`. So a slow client holds no second copy in
 * the socket's buffer, and its progress shows to proxy.sendTimeout slice by slice (one write of
 * the whole body would count as taken only once all of it was).
 */
function writeStored(ex: Exchange): void {
  const body = ex.storedBody as Buffer;
  const res = ex.res;
  while (ex.storedAt < body.length) {
    const end = Math.min(body.length, ex.storedAt + STORED_SLICE);
    const more = res.write(body.subarray(ex.storedAt, end));
    ex.storedAt = end;
    if (!more && end < body.length) return stall(ex);
  }
  ex.storedBody = undefined;
  res.end();
  if (!res.writableFinished) stall(ex);
}

function onBodyEnd(this: WithExchange<IncomingMessage>): void {
  const ex = this[kOwner] as Exchange;
  if (ex.closed || ex.body !== this) return;
  if (ex.bodyTrailers) forwardResponseTrailers(ex, this);
  else ex.res.end();
  // Ended but not all taken: the client still has sendTimeout to take the rest.
  if (!ex.res.writableFinished) stall(ex);
}

/**
 * The client has stopped taking the response for now: proxy.sendTimeout (nginx's send_timeout)
 * starts. The timer is made on the first stall and restarted in place on later ones; a drain
 * clears `stalled` (and resumes the body), and a timer that fires with the client caught up does
 * nothing. A response already ended gets no drain listener: Node emits none after the end.
 */
function stall(ex: Exchange): void {
  ex.stalled = true;
  ex.sendPending = unsent(ex.req, ex.res);
  if (ex.sendTimer === undefined) ex.sendTimer = setTimeout(onSendTimeout, ex.engine.sendTimeoutMs, ex);
  else ex.sendTimer.refresh();
  if (!ex.drainListening && !ex.res.writableEnded) {
    ex.drainListening = true;
    ex.res.on('drain', onClientDrain);
  }
}

type QueuedSocket = { writableLength?: number; _handle?: { writeQueueSize?: number } | null; _parent?: QueuedSocket | null };

/**
 * A measure of what the proxy holds for the client, which goes down as the client takes it.
 * HTTP/1.1, on the connection (as nginx counts): the response's own queue (a pipelined response
 * waits there), the socket's, and the bytes libuv has yet to hand to the kernel, which drop on
 * partial writes (for TLS, on the TCP socket beneath); a write's own count drops only when all
 * of it is written. HTTP/2, on the stream: its queue, which drops a write (a relayed chunk or a
 * 64 KiB slice, at most 64 KiB) at a time. Not the session's bytes sent: a client's pings, answered,
 * would keep a stalled stream alive.
 */
function unsent(req: IncomingMessage, res: ServerResponse): number {
  if (req.httpVersionMajor === 2) return res.writableLength;
  const conn = req.socket as QueuedSocket | null;
  return ((res as { outputSize?: number }).outputSize ?? 0) + (conn?.writableLength ?? 0) + (conn?._handle?.writeQueueSize ?? 0) + (conn?._parent?._handle?.writeQueueSize ?? 0);
}

/**
 * Whether a client took none of a response since `before` (an `unsent()` reading): not when the
 * measure went down (it took some, just not enough to drain), nor for a pipelined HTTP/1.1
 * response still queued behind an earlier one (no socket yet), which has its own timer. Either
 * way the caller gives it another sendTimeout.
 */
function heldUp(req: IncomingMessage, res: ServerResponse, before: number, now: number): boolean {
  return now >= before && (req.httpVersionMajor === 2 || res.socket != null);
}

function onSendTimeout(ex: Exchange): void {
  if (ex.closed || !ex.stalled || ex.res.writableFinished) return;
  const pending = unsent(ex.req, ex.res);
  if (!heldUp(ex.req, ex.res, ex.sendPending, pending)) {
    ex.sendPending = pending;
    ex.sendTimer?.refresh();
    return;
  }
  ex.error = 'client_timeout';
  ex.termination = CLIENT_SEND_TIMEOUT;
  ex.engine.onSendTimeout(ex);
  cut(ex.res, 'client send timeout');
}

function forwardResponseTrailers(ex: Exchange, pres: IncomingMessage): void {
  try {
    ex.res.addTrailers(trailersFor(pres.trailers, ex.req.httpVersionMajor === 2));
    ex.res.end();
  } catch {
    cut(ex.res, 'invalid trailers');
  }
}

/** Trailers without hop-by-hop fields (HTTP/2 also refuses them, from inside its own callback). */
function trailersFor(trailers: NodeJS.Dict<string>, h2: boolean): NodeJS.Dict<string> {
  const out: NodeJS.Dict<string> = {};
  for (const [name, value] of Object.entries(trailers)) {
    const n = name.toLowerCase();
    if (HOP_TRAILERS.has(n) || (h2 && n === 'http2-settings')) continue;
    out[name] = value;
  }
  return out;
}

const HOP_TRAILERS = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'transfer-encoding', 'upgrade', 'host']);

/**
 * Ends a response that cannot be completed. On HTTP/2 an error makes the reset INTERNAL_ERROR,
 * so the client sees a failure rather than a short but seemingly complete body.
 */
/** Names Node's HTTP/2 allows once only (its kSingleValueHeaders); a second value would throw. */
const H2_SINGLE = new Set(['age', 'authorization', 'content-encoding', 'content-language', 'content-length', 'content-location', 'content-md5', 'content-range', 'content-type', 'date', 'dnt', 'etag', 'expires', 'from', 'host', 'if-match', 'if-modified-since', 'if-none-match', 'if-range', 'if-unmodified-since', 'last-modified', 'location', 'max-forwards', 'proxy-authorization', 'range', 'referer', 'retry-after', 'tk', 'upgrade-insecure-requests', 'user-agent', 'x-content-type-options', 'access-control-allow-credentials', 'access-control-max-age', 'access-control-request-method']);

/** A response header list made acceptable to HTTP/2: single-value fields once, no http2-settings. */
function forHttp2(headers: string[]): string[] {
  const out: string[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < headers.length; i += 2) {
    const n = headers[i].toLowerCase();
    if (n === 'http2-settings') continue;
    if (H2_SINGLE.has(n)) {
      if (seen.has(n)) continue;
      seen.add(n);
    }
    out.push(headers[i], headers[i + 1]);
  }
  return out;
}

function onRequestData(this: WithExchange<IncomingMessage>, chunk: Buffer): void {
  const ex = this[kOwner];
  if (ex === undefined || ex.closed) return;
  ex.bodyBytes += chunk.length;
  const replay = ex.replay;
  if (replay !== undefined) {
    if (ex.bodyBytes <= ex.route.retry.bufferBody) replay.push(chunk);
    else ex.replay = undefined; // larger than retry.bufferBody: streamed only, never replayed
  }
  const max = ex.route.maxBodySize;
  if (max > 0 && ex.bodyBytes > max && ex.upstream !== undefined && this.headers['content-length'] === undefined) ex.engine.onBodyTooLarge(ex);
}

function onUpstreamResponse(this: WithExchange<ClientRequest>, pres: IncomingMessage): void {
  const ex = this[kOwner];
  if (ex !== undefined) ex.engine.onUpstreamResponse(ex, this, pres);
}

function onUpstreamError(this: WithExchange<ClientRequest>, err: Error): void {
  const ex = this[kOwner];
  if (ex === undefined || ex.upstream !== this) return; // a superseded attempt
  const forwarder = ex.backend?.forwarder as Forwarder | undefined;
  if (forwarder !== undefined) forwarder.emit('error', err, ex.req, ex.res, ex.backend?.url);
  else ex.engine.onUpstreamError(ex, err);
}

/**
 * Fired by the backend agent's socket timer on the request's socket: connect, then read (see
 * upstream-agent.ts). A silence the client caused is not the backend's: a response paused for a
 * client that takes none of it (proxy.sendTimeout governs; the drain restarts this timer), or,
 * before any answer, an upload the client stopped sending with nothing left queued for the
 * backend (408, as nginx's client_body_timeout; never retried, never a backend failure).
 */
function onUpstreamTimeout(this: WithExchange<ClientRequest>): void {
  const ex = this[kOwner];
  if (ex !== undefined && ex.stalled && ex.upstream === this) return;
  // The agent stamps connectMs once TCP is up and, for https, the TLS handshake is done: a
  // stalled handshake is a connect timeout (as in nginx and Envoy), which may go to another backend.
  const connecting = this.socket != null && (this.socket as ConnectTimed).connectMs === undefined;
  const inBody = (this as { res?: IncomingMessage | null }).res != null;
  const clientSilent = !connecting && !inBody && ex !== undefined && !ex.req.complete && this.writableLength === 0;
  const err: NodeJS.ErrnoException = new Error(
    connecting ? 'connect timeout (upstream.connectTimeout)'
    : inBody ? 'backend silent mid-body (upstream.timeout)'
    : clientSilent ? 'the client sent none of its request body for upstream.timeout'
    : 'no response within the idle timeout (upstream.timeout)',
  );
  err.code = connecting ? CONNECT_TIMEOUT : inBody ? BODY_IDLE_TIMEOUT : clientSilent ? CLIENT_BODY_TIMEOUT : READ_TIMEOUT;
  this.destroy(err);
}

/** The upstream request's listeners (shared by every request; see upstream-request.ts). */
const UPSTREAM_LISTENERS: UpstreamListeners = { response: onUpstreamResponse, error: onUpstreamError, timeout: onUpstreamTimeout };

/** upstream.headerTimeout: the response headers did not arrive in time. */
function onHeaderTimeout(ex: Exchange, up: ClientRequest): void {
  ex.headerTimer = undefined;
  if (ex.upstream !== up || up.destroyed) return;
  up.destroy(Object.assign(new Error('no response headers within upstream.headerTimeout'), { code: READ_TIMEOUT }));
}

/** upstream.totalTimeout: the whole exchange took too long. */
function onTotalTimeout(ex: Exchange): void {
  ex.totalTimer = undefined;
  if (ex.closed) return;
  const up = ex.upstream;
  if (up !== undefined && !up.destroyed) up.destroy(Object.assign(new Error('exchange exceeded upstream.totalTimeout'), { code: TOTAL_TIMEOUT }));
  else if (!ex.res.headersSent) {
    // Between two tries (a backoff): no upstream request to cut; answer now, and the pending try is skipped.
    ex.error = 'http_response_timeout';
    ex.termination = PROXY_ERRORS.http_response_timeout.termination;
    writeError(ex.res, 'http_response_timeout', ex.requestId, ex.engine.sendTimeoutMs);
  }
  else {
    ex.error = 'http_response_timeout';
    ex.termination = PROXY_ERRORS.http_response_timeout.termination;
    cut(ex.res, 'http_response_timeout');
  }
}

function onUpstreamBodyError(this: WithExchange<IncomingMessage>, err: Error): void {
  const ex = this[kOwner];
  if (ex === undefined || ex.closed) return;
  const up = ex.upstream;
  if (up !== undefined) onUpstreamError.call(up as WithExchange<ClientRequest>, err);
  else cut(ex.res, err.message);
}

type ServerStream = import('node:http2').ServerHttp2Stream;

/**
 * HTTP/2: a client that resets its stream before it has the whole response. Node treats an
 * RST_STREAM with NO_ERROR as a graceful close and never destroys a stream that still has writes
 * queued, so the response's 'close' never came: the exchange, its upstream request and its
 * backend connection stayed open for good. Two moments:
 * - mid-response: Node emits 'aborted' on the request, for any error code;
 * - after the response ended but before all of it was sent (the client's flow-control window
 *   was full): no 'aborted'; Node ends the stream's unread request side instead ('end' on the
 *   stream, which for a request whose body the proxy reads also comes at the body's end, with
 *   the stream still open).
 * Either way the stream is destroyed here, so the usual close path cancels the upstream request
 * (if any) and counts a 499.
 */
function watchReset(ex: Exchange): void {
  const req = ex.req as WithExchange<IncomingMessage> & { stream: Owned<ServerStream, Exchange> };
  req[kOwner] = ex;
  req.once('aborted', onStreamReset);
  req.stream[kOwner] = ex;
  req.stream.once('end', onStreamEnd);
}

function onStreamReset(this: WithExchange<IncomingMessage>): void {
  const ex = this[kOwner];
  if (ex !== undefined) resetByClient(ex);
}

function onStreamEnd(this: Owned<ServerStream, Exchange>): void {
  const ex = this[kOwner];
  if (ex !== undefined && this.closed && !this.destroyed && !this.writableFinished) resetByClient(ex);
}

function resetByClient(ex: Exchange): void {
  if (ex.closed) return;
  ex.aborted = true;
  ex.res.destroy();
}

function onClientClose(this: WithExchange<ServerResponse>): void {
  const ex = this[kOwner];
  if (ex !== undefined && !ex.closed) ex.engine.onClientClose(ex);
}

const kQueued = Symbol('proxymity.queued');
type QueueingSocket = Socket & { [kQueued]?: Set<Exchange> };

/**
 * HTTP/1.1 pipelining: a response queued behind an earlier one on its connection has no socket
 * yet, and Node emits no `close` for it if the connection dies first: the exchange would stay in
 * flight for good, holding its backend. One listener per such connection ends them all.
 */
function watchQueued(ex: Exchange): void {
  const socket = ex.req.socket as QueueingSocket;
  let queued = socket[kQueued];
  if (queued === undefined) {
    queued = socket[kQueued] = new Set();
    socket.once('close', onQueueingSocketClose);
  }
  queued.add(ex);
  ex.queued = true;
}

function onQueueingSocketClose(this: QueueingSocket): void {
  const queued = this[kQueued];
  this[kQueued] = undefined;
  for (const ex of queued ?? []) if (!ex.closed) ex.engine.onClientClose(ex);
}

/**
 * The response went out in full. On HTTP/2 a stream the client reset also counts as "ended", so
 * a reset seen while the response was being sent (`aborted`, see watchReset) or an error code
 * on the stream is checked too (else the upstream request would not be cancelled).
 */
function finished(ex: Exchange): boolean {
  if (ex.aborted || !ex.res.writableFinished) return false;
  return ex.req.httpVersionMajor !== 2 || (ex.res as unknown as { stream?: { aborted?: boolean; rstCode?: number } }).stream?.rstCode === 0 || (ex.res as unknown as { stream?: { rstCode?: number } }).stream?.rstCode === undefined;
}

function retryReason(code: ProxyErrorCode | 'status'): RetryReason {
  return code === 'status' ? 'status' : code === 'connection_terminated' ? 'reset' : code === 'http_response_timeout' ? 'timeout' : 'connect_failure';
}

function isBodyless(req: IncomingMessage): boolean {
  // HTTP/2 has no Transfer-Encoding: a body without Content-Length is announced by the stream.
  if (req.httpVersionMajor === 2) return (req as unknown as { stream: { endAfterHeaders: boolean } }).stream.endAfterHeaders;
  const h = req.headers;
  const cl = h['content-length'];
  return h['transfer-encoding'] === undefined && (cl === undefined || cl === '0');
}

const ERROR_HEAD_503 = ['content-type', 'text/plain; charset=utf-8', 'cache-control', 'no-store', 'retry-after', '1'];
const ERROR_HEAD = ['content-type', 'text/plain; charset=utf-8', 'cache-control', 'no-store'];

function writeError(res: ServerResponse, code: ProxyErrorCode, requestId: string, sendTimeoutMs: number, extraHeaders?: readonly string[]): void {
  if (res.headersSent || res.destroyed) {
    res.destroy();
    return;
  }
  const status = PROXY_ERRORS[code].status;
  const body = ERROR_BODIES[code];
  // An oversized or stalled upload is not read to its end: close the connection after the answer
  // (nginx does too); on HTTP/2, the stream (below).
  const unreadUpload = status === 413 || status === 408;
  if (unreadUpload) res.shouldKeepAlive = false;
  const head = status === 503 ? ERROR_HEAD_503 : ERROR_HEAD;
  const hsts = res.req !== undefined ? hstsOf(res.req) : undefined;
  try {
    res.writeHead(status, [
      ...head, 'content-length', String(Buffer.byteLength(body)), 'proxy-status', `proxymity; error=${code}`, 'x-request-id', requestId,
      ...(extraHeaders ?? []), ...(hsts !== undefined ? ['strict-transport-security', hsts] : []),
    ]);
  } catch {
    res.destroy();
    return;
  }
  if (unreadUpload && res.req?.httpVersionMajor === 2) res.end(body, () => stopUpload(res));
  else res.end(body);
  if (!res.writableFinished) watchUnsent(res, sendTimeoutMs);
}

/**
 * proxy.sendTimeout for an answer written in one go with no exchange to time it (the proxy's own
 * error answers): one that is not all taken (an HTTP/2 window of 0, a client that reads nothing)
 * is cut when the client took none of it for sendTimeout, as the relay's are (see onSendTimeout).
 */
function watchUnsent(res: ServerResponse, ms: number): void {
  const req = res.req as IncomingMessage;
  let pending = unsent(req, res);
  const timer = setInterval(() => {
    if (res.writableFinished || res.destroyed || req.socket?.destroyed === true) return clearInterval(timer);
    const now = unsent(req, res);
    if (!heldUp(req, res, pending, now)) {
      pending = now;
      return;
    }
    clearInterval(timer);
    cut(res, 'client send timeout');
  }, ms);
  res.once('close', () => clearInterval(timer));
}

/**
 * HTTP/2: the answer went out before the client finished its upload, and a client that stalled
 * may never end it: the stream, and the exchange with it, would stay open. RST_STREAM(NO_ERROR)
 * after a complete response asks the client to stop sending, without error (RFC 9113 §8.1).
 */
function stopUpload(res: ServerResponse): void {
  const stream = (res as unknown as { stream?: { closed: boolean; close(code: number): void } }).stream;
  if (stream !== undefined && !stream.closed) stream.close(0); // NGHTTP2_NO_ERROR
}
