/**
 * The response cache (RFC 9111, shared): a byte-bounded LRU of stored responses, request
 * collapsing, background refreshes for stale-while-revalidate, invalidation and purges.
 *
 * Data plane: `lookup` runs for every request on a route with the cache on, before a backend is
 * picked; a hit is answered without one. The control plane sets sizes (boot and reload) and
 * purges (admin API).
 */
import http, { type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import https from 'node:https';
import { Inject, Injectable, Logger, type OnApplicationShutdown } from '@nestjs/common';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import { LoadBalancerService } from '../load-balancer/load-balancer.service.js';
import { MetricsService } from '../metrics/metrics.service.js';
import { applyRequestOps, type Route } from '../routing/route.js';
import { requestDirectives } from './cache-control.js';
import { CacheStore } from './cache-store.js';
import { CacheTransaction, Pending, type CacheHost, type PolicyRequest } from './cache-transaction.js';
import { usability, usableOnError, worthKeeping } from './freshness.js';
import { type StoredResponse, varyValues } from './stored-response.js';

const PREFIX = 'Proxymity';
/** Methods that never change state (RFC 9110 §9.2.1): they leave stored responses alone. */
const SAFE = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);
/** How long a key whose response could not be stored skips collapsing (Varnish's hit-for-miss, 120 s there too). */
const UNCACHEABLE_MS = 120_000;
const MAX_UNCACHEABLE_KEYS = 10_000;
/** Invalidations remembered (per key) to refuse fills that started before them. */
const MAX_INVALIDATED_KEYS = 10_000;
/** Request fields a background refresh does not copy from the request that triggered it. */
const NOT_REFRESHED = ['if-none-match', 'if-modified-since', 'if-match', 'if-unmodified-since', 'range', 'if-range', 'cache-control', 'pragma', 'content-length', 'transfer-encoding'];

type CacheConfig = ProxymityConfig['cache'];

@Injectable()
export class ResponseCacheService implements CacheHost, OnApplicationShutdown {
  private readonly logger = new Logger('ResponseCache');
  readonly store: CacheStore;
  maxObjectSize: number;
  heuristic: number;
  graceS: number;
  private lockTimeoutMs: number;
  private collapse: boolean;
  private readonly pending = new Map<string, Pending>();
  /** Keys whose last response could not be stored, until when (ms): not collapsed meanwhile. */
  private readonly uncacheable = new Map<string, number>();
  private readonly metrics: MetricsService | undefined;
  private readonly refreshes = new Set<http.ClientRequest>();
  /** Bumped by every purge and invalidation; `invalidated` keeps, per key, the value after its last one. */
  epoch = 0;
  private purgedAt = 0;
  private readonly invalidated = new Map<string, number>();
  /** Bytes reserved by bodies being captured; at most maxSize (so the cache holds at most twice maxSize). */
  capturing = 0;

  constructor(
    private readonly lb: LoadBalancerService,
    metrics: MetricsService,
    @Inject(PROXYMITY_CONFIG) cfg: ProxymityConfig,
  ) {
    const c = cfg.cache;
    this.maxObjectSize = c.maxObjectSize;
    this.heuristic = c.heuristic;
    this.graceS = c.staleIfError / 1000;
    this.lockTimeoutMs = c.lockTimeout;
    this.collapse = c.collapse;
    this.metrics = metrics.enabled ? metrics : undefined;
    this.store = new CacheStore(c.maxSize, (reason, n) => this.metrics?.recordCacheRemoval(reason, n));
    metrics.readCacheFrom(this.store);
  }

  /** Applies the sizes and switches of a reloaded config (stored responses stay, up to the new size). */
  configure(c: CacheConfig): void {
    this.maxObjectSize = c.maxObjectSize;
    this.heuristic = c.heuristic;
    this.graceS = c.staleIfError / 1000;
    this.lockTimeoutMs = c.lockTimeout;
    this.collapse = c.collapse;
    this.store.resize(c.maxSize);
  }

  // ---- data plane ---------------------------------------------------------------------------

