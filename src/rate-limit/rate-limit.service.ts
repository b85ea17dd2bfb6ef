/**
 * Rate limiting (GCRA) per key, in memory or in Redis, plus an in-flight cap per key. Policies
 * are compiled once per route when the config is loaded; the data plane calls `check`, which
 * answers at once for the memory store and with a Promise for Redis (one round trip).
 *
 * Redis: one ioredis client per URL, no offline queue (a decision never waits for a
 * reconnect) and a per-command timeout; ioredis reconnects by itself. While it cannot answer,
 * `onStoreError` decides, and the outage is logged and counted once.
 */
import type { IncomingMessage } from 'node:http';
import type { BlockList } from 'node:net';
import { Injectable, Logger, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import { createRequire } from 'node:module';
import type { Redis } from 'ioredis';
import type { ProxymityConfig } from '../config/config.schema.js';
import { buildBlockList, clientAddress, normalizeAddress } from '../load-balancer/client-address.js';
import { cookieValue } from '../load-balancer/strategies/hash-key.js';
import { MetricsService } from '../metrics/metrics.service.js';
import { GCRA_LUA, MemoryGcraStore, type GcraParams, type GcraResult } from './gcra.js';

type RateLimitConfig = NonNullable<ProxymityConfig['rateLimit']>;

/** What the proxy does with a request. */
export interface Verdict {
  /** allow: forward; limit: 429; unavailable: 503 (store down, onStoreError deny). */
  readonly action: 'allow' | 'limit' | 'unavailable';
  /** Headers for the response: always on a 429, on allowed ones when `headers` is on. */
  readonly headers: string[] | undefined;
  /** When limited: seconds to wait (Retry-After). */
  readonly retryAfterS: number;
  /** Called when the request is done (releases its in-flight slot), if it holds one. */
  readonly release: (() => void) | undefined;
}

type KeyPart = (req: IncomingMessage, route: string) => string | undefined;

const ALLOW: Verdict = { action: 'allow', headers: undefined, retryAfterS: 0, release: undefined };

/** One compiled policy (global or a route's). */
export class RateLimitPolicy {
  readonly params: GcraParams;
  readonly burst: number;
  private readonly parts: KeyPart[];
  private readonly allowList: BlockList | undefined;
  private readonly policyHeader: string;
  /** The scope as a header token (route names may hold any character). */
  private readonly label: string;
  /** In-flight requests per key (maxConcurrent); shared by the policies of one scope across reloads. */
  private readonly inFlight: Map<string, number>;

  constructor(
    readonly cfg: RateLimitConfig,
    /** Bucket namespace: "global" or the route's name. */
    readonly scope: string,
    private readonly service: RateLimitService,
  ) {
    this.burst = cfg.burst ?? cfg.rate;
    const interval = cfg.per / cfg.rate;
    this.params = { intervalMs: interval, capacityMs: interval * this.burst };
    const keys = typeof cfg.key === 'string' ? [cfg.key] : cfg.key;
    this.parts = keys.map((k) => keyPart(k, cfg.ipv6Prefix));
    this.allowList = buildBlockList(cfg.allow);
    this.inFlight = service.inFlightOf(scope);
    this.label = scope.replace(/[^A-Za-z0-9._~-]/g, '_');
    // draft-ietf-httpapi-ratelimit-headers: quota q requests per window w seconds.
    this.policyHeader = `"${this.label}";q=${this.burst};w=${Math.max(1, Math.round((this.burst * interval) / 1000))}`;
  }

  /** The verdict for a request (a Promise only with the Redis store). */
  check(req: IncomingMessage, route: string): Verdict | Promise<Verdict> {
    const cfg = this.cfg;
    if (this.allowList !== undefined) {
      const ip = clientAddress(req) ?? normalizeAddress(req.socket.remoteAddress) ?? '';
      if (ip !== '' && this.allowList.check(ip, ip.includes(':') ? 'ipv6' : 'ipv4')) return this.service.count(route, 'allow_listed', ALLOW);
    }
    let key = this.scope;
    for (const part of this.parts) {
      const v = part(req, route);
      if (v === undefined) {
        if (cfg.missingKey === 'allow') return this.service.count(route, 'no_key_allowed', ALLOW);
        if (cfg.missingKey === 'deny') return this.service.count(route, 'limited', this.limited({ allowed: false, remaining: 0, retryAfterMs: cfg.per, resetMs: cfg.per }));
        key += '|(none)';
      } else key += `|${v}`;
    }
    // The in-flight slot is taken before the (possibly asynchronous) decision, so concurrent
    // requests of one key cannot all pass the check while Redis answers; a refusal gives it back.
    let release: (() => void) | undefined;
    if (cfg.maxConcurrent !== undefined) {
      if ((this.inFlight.get(key) ?? 0) >= cfg.maxConcurrent && !cfg.dryRun) {
        return this.service.count(route, 'concurrency_limited', this.limited({ allowed: false, remaining: 0, retryAfterMs: 1000, resetMs: 1000 }));
      }
      release = this.take(key);
    }
    const decided = this.service.decide(this, key);
    if (decided instanceof Promise) return decided.then((r) => this.verdict(r, key, route, release));
    return this.verdict(decided, key, route, release);
  }

  private verdict(r: GcraResult | 'error', key: string, route: string, release: (() => void) | undefined): Verdict {
    if (r === 'error') {
      if (this.cfg.onStoreError === 'allow') return this.service.count(route, 'store_error_allowed', this.admit(release, undefined));
      release?.();
      return this.service.count(route, 'store_error_denied', { action: 'unavailable', headers: undefined, retryAfterS: 1, release: undefined });
    }
    if (!r.allowed) {
      if (this.cfg.dryRun) {
        this.service.dryRun(this.scope, key);
        return this.service.count(route, 'dry_run', this.admit(release, undefined));
      }
      release?.();
      return this.service.count(route, 'limited', this.limited(r));
    }
    return this.service.count(route, 'allowed', this.admit(release, this.cfg.headers ? this.quotaHeaders(r) : undefined));
  }

  private admit(release: (() => void) | undefined, headers: string[] | undefined): Verdict {
    if (release === undefined && headers === undefined) return ALLOW;
    return { action: 'allow', headers, retryAfterS: 0, release };
  }

  /** Takes an in-flight slot of `key`; the returned function gives it back (once). */
  private take(key: string): () => void {
    const m = this.inFlight;
    m.set(key, (m.get(key) ?? 0) + 1);
    let given = false;
    return () => {
      if (given) return;
      given = true;
      const n = (m.get(key) ?? 1) - 1;
      if (n <= 0) m.delete(key);
      else m.set(key, n);
    };
  }

  private limited(r: GcraResult): Verdict {
    const retryAfterS = Math.max(1, Math.ceil(r.retryAfterMs / 1000));
    return { action: 'limit', headers: [...this.quotaHeaders(r), 'retry-after', String(retryAfterS)], retryAfterS, release: undefined };
  }

  private quotaHeaders(r: GcraResult): string[] {
    return ['ratelimit-policy', this.policyHeader, 'ratelimit', `"${this.label}";r=${r.remaining};t=${Math.ceil(r.resetMs / 1000)}`];
  }
}

@Injectable()
export class RateLimitService implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger('RateLimit');
  private memory: MemoryGcraStore | undefined;
  /** Redis clients by URL and command timeout (each client has one timeout). */
  private readonly redis = new Map<string, RedisEntry>();
  /** While `rebuild` compiles: the clients the new policies use. */
  private compiling: Set<string> | undefined = undefined;
  private readonly lastDryRunLog = new Map<string, number>();
  private readonly inFlightByScope = new Map<string, Map<string, number>>();

  constructor(private readonly metrics: MetricsService) {}

  /** Compiles a policy; `scope` names its buckets ("global", or a route's name). */
  policy(cfg: RateLimitConfig, scope: string): RateLimitPolicy {
    if (cfg.store === 'memory') this.memory ??= new MemoryGcraStore(cfg.maxKeys);
    else if (cfg.redis !== undefined) {
      this.client(cfg.redis.url, cfg.redis.timeout);
      this.compiling?.add(clientKey(cfg.redis.url, cfg.redis.timeout));
    }
    return new RateLimitPolicy(cfg, scope, this);
  }

  /**
   * Runs `compile` (which builds every policy of a new config), then disconnects the Redis
   * clients none of those policies uses: a URL or timeout removed on reload. If `compile` throws,
   * the running policies keep their clients.
   */
  rebuild<T>(compile: () => T): T {
    const used = new Set<string>();
    this.compiling = used;
    let out: T;
    try {
      out = compile();
    } finally {
      this.compiling = undefined;
    }
    for (const [key, entry] of this.redis) {
      if (used.has(key)) continue;
      this.redis.delete(key);
      entry.client.disconnect();
      this.logger.log(`Redis ${entry.url} (timeout ${entry.timeoutMs}ms) is no longer used by any rate limit: disconnected`);
    }
    return out;
  }

  /** @internal the in-flight counts of a scope (kept across reloads). */
  inFlightOf(scope: string): Map<string, number> {
    let m = this.inFlightByScope.get(scope);
    if (m === undefined) {
      m = new Map();
      this.inFlightByScope.set(scope, m);
    }
    return m;
  }

  /** @internal one GCRA decision in the policy's store. */
  decide(policy: RateLimitPolicy, key: string): GcraResult | Promise<GcraResult | 'error'> {
    const cfg = policy.cfg;
    if (cfg.store === 'memory' || cfg.redis === undefined) return (this.memory as MemoryGcraStore).decide(key, policy.params);
    const entry = this.client(cfg.redis.url, cfg.redis.timeout);
    const client = entry.client as Redis & { gcra(key: string, interval: number, capacity: number): Promise<number[]> };
    return client.gcra(cfg.redis.prefix + key, policy.params.intervalMs, policy.params.capacityMs).then(
      ([allowed, remaining, retryAfterMs, resetMs]) => {
        if (!entry.up) {
          entry.up = true;
          this.logger.log(`Redis ${cfg.redis?.url} answers again: rate limits are enforced again`);
        }
        return { allowed: allowed === 1, remaining, retryAfterMs, resetMs };
      },
      (err: Error) => {
        if (entry.up) {
          entry.up = false;
          this.metrics.recordRateLimitStoreError();
          this.logger.error(`Redis ${cfg.redis?.url} cannot answer (${err.message}): onStoreError is "${cfg.onStoreError}" until it is back`);
        }
        return 'error' as const;
      },
    );
  }

  /** @internal counts a decision (by route and result) and passes the verdict through. */
  count(route: string, result: string, verdict: Verdict): Verdict {
    this.metrics.recordRateLimit(route, result);
    return verdict;
  }

  /** @internal dry run: what would have been limited, logged at most once a minute per key. */
  dryRun(scope: string, key: string): void {
    const now = Date.now();
    const last = this.lastDryRunLog.get(key);
    if (last !== undefined && now - last < 60_000) return;
    if (this.lastDryRunLog.size > 10_000) this.lastDryRunLog.clear();
    this.lastDryRunLog.set(key, now);
    this.logger.warn(`dry run: ${key} is over the limit of "${scope}" (let through)`);
  }

  private client(url: string, timeoutMs: number): RedisEntry {
    const key = clientKey(url, timeoutMs);
    let entry = this.redis.get(key);
    if (entry === undefined) {
      // ioredis is loaded only when a policy uses Redis.
      const { Redis: RedisClient } = createRequire(import.meta.url)('ioredis') as typeof import('ioredis');
      // Until the first connection is up, commands wait for it (each at most the command
      // timeout): a reload that moves a limit to another Redis does not decide its first requests
      // by onStoreError only because the new connection was still being opened, as start-up
      // waits for it (onApplicationBootstrap). Once it was up, a lost connection fails fast.
      const client = new RedisClient(url, {
        enableOfflineQueue: true,
        maxRetriesPerRequest: 0,
        commandTimeout: timeoutMs,
        retryStrategy: (times) => Math.min(times * 100, 2000),
        lazyConnect: false,
      });
      client.defineCommand('gcra', { numberOfKeys: 1, lua: GCRA_LUA });
      client.once('ready', () => {
        client.options.enableOfflineQueue = false;
      });
      entry = { client, url, up: true, timeoutMs };
      const e = entry;
      // Connection errors are reported through decisions (once per outage); ioredis retries by itself.
      client.on('error', () => {
        if (e.up) {
          e.up = false;
          this.metrics.recordRateLimitStoreError();
          this.logger.error(`Redis ${url} is unreachable; reconnecting`);
        }
      });
      this.redis.set(key, entry);
    }
    return entry;
  }

  /**
   * Start-up waits (up to 3 s) for each Redis to be connected, so the first requests are not
   * decided by onStoreError only because the connection was still being opened.
   */
  async onApplicationBootstrap(): Promise<void> {
    await Promise.all(
      [...this.redis.values()].map(
        ({ url, client }) =>
          new Promise<void>((resolve) => {
            if (client.status === 'ready') return resolve();
            const timer = setTimeout(() => {
              this.logger.warn(`Redis ${url} is not reachable yet; starting anyway (onStoreError decides until it is)`);
              resolve();
            }, 3000);
            client.once('ready', () => {
              clearTimeout(timer);
              resolve();
            });
          }),
      ),
    );
  }

  onApplicationShutdown(): void {
    for (const { client } of this.redis.values()) client.disconnect();
    this.redis.clear();
  }
}

