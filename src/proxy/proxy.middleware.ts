/**
 * DATA PLANE entry. A DI-built Nest middleware, but mounted on the HTTP server's `request`
 * event ahead of Express (ProxyServerBinding): Express routing on this path measured at half
 * the throughput and seven times the p99, and in a `forRoutes('*')` middleware Express rewrites
 * `req.url` to "/". The proxy's own path (health) goes to HealthEndpoint, also without Express.
 *
 * Synchronous, never throws (the caller guards anyway), no async, no next() after forwarding.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Inject, Injectable, Logger, type NestMiddleware } from '@nestjs/common';
import { ResponseCacheService } from '../cache/response-cache.service.js';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import { buildBlockList } from '../load-balancer/client-address.js';
import { LoadBalancerService } from '../load-balancer/load-balancer.service.js';
import type { CacheTransaction } from '../cache/cache-transaction.js';
import type { Verdict } from '../rate-limit/rate-limit.service.js';
import { applyRequestOps, type Route } from '../routing/route.js';
import { RoutingService } from '../routing/routing.service.js';
import { prepareRequestHeaders, type HeaderPolicy } from './hop-headers.js';
import { kResponseHeaders, ProxyEngine, type WithResponseHeaders } from './proxy-engine.service.js';
import { answerInternalError } from './proxy-errors.js';

const SLASH = 47;
const QUESTION = 63;

@Injectable()
export class ProxyMiddleware implements NestMiddleware<IncomingMessage, ServerResponse> {
  private readonly logger = new Logger(ProxyMiddleware.name);
  private readonly ownPath: string;
  private readonly policy: HeaderPolicy;
  private readonly maxUrlLength: number;

  constructor(
    private readonly lb: LoadBalancerService,
    private readonly routing: RoutingService,
    private readonly engine: ProxyEngine,
    private readonly cache: ResponseCacheService,
    @Inject(PROXYMITY_CONFIG) cfg: ProxymityConfig,
  ) {
    this.ownPath = cfg.proxy.healthPath;
    this.policy = { trusted: buildBlockList(cfg.proxy.trustedProxies), forwarded: cfg.proxy.forwarded };
    this.maxUrlLength = cfg.proxy.maxUrlLength;
  }

  /** The health endpoint (HealthModule registers it; it answers on the raw request). */
  private ownEndpoint: ((req: IncomingMessage, res: ServerResponse) => void) | undefined = undefined;

  serveOwnPathWith(endpoint: (req: IncomingMessage, res: ServerResponse) => void): void {
    this.ownEndpoint = endpoint;
  }

  /** True for the proxy's own path (`proxy.healthPath`, with or without a query). */
  isOwnPath(url: string): boolean {
    const own = this.ownPath;
    return url.startsWith(own) && (url.length === own.length || url.charCodeAt(own.length) === QUESTION);
  }

  /** Answers a request `handle` left alone: the registered endpoint, else `fallback` (Express). */
  serveOwn(req: IncomingMessage, res: ServerResponse, fallback: (req: IncomingMessage, res: ServerResponse) => void): void {
    (this.ownEndpoint ?? fallback)(req, res);
  }

  /**
   * The header work every request gets first (hop-by-hop fields, X-Forwarded-*, Via, the
   * request id), which is returned. The proxy's own endpoints get it too: besides the request
   * id on their answers, their requests then have the shape of proxied ones (see
   * src/health/health-endpoint.service.ts).
   */
  prepare(req: IncomingMessage): string {
    return prepareRequestHeaders(req, (req.socket as { encrypted?: boolean }).encrypted === true ? 'https' : 'http', this.policy);
  }

  /** Nest's middleware contract; the server binding calls `handle` directly. */
  use(req: IncomingMessage, res: ServerResponse, next: () => void): void {
    if (!this.handle(req, res)) next();
  }

  /** Proxies the request and returns true, or returns false for the proxy's own endpoints. */
  handle(req: IncomingMessage, res: ServerResponse): boolean {
    const url = req.url as string;
    const requestId = this.prepare(req);
    // "HTTP/2.0" in an HTTP/1 request line (Node's parser takes it): not a real HTTP/2 stream.
    if (req.httpVersionMajor > 1 && (req as { stream?: unknown }).stream === undefined) {
      res.shouldKeepAlive = false;
      this.engine.reject(req, res, 'http_version_not_supported', requestId);
      return true;
    }
    if (req.httpVersionMajor === 1 && !oneValidHost(req)) {
      res.shouldKeepAlive = false;
      this.engine.reject(req, res, 'invalid_host', requestId);
      return true;
    }
    if (this.isOwnPath(url)) return false;
    if (url.length > this.maxUrlLength) {
      this.engine.reject(req, res, 'uri_too_long', requestId);
      return true;
    }
    if (url.charCodeAt(0) !== SLASH && !toOriginForm(req)) {
      this.engine.reject(req, res, 'http_request_error', requestId);
      return true;
    }
    // Matched on the request as received (after an absolute-form target became origin-form).
    const target = req.url as string;
    const route = this.routing.table.match(req);
    if (route === undefined) {
      this.engine.reject(req, res, 'destination_not_found', requestId);
      return true;
    }
    const maxBody = route.maxBodySize;
    if (maxBody > 0) {
      const cl = req.headers['content-length'];
      if (cl !== undefined && Number(cl) > maxBody) {
        this.engine.reject(req, res, 'request_too_large', requestId);
        return true;
      }
    }
    if (this.engine.draining) res.shouldKeepAlive = false;
    const limit = route.rateLimit;
    if (limit !== undefined) {
      const verdict = limit.check(req, route.name);
      // The Redis store answers later; the request body waits (nothing reads it until it is piped).
      if (verdict instanceof Promise) {
        verdict.then((v) => {
          try {
            this.afterVerdict(req, res, route, requestId, target, v);
          } catch (err) {
            // A bug, not an outcome: this one request fails, the process stays up.
            v.release?.();
            answerInternalError(req, res, err, this.logger);
          }
        });
      }
      else this.afterVerdict(req, res, route, requestId, target, verdict);
      return true;
    }
    this.dispatch(req, res, route, requestId, target);
    return true;
  }

  private afterVerdict(req: IncomingMessage, res: ServerResponse, route: Route, requestId: string, target: string, v: Verdict): void {
    if (res.destroyed || req.socket.destroyed) {
      v.release?.();
      return; // the client left while Redis was answering
    }
    if (v.action === 'limit') return this.engine.reject(req, res, 'too_many_requests', requestId, v.headers);
    if (v.action === 'unavailable') return this.engine.reject(req, res, 'rate_limit_unavailable', requestId);
    if (v.release !== undefined) res.once('close', v.release);
    if (v.headers !== undefined) (res as WithResponseHeaders)[kResponseHeaders] = v.headers;
    this.dispatch(req, res, route, requestId, target);
  }

  /**
   * Another request is filling this URL: go on when it is stored (or not), then look again. The
   * wait counts as in flight (shutdown waits for it), and a client that leaves meanwhile is
   * counted and logged as 499.
   */
  private waitForFill(req: IncomingMessage, res: ServerResponse, route: Route, requestId: string, target: string, tx: CacheTransaction): void {
    const startedAt = performance.now();
    const engine = this.engine;
    let waiting = true;
    engine.inFlight++;
    const onGone = (): void => {
      if (!waiting) return;
      waiting = false;
      engine.inFlight--;
      engine.recordClientGone(req, requestId, target, startedAt, tx);
    };
    res.once('close', onGone);
    this.cache.wait(tx, (failed) => {
      if (!waiting) return;
      waiting = false;
      engine.inFlight--;
      res.removeListener('close', onGone);
      try {
        this.dispatch(req, res, route, requestId, target, false, failed);
      } catch (err) {
        // A bug, not an outcome: this request fails, the others waiting go on, the process stays up.
        answerInternalError(req, res, err, this.logger);
      }
    });
  }

  /**
   * The cache (on routes that have it), backend choice, the route's request changes, and
   * forwarding. `collapse` is false once the request has waited for another request's fill.
   */
  private dispatch(req: IncomingMessage, res: ServerResponse, route: Route, requestId: string, target: string, collapse = true, afterFailure = false): void {
    let tx: CacheTransaction | undefined;
    if (route.cache) {
      tx = this.cache.lookup(req, route, target, collapse, afterFailure);
      const outcome = tx.outcome;
      if (outcome === 'hit') return this.engine.serveFromCache(req, res, requestId, route, target, tx);
      if (outcome === 'wait') return this.waitForFill(req, res, route, requestId, target, tx);
      if (outcome === 'only-if-cached') {
        this.cache.count(tx);
        return this.engine.reject(req, res, 'only_if_cached', requestId);
      }
    }
    // Unsafe requests invalidate what other routes stored for the URL.
    else if (req.method !== 'GET') tx = this.cache.forUnsafe(req, route, target);
    const backend = this.lb.pick(route.pool, req);
    if (backend === undefined) {
      if (tx !== undefined) {
        if (tx.onError() !== undefined) return this.engine.serveFromCache(req, res, requestId, route, target, tx);
        this.cache.count(tx);
      }
      return this.engine.reject(req, res, 'destination_unavailable', requestId);
    }
    if (route.rewrites) req.url = route.rewrite(target);
    if (route.requestHeaders !== undefined) applyRequestOps(req.headers, route.requestHeaders);
    const hostHeader = route.hostHeader;
    if (hostHeader !== 'client') req.headers.host = hostHeader === 'backend' ? backend.url.host : hostHeader;
    this.engine.forward(req, res, backend, requestId, route, target, tx);
  }
}


/**
 * Absolute-form targets (`GET http://host/path`, RFC 9112 §3.2.2) are rewritten to origin-form
 * for the backend; `OPTIONS *` passes as is. Returns false for a target that is neither.
 */
function toOriginForm(req: IncomingMessage): boolean {
  const url = req.url as string;
  if (url === '*' && req.method === 'OPTIONS') return true;
  try {
    const u = new URL(url);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return false;
    req.url = u.pathname + u.search;
    return true;
  } catch {
    return false;
  }
}

/**
 * RFC 9112 §3.2: a request with more than one Host field MUST get 400 (Node keeps the first and
 * drops the rest, so the proxy and a backend reading the raw request could disagree on the
 * host); RFC 9110 §7.2: Host is a host and an optional port, never userinfo (`user@host`).
 * Counts the names of length 4 in the raw list: no allocation.
 */
export function oneValidHost(req: IncomingMessage): boolean {
  const host = req.headers.host;
  if (host !== undefined && host.includes('@')) return false;
  const raw = req.rawHeaders;
  let seen = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length === 4 && (name === 'Host' || name === 'host' || name.toLowerCase() === 'host') && ++seen > 1) return false;
  }
  return true;
}
