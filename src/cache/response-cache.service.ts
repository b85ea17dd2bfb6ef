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
import type CachePolicy from 'http-cache-semantics';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import { LoadBalancerService } from '../load-balancer/load-balancer.service.js';
import { MetricsService } from '../metrics/metrics.service.js';
import { applyRequestOps, type Route } from '../routing/route.js';
import { requestDirectives } from './cache-control.js';
import { CacheStore } from './cache-store.js';
import { CacheTransaction, Pending, type CacheHost } from './cache-transaction.js';
import { usability, worthKeeping } from './freshness.js';
import { type StoredResponse, varyValues } from './stored-response.js';

const PREFIX = 'Proxymity';
/** Methods that never change state (RFC 9110 §9.2.1): they leave stored responses alone. */
const SAFE = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE']);
/** How long a key whose response could not be stored skips collapsing (Varnish's hit-for-miss, 120 s there too). */
const UNCACHEABLE_MS = 120_000;
const MAX_UNCACHEABLE_KEYS = 10_000;

type CacheConfig = ProxymityConfig['cache'];

@Injectable()
export class ResponseCacheService implements CacheHost, OnApplicationShutdown {
  private readonly logger = new Logger('ResponseCache');
  readonly store: CacheStore;
  maxObjectSize: number;
  heuristic: number;
  private lockTimeoutMs: number;
  private collapse: boolean;
  private readonly pending = new Map<string, Pending>();
  /** Keys whose last response could not be stored, until when (ms): not collapsed meanwhile. */
  private readonly uncacheable = new Map<string, number>();
  private readonly metrics: MetricsService | undefined;
  private readonly refreshes = new Set<http.ClientRequest>();

  constructor(
    private readonly lb: LoadBalancerService,
    metrics: MetricsService,
    @Inject(PROXYMITY_CONFIG) cfg: ProxymityConfig,
  ) {
    const c = cfg.cache;
    this.maxObjectSize = c.maxObjectSize;
    this.heuristic = c.heuristic;
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
    this.lockTimeoutMs = c.lockTimeout;
    this.collapse = c.collapse;
    this.store.resize(c.maxSize);
  }

  // ---- data plane ---------------------------------------------------------------------------