  /**
   * Decides how the cache takes part in `req` (a GET or HEAD, or any method on a route with the
   * cache on). May change the request's headers: the client's conditionals are taken off (the
   * cache answers them) and, for a revalidation, the stored response's validators put on.
   * `collapse` false: the request already waited for another fill and must not wait again;
   * `afterFailure`: that fill failed and a stale response stood in, which this one may take too.
   */
  lookup(req: IncomingMessage, route: Route, target: string, collapse = true, afterFailure = false): CacheTransaction {
    const method = req.method as string;
    const headers = req.headers;
    const host = (headers.host ?? '').toLowerCase();
    const key = host + target;
    if (method !== 'GET' && method !== 'HEAD') {
      const tx = new CacheTransaction(this, key, `${PREFIX}; fwd=method`, 'bypass');
      this.describe(tx, host, target, headers, route);
      tx.invalidate = !SAFE.has(method);
      return tx;
    }
    if (headers['if-match'] !== undefined || headers['if-unmodified-since'] !== undefined) {
      // Preconditions the origin must judge (a 412 is not ours to make): passed through, not stored.
      return new CacheTransaction(this, key, `${PREFIX}; fwd=request; detail=precondition`, 'bypass');
    }
    const d = requestDirectives(headers);
    const waited = !collapse;
    // The client's scheme, as the forwarding headers state it (set by the proxy, or kept from a trusted one).
    const scheme = str(headers['x-forwarded-proto']) ?? 'http';
    let fwd = 'uri-miss';
    let stored: StoredResponse | undefined;
    const variants = this.store.get(key);
    if (variants !== undefined) {
      // The most recent first (RFC 9111 §4.1); another scheme or route is another URI, not a variant.
      for (let i = variants.length - 1; i >= 0; i--) {
        const v = variants[i];
        if (v.scheme !== scheme || v.route !== route.name) continue;
        if (v.varyKey === varyValues(v.varyNames, headers)) {
          stored = v;
          break;
        }
        fwd = 'vary-miss';
      }
    }
    if (stored !== undefined) {
      const age = stored.age();
      const use = usability(stored, d, age);
      if (use === 'fresh' || use === 'stale' || use === 'stale-while-revalidate' || (afterFailure && usableOnError(stored, age, this.graceS))) {
        const ttl = Math.round(stored.lifetime - age);
        const tx = new CacheTransaction(this, key, waited ? `${PREFIX}; fwd=uri-miss; collapsed` : `${PREFIX}; hit; ttl=${ttl}`, waited ? 'collapsed' : use === 'fresh' ? 'hit' : 'stale');
        if (use === 'stale-while-revalidate') {
          tx.cacheStatus += '; detail=stale-while-revalidate';
          // Not on behalf of a client with credentials: a refresh is the cache's own request.
          if (headers.authorization === undefined) this.refresh(stored, req, route, target);
        } else if (use !== 'fresh' && use !== 'stale') {
          tx.result = 'stale';
          tx.cacheStatus += '; detail=stale-if-error';
        }
        tx.outcome = 'hit';
        tx.stored = stored;
        tx.ifNoneMatch = str(headers['if-none-match']);
        tx.ifModifiedSince = str(headers['if-modified-since']);
        return tx;
      }
      if (!worthKeeping(stored, age, this.graceS)) {
        this.store.remove(stored, 'expired');
        stored = undefined;
      } else fwd = use === 'revalidate-request' ? 'request' : 'stale';
    }
    const tx = new CacheTransaction(this, key, `${PREFIX}; fwd=${fwd}${waited ? '; collapsed=?0' : ''}`, 'miss');
    this.describe(tx, host, target, headers, route);
    if (d.onlyIfCached) {
      tx.outcome = 'only-if-cached';
      return tx;
    }
    // Forwarded as is and not stored: a HEAD has no body to keep, a Range answer is partial.
    if (method === 'HEAD' || headers.range !== undefined) return tx;
    const uncacheable = this.skipsCollapsing(key);
    if (collapse && this.collapse && !uncacheable) {
      const fill = this.pending.get(key);
      if (fill !== undefined && Date.now() - fill.startedAt < this.lockTimeoutMs * 2) {
        tx.outcome = 'wait';
        tx.waitOn = fill;
        return tx;
      }
      // (A fill older than that has lost its way; it is left to finish and not waited for.)
      if (fill === undefined) {
        tx.leader = new Pending(key);
        this.pending.set(key, tx.leader);
      }
    }
    // What the backend answers a request that asks not to store, or one for a URL whose last
    // answer could not be stored, goes to the client as is: its own conditionals stay on.
    if (d.noStore || (uncacheable && stored === undefined)) return tx;
    tx.snapshot = { ...headers };
    tx.stored = stored;
    tx.mayStore = true;
    // The cache answers the client's conditionals itself; the backend is asked for the full
    // response (or with our validators), so that what comes back can be stored.
    tx.ifNoneMatch = str(headers['if-none-match']);
    tx.ifModifiedSince = str(headers['if-modified-since']);
    delete headers['if-none-match'];
    delete headers['if-modified-since'];
    if (stored !== undefined && (stored.etag !== undefined || stored.lastModified !== undefined)) {
      tx.conditional = true;
      if (stored.etag !== undefined) headers['if-none-match'] = stored.etag;
      if (stored.lastModified !== undefined) headers['if-modified-since'] = stored.lastModified;
    }
    return tx;
  }

