/**
 * Routes compiled once per config (control plane) into matchers and per-route policies that
 * the data plane only reads: no regex, no string building and no allocation to match a
 * request, and a rewrite allocates only the new path.
 */
import type { IncomingMessage } from 'node:http';
import type { ProxymityConfig } from '../config/config.schema.js';
import type { Pool } from '../load-balancer/pool.js';
import type { RateLimitPolicy } from '../rate-limit/rate-limit.service.js';

type RouteConfig = ProxymityConfig['routes'][number];
type HeaderOpsConfig = NonNullable<RouteConfig['requestHeaders']>;

/** The retry policy of a route: the top-level `retry` with the route's overrides. */
export interface RetryPolicy {
  /** Most tries of one request, the first included. */
  readonly attempts: number;
  readonly methods: ReadonlySet<string>;
  readonly onConnectFailure: boolean;
  readonly onReset: boolean;
  readonly onTimeout: boolean;
  readonly on5xx: boolean;
  readonly onGatewayError: boolean;
  readonly bufferBody: number;
  readonly backoff: { readonly base: number; readonly max: number };
  readonly budget: { readonly percent: number; readonly minRetries: number };
}

/** Header changes, with lowercased names. */
export interface HeaderOps {
  readonly remove: readonly string[];
  readonly set: readonly (readonly [string, string])[];
  readonly add: readonly (readonly [string, string])[];
}

export class Route {
  readonly name: string;
  readonly pool: Pool;
  readonly retry: RetryPolicy;
  /** upstream.headerTimeout when set and shorter than the idle timeout, else 0. */
  readonly headerTimeoutMs: number;
  /** 0 = no limit. */
  readonly totalTimeoutMs: number;
  /** 0 = no limit. */
  readonly maxBodySize: number;
  /** "client", "backend", or a literal Host value. */
  readonly hostHeader: string;
  readonly requestHeaders: HeaderOps | undefined;
  readonly responseHeaders: HeaderOps | undefined;
  /** The route's rate limit (its own, or the top-level one), if any. */
  readonly rateLimit: RateLimitPolicy | undefined;
  /** Responses on this route go through the response cache (routes[].cache, else cache.enabled). */
  readonly cache: boolean;
  /** True when the route changes the path (strip or add a prefix). */
  readonly rewrites: boolean;
  private readonly stripPrefix: string | undefined;
  private readonly addPrefix: string | undefined;
  private readonly hostsExact: ReadonlySet<string> | undefined;
  /** ".example.com" for "*.example.com". */
  private readonly hostSuffixes: readonly string[];
  private readonly pathPrefix: string | undefined;
  private readonly pathExact: string | undefined;
  private readonly methods: ReadonlySet<string> | undefined;
  private readonly headers: readonly (readonly [string, string])[];

