/**
 * Every Prometheus metric of the proxy, in one prom-client Registry per instance (never the
 * global one, so several instances can live in one process, as the tests run them).
 *
 * Recording costs the data plane array stores only: series are bound per backend when the
 * service starts and per (backend, method, status) on first use; gauges that mirror state
 * (in flight, up, active requests, probe and ejection totals) are read at scrape time, so the
 * paths that change that state pay nothing.
 */
import type { Server } from 'node:http';
import { Inject, Injectable, type OnApplicationBootstrap } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';
import { BackendRegistry } from '../backend/backend-registry.service.js';
import type { Backend } from '../backend/backend.js';
import { appliedGrowingPercent } from '../heap-tuning.js';
import type { ConnectObserved } from '../backend/upstream-agent.js';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import { BoundCounter, BoundHistogram } from './metric-cells.js';

export const METRIC_PREFIX = 'proxymity_';

/** Request durations: 1 ms to 60 s (the default upstream idle timeout). */
const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
/** Connect times: 100 µs to the 5 s default connect timeout. */
const CONNECT_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/** Methods with their own label value; anything else is "OTHER" (label values stay bounded). */
const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE', 'CONNECT', 'OTHER'];
const METHOD_INDEX: ReadonlyMap<string, number> = new Map(METHODS.map((m, i) => [m, i]));
const OTHER = METHODS.length - 1;
const CODE_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx'];
/** Label of requests no backend served (rejected by the proxy). */
export const NO_BACKEND = '';

/** How a WebSocket upgrade ended (label of websocket_upgrades_total). */
export type UpgradeResult = 'success' | 'rejected' | 'error' | 'no_route' | 'no_backend' | 'client_closed' | 'disabled' | 'rate_limited';

/** Why a request was retried (label of retries_total). */
export type RetryReason = 'connect_failure' | 'reset' | 'timeout' | 'status' | 'stale_connection';

@Injectable()
export class MetricsService implements OnApplicationBootstrap {
  readonly registry = new Registry();
  readonly enabled: boolean;

  private readonly requests = new BoundCounter(`${METRIC_PREFIX}requests_total`, 'Proxied requests by backend, method and status (499: the client closed first).', ['backend', 'method', 'code'] as const);
  private readonly duration = new BoundHistogram(`${METRIC_PREFIX}request_duration_seconds`, 'Time from the request reaching the proxy to the end of its response.', ['method', 'code_class'] as const, DURATION_BUCKETS);
  private readonly connect = new BoundHistogram(`${METRIC_PREFIX}upstream_connect_duration_seconds`, 'Time to open a new connection to a backend (TCP, and TLS for https backends).', ['backend'] as const, CONNECT_BUCKETS);
  private readonly header = new BoundHistogram(`${METRIC_PREFIX}upstream_response_header_duration_seconds`, 'Time from sending a request to a backend to its response headers (time to first byte), per attempt.', ['backend'] as const, DURATION_BUCKETS);
  private readonly retries = new BoundCounter(`${METRIC_PREFIX}retries_total`, 'Requests sent again to another backend (or, stale_connection, on a fresh connection) by reason.', ['reason'] as const);
  private readonly upgrades = new BoundCounter(`${METRIC_PREFIX}websocket_upgrades_total`, 'Upgrade (WebSocket) requests by result: success (101 relayed), rejected (the backend answered another status), error (no backend answered), no_route, no_backend, client_closed, disabled.', ['result'] as const);
  private readonly upgradeSlots = new Map<string, number>();
  private readonly tunnelBytes = new BoundCounter(`${METRIC_PREFIX}websocket_bytes_total`, 'Bytes relayed through WebSocket tunnels, by direction.', ['direction'] as const);
  private readonly bytesSlots = { in: this.tunnelBytes.bind({ direction: 'client_to_backend' }), out: this.tunnelBytes.bind({ direction: 'backend_to_client' }) };
  private tunnelsOpen: () => number = () => 0;
  private readonly rateLimits = new BoundCounter(`${METRIC_PREFIX}rate_limit_decisions_total`, 'Rate-limit decisions by route and result: allowed, limited, concurrency_limited, dry_run, allow_listed, no_key_allowed, store_error_allowed, store_error_denied.', ['route', 'result'] as const);
  private readonly rateLimitSlots = new Map<string, number>();
  private readonly rateLimitStoreErrors = new BoundCounter(`${METRIC_PREFIX}rate_limit_store_errors_total`, 'Outages of the rate-limit store (Redis), counted once each.', [] as const);
  private readonly storeErrorSlot = this.rateLimitStoreErrors.bind({});
  private readonly reloads = new BoundCounter(`${METRIC_PREFIX}config_reloads_total`, 'Config reloads by result: success (applied) or failure (refused; the running config stays).', ['result'] as const);
  private readonly reloadSlots = { success: this.reloads.bind({ result: 'success' }), failure: this.reloads.bind({ result: 'failure' }) };
  private readonly cacheRequests = new BoundCounter(`${METRIC_PREFIX}cache_requests_total`, 'Requests on routes with the cache on, by result: hit, stale (served stale: stale-while-revalidate, stale-if-error, max-stale), revalidated (a 304 from the backend refreshed it), miss (forwarded), collapsed (served from another request\'s fill), bypass (a method the cache does not serve).', ['result'] as const);
  private readonly cacheSlots = new Map<string, number>();
  private readonly cacheRemovals = new BoundCounter(`${METRIC_PREFIX}cache_evictions_total`, 'Stored responses removed, by reason: size (least recently used, to stay under cache.maxSize), purge (admin API), invalidation (an unsafe request, or the backend no longer allows it), expired (stale and of no further use).', ['reason'] as const);
  private readonly cacheRemovalSlots = new Map<string, number>();
  private readonly cacheRefreshes = new BoundCounter(`${METRIC_PREFIX}cache_background_refreshes_total`, 'Background refreshes (stale-while-revalidate) by result: updated, not_modified, uncacheable, error.', ['result'] as const);
  private readonly cacheRefreshSlots = new Map<string, number>();
  private readonly errors = new BoundCounter(`${METRIC_PREFIX}proxy_errors_total`, 'Requests the proxy answered (or cut) because of an error, by RFC 9209 error type.', ['error'] as const);