  /**
   * An unsafe request on a route without the cache: it still invalidates what other routes
   * stored for its URL (RFC 9111 §4.4). Undefined when there is nothing to do.
   */
  forUnsafe(req: IncomingMessage, route: Route, target: string): CacheTransaction | undefined {
    if (this.store.objects === 0 || SAFE.has(req.method as string)) return undefined;
    const host = (req.headers.host ?? '').toLowerCase();
    const tx = new CacheTransaction(this, host + target, '', 'bypass');
    this.describe(tx, host, target, req.headers, route);
    tx.invalidate = true;
    tx.quiet = true;
    return tx;
  }

  /**
   * Counts how the cache took part in a request the proxy answered itself (only-if-cached, no
   * backend). The engine counts the others when they end, with their final result.
   */
  count(tx: CacheTransaction): void {
    this.metrics?.recordCache(tx.result);
  }

  /**
   * Calls `resume` once the fill `tx` waits for is over (with whether it failed and a stale
   * response stood in), or after cache.lockTimeout.
   */
  wait(tx: CacheTransaction, resume: (failed: boolean) => void): void {
    const pending = tx.waitOn;
    if (pending === undefined) return resume(false);
    let called = false;
    const go = (failed: boolean): void => {
      if (called) return;
      called = true;
      clearTimeout(timer);
      resume(failed);
    };
    const timer = setTimeout(go, this.lockTimeoutMs, false);
    pending.waiters.push(go);
  }

  // ---- CacheHost: called by transactions ----------------------------------------------------

  commit(entry: StoredResponse, tx: CacheTransaction): void {
    // A purge or an invalidation since the request started: what it brings may be what was removed.
    if (this.purgedAt > tx.epoch || (this.invalidated.get(entry.key) ?? -1) > tx.epoch) return;
    this.uncacheable.delete(entry.key);
    this.store.put(entry);
  }

  release(pending: Pending): void {
    if (this.pending.get(pending.key) === pending) this.pending.delete(pending.key);
    for (const w of pending.waiters.splice(0)) w(pending.failed);
  }

  markUncacheable(key: string): void {
    const map = this.uncacheable;
    map.delete(key);
    map.set(key, Date.now() + UNCACHEABLE_MS);
    if (map.size > MAX_UNCACHEABLE_KEYS) map.delete(map.keys().next().value as string);
  }

  invalidate(tx: CacheTransaction, location: string | undefined, contentLocation: string | undefined): void {
    this.forget(tx.key);
    // RFC 9111 §4.4: Location and Content-Location too, when they are on the same host
    // (relative references resolve against the request's target).
    for (const ref of [location, contentLocation]) {
      if (ref === undefined) continue;
      const other = sameHostKey(ref, tx.host, tx.target);
      if (other !== undefined && other !== tx.key) this.forget(other);
    }
  }