interface RedisEntry {
  client: Redis;
  url: string;
  up: boolean;
  timeoutMs: number;
}

function clientKey(url: string, timeoutMs: number): string {
  return `${timeoutMs} ${url}`;
}

function keyPart(spec: string, ipv6Prefix: number): KeyPart {
  if (spec === 'client-ip') return (req) => groupIp(clientAddress(req) ?? normalizeAddress(req.socket.remoteAddress) ?? '', ipv6Prefix);
  if (spec === 'route') return (_req, route) => route;
  const name = spec.slice(spec.indexOf(':') + 1).toLowerCase();
  if (spec.startsWith('header:')) {
    return (req) => {
      const v = req.headers[name];
      return v === undefined || v === '' ? undefined : Array.isArray(v) ? v.join(',') : v;
    };
  }
  return (req) => cookieValue(req.headers.cookie, name);
}

/** An IPv6 address reduced to its first `prefix` bits (so a /64 shares a bucket); IPv4 as is. */
export function groupIp(ip: string, prefix: number): string {
  if (!ip.includes(':') || prefix >= 128) return ip;
  const [head, tail = ''] = ip.split('::');
  const h = head === '' ? [] : head.split(':');
  const t = tail === '' ? [] : tail.split(':');
  const groups = [...h, ...Array<string>(Math.max(0, 8 - h.length - t.length)).fill('0'), ...t].map((g) => parseInt(g, 16) || 0);
  const out: string[] = [];
  for (let i = 0; i < 8; i++) {
    const bits = Math.max(0, Math.min(16, prefix - i * 16));
    const mask = bits === 0 ? 0 : (0xffff << (16 - bits)) & 0xffff;
    out.push((groups[i] & mask).toString(16));
  }
  return `${out.join(':')}/${prefix}`;
}