  /** requests_total series per backend slot, keyed method * 1000 + status; `noBackendSlots` for requests no backend served. */
  private readonly requestSlots: Map<number, number>[] = [];
  private readonly noBackendSlots = new Map<number, number>();
  /** request_duration_seconds series, index method * 5 + status class. */
  private readonly durationSlots: number[] = [];
  private readonly headerSlots: number[] = [];
  private readonly retrySlots: Record<RetryReason, number>;
  private readonly errorSlots = new Map<string, number>();
  private inFlight: () => number = () => 0;

  constructor(
    private readonly backendRegistry: BackendRegistry,
    private readonly adapterHost: HttpAdapterHost,
    @Inject(PROXYMITY_CONFIG) cfg: ProxymityConfig,
  ) {
    this.enabled = cfg.metrics.enabled;
    for (const method of METHODS) for (const cls of CODE_CLASSES) this.durationSlots.push(this.duration.bind({ method, code_class: cls }));
    this.retrySlots = {
      connect_failure: this.retries.bind({ reason: 'connect_failure' }),
      reset: this.retries.bind({ reason: 'reset' }),
      timeout: this.retries.bind({ reason: 'timeout' }),
      status: this.retries.bind({ reason: 'status' }),
      stale_connection: this.retries.bind({ reason: 'stale_connection' }),
    };
    // Every backend, now and after reloads, gets its series bound once, by its slot.
    backendRegistry.onBackendAdded((b) => {
      this.requestSlots[b.slot] = new Map<number, number>();
      this.headerSlots[b.slot] = this.header.bind({ backend: b.id });
      if (!this.enabled) return;
      const slot = this.connect.bind({ backend: b.id });
      (b.agent as ConnectObserved).onConnect = (ms) => this.connect.observe(slot, ms / 1000);
    });
    if (!this.enabled) return;
    for (const m of [this.requests, this.duration, this.connect, this.header, this.retries, this.errors, this.reloads, this.upgrades, this.tunnelBytes, this.rateLimits, this.rateLimitStoreErrors, this.cacheRequests, this.cacheRemovals, this.cacheRefreshes]) this.registry.registerMetric(m as never);
    this.registerStateGauges();
    if (cfg.metrics.processMetrics) {
      // `metrics.eventLoopResolution`: each sample wakes the process (10 ms: about 100 times a
      // second, 1.5% of a core on an idle proxy; 50 ms: 0.7%), and each is the time between two
      // samples, so the lag metrics never read below it (docs/benchmarks.md#idle-wakeups).
      collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: cfg.metrics.eventLoopResolution });
      new Gauge({
        name: `${METRIC_PREFIX}heap_growing_percent`,
        help: "V8's old-generation growing factor the proxy set, as percent over 1 (0: V8's own, from 640 MiB live); -1 when the proxy leaves it alone (operator's --heap-growing-percent, or started in-process).",
        registers: [this.registry],
        collect() {
          this.set(appliedGrowingPercent());
        },
      });
    }
  }

  onApplicationBootstrap(): void {
    const server = this.adapterHost.httpAdapter?.getHttpServer() as Server | undefined;
    if (server === undefined || !this.enabled) return;
    new Gauge({
      name: `${METRIC_PREFIX}open_connections`,
      help: 'Client connections open on the proxy listener.',
      registers: [this.registry],
      collect() {
        return new Promise<void>((resolve) =>
          server.getConnections((err, n) => {
            if (!err) this.set(n);
            resolve();
          }),
        );
      },
    });
  }

  /** Where the TLS listeners' certificates are (read at scrape: seconds until each expires). */
  readCertificatesFrom(read: () => { name: string; notAfter: Date }[]): void {
    if (!this.enabled) return;
    new Gauge({
      name: `${METRIC_PREFIX}tls_certificate_expiry_seconds`,
      help: 'Seconds until each served certificate expires (negative once expired).',
      labelNames: ['name'],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const c of read()) this.set({ name: c.name }, Math.round((c.notAfter.getTime() - Date.now()) / 1000));
      },
    });
  }

  /** The response cache tells where its size lives (read at scrape). */
  readCacheFrom(store: { readonly bytes: number; readonly objects: number }): void {
    if (!this.enabled) return;
    new Gauge({
      name: `${METRIC_PREFIX}cache_stored_bytes`,
      help: 'Bytes held by the response cache (bodies, headers and bookkeeping), bounded by cache.maxSize.',
      registers: [this.registry],
      collect() {
        this.set(store.bytes);
      },
    });
    new Gauge({
      name: `${METRIC_PREFIX}cache_objects`,
      help: 'Responses held by the response cache (each Vary variant counts).',
      registers: [this.registry],
      collect() {
        this.set(store.objects);
      },
    });
  }

  recordCache(result: string): void {
    this.cacheRequests.inc(slotOf(this.cacheSlots, this.cacheRequests, 'result', result));
  }

  recordCacheRemoval(reason: string, n: number): void {
    if (n > 0) this.cacheRemovals.inc(slotOf(this.cacheRemovalSlots, this.cacheRemovals, 'reason', reason), n);
  }

  recordCacheRefresh(result: string): void {
    this.cacheRefreshes.inc(slotOf(this.cacheRefreshSlots, this.cacheRefreshes, 'result', result));
  }

  /** The upgrade proxy tells where its open-tunnel count lives (read at scrape). */
  readTunnelsFrom(read: () => number): void {
    this.tunnelsOpen = read;
  }

  recordUpgrade(result: UpgradeResult): void {
    this.upgrades.inc(slotOf(this.upgradeSlots, this.upgrades, 'result', result));
  }

  recordRateLimit(route: string, result: string): void {
    const key = `${route}\u0000${result}`;
    let slot = this.rateLimitSlots.get(key);
    if (slot === undefined) {
      slot = this.rateLimits.bind({ route, result });
      this.rateLimitSlots.set(key, slot);
    }
    this.rateLimits.inc(slot);
  }

  recordRateLimitStoreError(): void {
    this.rateLimitStoreErrors.inc(this.storeErrorSlot);
  }

  recordTunnelBytes(fromClients: number, toClients: number): void {
    this.tunnelBytes.inc(this.bytesSlots.in, fromClients);
    this.tunnelBytes.inc(this.bytesSlots.out, toClients);
  }

  /** The engine tells where its in-flight count lives (read at scrape). */
  readInFlightFrom(read: () => number): void {
    this.inFlight = read;
  }

  // ---- data plane ---------------------------------------------------------------------------

  /** One finished request: `status` is what the client got (499 when it closed first). */
  recordRequest(backend: Backend | undefined, method: string | undefined, status: number, seconds: number): void {
    const m = (method !== undefined ? METHOD_INDEX.get(method) : undefined) ?? OTHER;
    const slots = backend === undefined ? this.noBackendSlots : this.requestSlots[backend.slot];
    const key = m * 1000 + status;
    let slot = slots.get(key);
    if (slot === undefined) {
      slot = this.requests.bind({ backend: backend === undefined ? NO_BACKEND : backend.id, method: METHODS[m], code: String(status) });
      slots.set(key, slot);
    }
    this.requests.inc(slot);
    const cls = status >= 100 && status < 600 ? ((status / 100) | 0) - 1 : 4;
    this.duration.observe(this.durationSlots[m * 5 + cls], seconds);
  }

  /** Response headers arrived `seconds` after the attempt's request was sent. */
  recordResponseHeaders(backend: Backend, seconds: number): void {
    this.header.observe(this.headerSlots[backend.slot], seconds);
  }

  recordRetry(reason: RetryReason): void {
    this.retries.inc(this.retrySlots[reason]);
  }

  recordError(code: string): void {
    this.errors.inc(slotOf(this.errorSlots, this.errors, 'error', code));
  }

  // ---- control plane ------------------------------------------------------------------------

  recordReload(result: 'success' | 'failure'): void {
    this.reloads.inc(this.reloadSlots[result]);
  }

  /** Prometheus text exposition of every metric. */
  scrape(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  private registerStateGauges(): void {
    const registry = this.backendRegistry;
    const registers = [this.registry];
    const engineInFlight = () => this.inFlight();
    const tunnels = () => this.tunnelsOpen();
    new Gauge({
      name: `${METRIC_PREFIX}websocket_tunnels_open`,
      help: 'Open WebSocket tunnels.',
      registers,
      collect() {
        this.set(tunnels());
      },
    });
    new Gauge({
      name: `${METRIC_PREFIX}requests_in_flight`,
      help: 'Proxied requests being served.',
      registers,
      collect() {
        this.set(engineInFlight());
      },
    });
    new Gauge({
      name: `${METRIC_PREFIX}backend_active_requests`,
      help: 'Requests being forwarded to each backend.',
      labelNames: ['backend'],
      registers,
      collect() {
        this.reset();
        for (const b of registry.all) this.set({ backend: b.id }, b.inFlight);
      },
    });
    new Gauge({
      name: `${METRIC_PREFIX}backend_up`,
      help: '1 when the backend takes traffic (enabled, healthy, not ejected), else 0.',
      labelNames: ['backend'],
      registers,
      collect() {
        this.reset();
        for (const b of registry.all) this.set({ backend: b.id }, b.enabled && b.healthy ? 1 : 0);
      },
    });
    new Counter({
      name: `${METRIC_PREFIX}health_checks_total`,
      help: 'Active health probes by backend and result (pass or fail).',
      labelNames: ['backend', 'result'],
      registers,
      collect() {
        this.reset();
        for (const b of registry.all) {
          this.inc({ backend: b.id, result: 'pass' }, b.probesPassed);
          this.inc({ backend: b.id, result: 'fail' }, b.probesFailed);
        }
      },
    });
    new Counter({
      name: `${METRIC_PREFIX}backend_ejections_total`,
      help: 'Outlier-detection ejections by backend and the failure kind that caused them.',
      labelNames: ['backend', 'reason'],
      registers,
      collect() {
        this.reset();
        for (const b of registry.all) for (const [reason, n] of b.ejectionsByReason) this.inc({ backend: b.id, reason }, n);
      },
    });
  }
}

/** The series of a one-label counter for `value`, bound on first use. */
function slotOf<L extends string>(slots: Map<string, number>, counter: BoundCounter<L>, label: L, value: string): number {
  let slot = slots.get(value);
  if (slot === undefined) {
    slot = counter.bind({ [label]: value } as Record<L, string>);
    slots.set(value, slot);
  }
  return slot;
}