  discard(entry: StoredResponse): void {
    this.store.remove(entry, 'invalidation');
  }

  reserveCapture(bytes: number): boolean {
    if (this.capturing + bytes > this.store.maxSize) return false;
    this.capturing += bytes;
    return true;
  }

  releaseCapture(bytes: number): void {
    this.capturing -= bytes;
  }

  // ---- control plane ------------------------------------------------------------------------

  /** Removes what is stored for one URL (every variant) or under a prefix; returns how many responses. */
  purge(target: { url?: string; prefix?: string; all?: boolean }): number {
    this.purgedAt = ++this.epoch;
    if (target.all === true) return this.store.deletePrefix('', 'purge');
    if (target.url !== undefined) return this.store.delete(keyOfUrl(target.url), 'purge');
    if (target.prefix !== undefined) return this.store.deletePrefix(keyOfUrl(target.prefix), 'purge');
    return 0;
  }

  /** Numbers for the admin API. */
  stats() {
    return { maxSize: this.store.maxSize, maxObjectSize: this.maxObjectSize, storedBytes: this.store.bytes, objects: this.store.objects, fillsInProgress: this.pending.size, capturingBytes: this.capturing };
  }

  onApplicationShutdown(): void {
    for (const up of this.refreshes) up.destroy();
  }

  private describe(tx: CacheTransaction, host: string, target: string, headers: IncomingHttpHeaders, route: Route): void {
    tx.host = host;
    tx.target = target;
    tx.scheme = str(headers['x-forwarded-proto']) ?? 'http';
    tx.route = route.name;
    tx.epoch = this.epoch;
    tx.request = policyRequest(target, headers);
  }

  /** Drops every response stored for `key`, and refuses fills of it that started before now. */
  private forget(key: string): void {
    this.store.delete(key, 'invalidation');
    const map = this.invalidated;
    map.delete(key);
    map.set(key, ++this.epoch);
    if (map.size > MAX_INVALIDATED_KEYS) {
      // Forgetting the oldest: refuse every older fill instead (as a purge does).
      map.delete(map.keys().next().value as string);
      this.purgedAt = this.epoch;
    }
  }

  private skipsCollapsing(key: string): boolean {
    const until = this.uncacheable.get(key);
    if (until === undefined) return false;
    if (until > Date.now()) return true;
    this.uncacheable.delete(key);
    return false;
  }