  constructor(cfg: RouteConfig, pool: Pool, global: ProxymityConfig, rateLimit: RateLimitPolicy | undefined = undefined) {
    this.name = cfg.name;
    this.pool = pool;
    this.rateLimit = rateLimit;
    this.cache = cfg.cache ?? global.cache.enabled;
    const m = cfg.match;
    const hosts = m.host === undefined ? [] : typeof m.host === 'string' ? [m.host] : m.host;
    const exact = hosts.filter((h) => !h.startsWith('*.')).map((h) => h.toLowerCase());
    this.hostsExact = exact.length > 0 ? new Set(exact) : undefined;
    this.hostSuffixes = hosts.filter((h) => h.startsWith('*.')).map((h) => h.slice(1).toLowerCase());
    this.pathPrefix = m.path;
    this.pathExact = m.pathExact;
    this.methods = m.methods ? new Set(m.methods) : undefined;
    this.headers = Object.entries(m.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v] as const);
    this.stripPrefix = cfg.stripPrefix;
    this.addPrefix = cfg.addPrefix === '/' ? undefined : cfg.addPrefix;
    this.rewrites = this.stripPrefix !== undefined || this.addPrefix !== undefined;
    this.hostHeader = cfg.hostHeader;
    this.requestHeaders = compileOps(cfg.requestHeaders);
    this.responseHeaders = compileOps(cfg.responseHeaders);
    const r = { ...global.retry, ...cfg.retry };
    const on = new Set(r.on);
    this.retry = {
      attempts: r.attempts ?? global.upstream.retries + 1,
      methods: new Set(r.methods),
      onConnectFailure: on.has('connect-failure'),
      onReset: on.has('reset'),
      onTimeout: on.has('timeout'),
      on5xx: on.has('5xx'),
      onGatewayError: on.has('gateway-error'),
      bufferBody: r.bufferBody,
      backoff: global.retry.backoff,
      budget: global.retry.budget,
    };
    const header = cfg.timeouts?.headerTimeout ?? global.upstream.headerTimeout;
    // Longer than the idle timeout, a header timeout could never fire first: skip its timer.
    this.headerTimeoutMs = header !== undefined && header < global.upstream.timeout ? header : 0;
    this.totalTimeoutMs = cfg.timeouts?.totalTimeout ?? global.upstream.totalTimeout;
    this.maxBodySize = cfg.maxBodySize ?? global.proxy.maxBodySize;
  }

  /** Whether the request matches; `path` is the request target without its query string. */
  matches(req: IncomingMessage, path: string): boolean {
    if (this.methods !== undefined && !this.methods.has(req.method as string)) return false;
    if (this.pathExact !== undefined && path !== this.pathExact) return false;
    if (this.pathPrefix !== undefined && !path.startsWith(this.pathPrefix)) return false;
    if (this.hostsExact !== undefined || this.hostSuffixes.length > 0) {
      const host = hostOf(req);
      if (!(this.hostsExact?.has(host) === true || this.hostSuffixes.some((s) => host.endsWith(s) && host.length > s.length))) return false;
    }
    for (const [name, value] of this.headers) {
      const v = req.headers[name];
      if (v === undefined || (value !== '*' && v !== value)) return false;
    }
    return true;
  }

  /** The path sent upstream for `url` (path and query), after stripPrefix and addPrefix. */
  rewrite(url: string): string {
    let out = url;
    const strip = this.stripPrefix;
    if (strip !== undefined && out.startsWith(strip)) {
      out = out.slice(strip.length);
      if (out.charCodeAt(0) !== 47 /* / */) out = `/${out}`;
    }
    if (this.addPrefix !== undefined) out = out === '/' ? this.addPrefix : this.addPrefix + out;
    return out;
  }
}

/** The request's host, lowercased, without a port ("" when there is none). */
export function hostOf(req: IncomingMessage): string {
  const h = req.headers.host;
  if (h === undefined) return '';
  const end = h.charCodeAt(0) === 91 /* [ */ ? h.indexOf(']') + 1 : h.indexOf(':');
  const host = end > 0 ? h.slice(0, end) : h;
  return host.toLowerCase();
}

function compileOps(ops: HeaderOpsConfig | undefined): HeaderOps | undefined {
  if (ops === undefined) return undefined;
  const lower = (r: Readonly<Record<string, string>>) => Object.entries(r).map(([k, v]) => [k.toLowerCase(), v] as const);
  const compiled = { remove: ops.remove.map((h) => h.toLowerCase()), set: lower(ops.set), add: lower(ops.add) };
  return compiled.remove.length + compiled.set.length + compiled.add.length === 0 ? undefined : compiled;
}

/** Applies header changes to a request's header object (upstream side). */
export function applyRequestOps(headers: IncomingMessage['headers'], ops: HeaderOps): void {
  for (const name of ops.remove) delete headers[name];
  for (const [name, value] of ops.set) headers[name] = value;
  for (const [name, value] of ops.add) {
    const old = headers[name];
    headers[name] = old === undefined ? value : `${Array.isArray(old) ? old.join(', ') : old}, ${value}`;
  }
}

/** Applies header changes to a raw response header list (name, value, ...); returns the new list. */
export function applyResponseOps(raw: string[], ops: HeaderOps): string[] {
  let out = raw;
  if (ops.remove.length > 0 || ops.set.length > 0) {
    const drop = new Set([...ops.remove, ...ops.set.map(([n]) => n)]);
    out = [];
    for (let i = 0; i < raw.length; i += 2) if (!drop.has(raw[i].toLowerCase())) out.push(raw[i], raw[i + 1]);
  }
  for (const [name, value] of ops.set) out.push(name, value);
  for (const [name, value] of ops.add) out.push(name, value);
  return out;
}