  /**
   * Decides how the cache takes part in `req` (on a route with the cache on). May change the
   * request's headers: the client's conditionals are taken off (the cache answers them) and, for
   * a revalidation, the stored response's validators put on.
   * `collapse` false: the request already waited for another fill and must not wait again.
   */
  lookup(req: IncomingMessage, route: Route, target: string, collapse: boolean): CacheTransaction {
    const method = req.method as string;
    const host = (req.headers.host ?? '').toLowerCase();
    const key = host + target;
    if (method !== 'GET' && method !== 'HEAD') {
      const tx = new CacheTransaction(this, key, `${PREFIX}; fwd=method`, 'bypass');
      tx.invalidate = !SAFE.has(method);
      tx.host = host;
      return tx;
    }
    const headers = req.headers;
    if (headers['if-match'] !== undefined || headers['if-unmodified-since'] !== undefined) {
      // Preconditions the origin must judge (a 412 is not ours to make): passed through, not stored.
      const tx = new CacheTransaction(this, key, `${PREFIX}; fwd=request; detail=precondition`, 'bypass');
      return tx;
    }
    const d = requestDirectives(headers);
    const waited = !collapse;
    // The client's scheme, as the forwarding headers state it (set by the proxy, or kept from a trusted one).
    const scheme = str(headers['x-forwarded-proto']) ?? 'http';
    let fwd = 'uri-miss';
    let stored: StoredResponse | undefined;
    const variants = this.store.get(key);
    if (variants !== undefined) {
      for (const v of variants) {
        if (v.scheme !== scheme) continue; // the URI differs (scheme): still a uri-miss
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
      if (use === 'fresh' || use === 'stale' || use === 'stale-while-revalidate') {
        const ttl = Math.round(stored.lifetime - age);
        const tx = new CacheTransaction(this, key, waited ? `${PREFIX}; fwd=uri-miss; collapsed` : `${PREFIX}; hit; ttl=${ttl}`, waited ? 'collapsed' : use === 'fresh' ? 'hit' : 'stale');
        if (use === 'stale-while-revalidate') {
          tx.cacheStatus += '; detail=stale-while-revalidate';
          this.refresh(stored, req, route, target);
        }
        tx.outcome = 'hit';
        tx.stored = stored;
        tx.ifNoneMatch = str(headers['if-none-match']);
        tx.ifModifiedSince = str(headers['if-modified-since']);
        return tx;
      }
      if (!worthKeeping(stored, age)) {
        this.store.remove(stored, 'expired');
        stored = undefined;
      } else fwd = use === 'revalidate-request' ? 'request' : 'stale';
    }
    const tx = new CacheTransaction(this, key, `${PREFIX}; fwd=${fwd}${waited ? '; collapsed=?0' : ''}`, 'miss');
    tx.host = host;
    tx.scheme = scheme;
    if (d.onlyIfCached) {
      tx.outcome = 'only-if-cached';
      return tx;
    }
    // Forwarded as is and not stored: a HEAD has no body to keep, a Range answer is partial.
    if (method === 'HEAD' || headers.range !== undefined) return tx;
    if (collapse && this.collapse && !this.skipsCollapsing(key)) {
      const fill = this.pending.get(key);
      if (fill !== undefined) {
        tx.outcome = 'wait';
        tx.waitOn = fill;
        return tx;
      }
      tx.leader = new Pending(key);
      this.pending.set(key, tx.leader);
    }
    tx.request = { method, url: target, headers: { ...headers } };
    tx.stored = stored;
    tx.mayStore = !d.noStore;
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
   * Counts how the cache took part in a request the proxy answered itself (only-if-cached, no
   * backend). The engine counts the others when they end, with their final result.
   */
  count(tx: CacheTransaction): void {
    this.metrics?.recordCache(tx.result);
  }

  /** Calls `resume` once the fill `tx` waits for is over, or after cache.lockTimeout. */
  wait(tx: CacheTransaction, resume: () => void): void {
    const pending = tx.waitOn;
    if (pending === undefined) return resume();
    let called = false;
    const go = (): void => {
      if (called) return;
      called = true;
      clearTimeout(timer);
      resume();
    };
    const timer = setTimeout(go, this.lockTimeoutMs);
    pending.waiters.push(go);
  }

  // ---- CacheHost: called by transactions ----------------------------------------------------

  commit(entry: StoredResponse): void {
    this.uncacheable.delete(entry.key);
    this.store.put(entry);
  }

  release(pending: Pending): void {
    if (this.pending.get(pending.key) === pending) this.pending.delete(pending.key);
    for (const w of pending.waiters.splice(0)) w();
  }

  markUncacheable(key: string): void {
    const map = this.uncacheable;
    map.delete(key);
    map.set(key, Date.now() + UNCACHEABLE_MS);
    if (map.size > MAX_UNCACHEABLE_KEYS) map.delete(map.keys().next().value as string);
  }

  invalidate(key: string, host: string, location: string | undefined, contentLocation: string | undefined): void {
    this.store.delete(key, 'invalidation');
    // RFC 9111 §4.4: Location and Content-Location too, when they are on the same host.
    for (const ref of [location, contentLocation]) {
      if (ref === undefined) continue;
      const other = sameHostKey(ref, host);
      if (other !== undefined && other !== key) this.store.delete(other, 'invalidation');
    }
  }

  discard(entry: StoredResponse): void {
    this.store.remove(entry, 'invalidation');
  }

  // ---- control plane ------------------------------------------------------------------------

  /** Removes what is stored for one URL (every variant) or under a prefix; returns how many responses. */
  purge(target: { url?: string; prefix?: string; all?: boolean }): number {
    if (target.all === true) return this.store.deletePrefix('', 'purge');
    if (target.url !== undefined) return this.store.delete(keyOfUrl(target.url), 'purge');
    if (target.prefix !== undefined) return this.store.deletePrefix(keyOfUrl(target.prefix), 'purge');
    return 0;
  }

  /** Numbers for the admin API. */
  stats() {
    return { maxSize: this.store.maxSize, maxObjectSize: this.maxObjectSize, storedBytes: this.store.bytes, objects: this.store.objects, fillsInProgress: this.pending.size };
  }

  onApplicationShutdown(): void {
    for (const up of this.refreshes) up.destroy();
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
    delete headers['if-none-match'];
    delete headers['if-modified-since'];
    delete headers.range;
    delete headers['if-range'];
    if (stored.etag !== undefined) headers['if-none-match'] = stored.etag;
    if (stored.lastModified !== undefined) headers['if-modified-since'] = stored.lastModified;
    const request = { method: 'GET', url: target, headers: { ...req.headers } };
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
    const options: http.RequestOptions = {
      protocol: backend.protocol, hostname: backend.hostname, port: backend.port, method: 'GET',
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
    const timer = setTimeout(() => up.destroy(new Error('no response within upstream.timeout')), route.headerTimeoutMs > 0 ? route.headerTimeoutMs : 60_000);
    up.on('error', (err) => finish('error', err.message));
    up.on('response', (pres) => {
      pres.on('error', (err) => finish('error', err.message));
      const status = pres.statusCode ?? 0;
      if (status === 304) {
        pres.resume();
        const { policy, matches } = stored.policy.revalidatedPolicy(request as never, { status, headers: pres.headers as Record<string, string> });
        if (matches) {
          stored.revalidated(policy as CachePolicy, pres.rawHeaders);
          this.store.put(stored);
          finish('not_modified');
        } else finish('error', 'the 304 does not match the stored validators');
        return;
      }
      if (status >= 500) {
        pres.resume();
        finish('error', `HTTP ${status}`);
        return;
      }
      // A full response: stored like any fill (or, if it may no longer be stored, the old one goes).
      const tx = new CacheTransaction(this, key, '', 'miss');
      tx.scheme = stored.scheme;
      tx.request = request;
      tx.mayStore = true;
      tx.onResponse(pres);
      if (!tx.storing) {
        this.store.remove(stored, 'invalidation');
        pres.resume();
        finish('uncacheable');
        return;
      }
      tx.capture(pres);
      pres.once('end', () => finish('updated'));
      pres.resume();
    });
    up.end();
  }
}

/** The cache key of an absolute URL: host and path with query. */
export function keyOfUrl(url: string): string {
  const u = new URL(url);
  return u.host.toLowerCase() + u.pathname + u.search;
}

/** The cache key of a Location value (absolute or relative) when it points at `host`, else undefined. */
function sameHostKey(ref: string, host: string): string | undefined {
  try {
    const u = new URL(ref, `http://${host}/`);
    return u.host.toLowerCase() === host ? host + u.pathname + u.search : undefined;
  } catch {
    return undefined;
  }
}

function str(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(', ') : v;
}