  /**
   * stale-while-revalidate: asks a backend for a fresh copy (conditionally) while the stale one
   * is served. One refresh per key at a time; requests that find the response too stale for the
   * window meanwhile wait for it like any fill.
   */
  private refresh(stored: StoredResponse, req: IncomingMessage, route: Route, target: string): void {
    const key = stored.key;
    if (this.pending.has(key)) return;
    const backend = this.lb.pick(route.pool, req);
    if (backend === undefined) return;
    const pending = new Pending(key);
    this.pending.set(key, pending);
    const headers: IncomingHttpHeaders = { ...req.headers };
    for (const name of NOT_REFRESHED) delete headers[name];
    if (stored.etag !== undefined) headers['if-none-match'] = stored.etag;
    if (stored.lastModified !== undefined) headers['if-modified-since'] = stored.lastModified;
    const tx = new CacheTransaction(this, key, '', 'miss');
    tx.host = (req.headers.host ?? '').toLowerCase();
    tx.target = target;
    tx.scheme = stored.scheme;
    tx.route = stored.route;
    tx.epoch = this.epoch;
    tx.request = policyRequest(target, headers);
    tx.snapshot = { ...req.headers };
    tx.stored = stored;
    tx.conditional = stored.etag !== undefined || stored.lastModified !== undefined;
    tx.mayStore = true;
    if (route.requestHeaders !== undefined) applyRequestOps(headers, route.requestHeaders);
    if (route.hostHeader !== 'client') headers.host = route.hostHeader === 'backend' ? backend.url.host : route.hostHeader;
    const path = route.rewrites ? route.rewrite(target) : target;
    backend.inFlight++;
    let finished = false;
    const finish = (result: 'updated' | 'not_modified' | 'error' | 'uncacheable', detail?: string): void => {
      if (finished) return;
      finished = true;
      backend.inFlight--;
      clearTimeout(timer);
      this.refreshes.delete(up);
      this.release(pending);
      this.metrics?.recordCacheRefresh(result);
      if (result === 'error') this.logger.warn(`background refresh of ${key} from "${backend.id}" failed: ${detail}; the stale response stays`);
    };
    // The same keys, in the same order, as sendUpstream's (one object shape for Node's client code).
    const options: http.RequestOptions = {
      hostname: backend.hostname, port: backend.port, method: 'GET',
      path: backend.basePath === '' ? path : backend.basePath + path, headers, agent: backend.agent,
    };
    let up: http.ClientRequest;
    try {
      up = backend.protocol === 'https:' ? https.request(options) : http.request(options);
    } catch (err) {
      backend.inFlight--;
      this.release(pending);
      this.logger.warn(`background refresh of ${key}: ${(err as Error).message}`);
      return;
    }
    this.refreshes.add(up);
    // Headers within upstream.headerTimeout (or the idle timeout); the agent's socket timeouts cover connect and idle.
    const timer = setTimeout(() => up.destroy(new Error('no response headers in time')), route.headerTimeoutMs > 0 ? route.headerTimeoutMs : 60_000);
    up.on('timeout', () => up.destroy(new Error('backend silent (upstream timeout)')));
    up.on('error', (err) => finish('error', err.message));
    up.on('response', (pres) => {
      clearTimeout(timer);
      pres.on('error', (err) => finish('error', err.message));
      const verdict = tx.onResponse(pres);
      if (verdict === stored && tx.result === 'revalidated') {
        pres.resume();
        finish('not_modified');
        return;
      }
      if (verdict !== undefined) {
        // A 5xx (the stale response stays), or a 304 that contradicts it (dropped).
        pres.resume();
        finish('error', verdict === 'refetch' ? 'the 304 does not match the stored validators' : `HTTP ${pres.statusCode}`);
        return;
      }
      if (!tx.storing) {
        // No longer storable: the stale copy is dropped only when the response says so.
        if (/detail=(not-storable|set-cookie|vary-star|no-freshness)/.test(tx.cacheStatus)) this.store.remove(stored, 'invalidation');
        pres.resume();
        finish('uncacheable');
        return;
      }
      tx.capture(pres);
      pres.once('end', () => finish(tx.committed ? 'updated' : 'uncacheable'));
      pres.once('close', () => finish('error', 'cut mid-body'));
      pres.resume();
    });
    up.end();
  }
}

/** The request as http-cache-semantics needs it: the fields it reads, and Authorization only as present or not. */
function policyRequest(target: string, headers: IncomingHttpHeaders): PolicyRequest {
  const h: Record<string, string> = { host: headers.host ?? '' };
  if (headers['cache-control'] !== undefined) h['cache-control'] = headers['cache-control'];
  if (headers.pragma !== undefined) h.pragma = String(headers.pragma);
  if (headers.authorization !== undefined) h.authorization = 'present';
  return { method: 'GET', url: target, headers: h };
}

/** The cache key of an absolute URL: host and path with query. */
export function keyOfUrl(url: string): string {
  const u = new URL(url);
  return u.host.toLowerCase() + u.pathname + u.search;
}

/** The cache key of a Location value (absolute, or relative to the request's target) when it points at `host`, else undefined. */
function sameHostKey(ref: string, host: string, target: string): string | undefined {
  try {
    const base = new URL(`http://${host}${target.startsWith('/') ? target : '/'}`);
    const u = new URL(ref, base);
    return u.host.toLowerCase() === base.host ? host + u.pathname + u.search : undefined;
  } catch {
    return undefined;
  }
}

function str(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(', ') : v;
}
