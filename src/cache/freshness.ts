/**
 * Whether a stored response may answer a request (RFC 9111 §4.2-§4.3, RFC 5861), from its
 * freshness lifetime and age (computed by http-cache-semantics) and the request's directives.
 *
 * Evaluated here rather than with http-cache-semantics' `evaluateRequest`, which revalidates a
 * `must-revalidate` response even while it is fresh (§5.2.2.2 only forbids serving it stale)
 * and knows no `only-if-cached` or `stale-if-error` on the request path.
 */
import type { RequestDirectives } from './cache-control.js';
import type { StoredResponse } from './stored-response.js';

/**
 * - `fresh`: serve it.
 * - `stale`: serve it although stale (the request's max-stale allows it).
 * - `stale-while-revalidate`: serve it, and refresh it in the background.
 * - `revalidate-stale` / `revalidate-request`: it must be validated first, because it is stale or
 *   because the request says so (no-cache, max-age, min-fresh).
 */
export type Usability = 'fresh' | 'stale' | 'stale-while-revalidate' | 'revalidate-stale' | 'revalidate-request';

export function usability(stored: StoredResponse, d: RequestDirectives, age: number): Usability {
  const lifetime = stored.lifetime;
  if (d.noCache) return 'revalidate-request';
  // max-age=0 (a browser reload) asks for validation even of a response received this very millisecond.
  if (d.maxAge >= 0 && (age > d.maxAge || d.maxAge === 0)) return 'revalidate-request';
  if (d.minFresh >= 0 && lifetime - age < d.minFresh) return 'revalidate-request';
  if (lifetime > age) return 'fresh';
  // Stale from here on.
  if (stored.directives.mustRevalidate) return 'revalidate-stale';
  if (d.maxStale >= 0 && age - lifetime <= d.maxStale) return 'stale';
  if (age - lifetime < stored.directives.staleWhileRevalidate) return 'stale-while-revalidate';
  return 'revalidate-stale';
}

/**
 * Whether a stale response may stand in when the backend fails: within its stale-if-error
 * (RFC 5861 §4), or the cache's own `graceS` (cache.staleIfError), never when it must be revalidated.
 */
export function usableOnError(stored: StoredResponse, age: number, graceS = 0): boolean {
  if (stored.directives.mustRevalidate) return false;
  return age - stored.lifetime < Math.max(stored.directives.staleIfError, graceS);
}

/**
 * Whether a stored response can still be of any use: fresh, within its stale windows, or
 * stale but revalidatable (it has a validator). Others are dropped when found.
 */
export function worthKeeping(stored: StoredResponse, age: number, graceS = 0): boolean {
  if (stored.etag !== undefined || stored.lastModified !== undefined) return true;
  const over = age - stored.lifetime;
  return over < 0 || over < stored.directives.staleWhileRevalidate || over < Math.max(stored.directives.staleIfError, graceS);
}
