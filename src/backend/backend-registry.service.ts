/**
 * Owns the Backend objects and their health. It is the only writer of health state: probes and
 * the proxy engine report outcomes, the registry applies thresholds, logs transitions (never
 * every tick), and publishes a new immutable snapshot of eligible backends that the data plane
 * reads without locks or copies.
 */
import { Inject, Injectable, Logger, type OnApplicationShutdown } from '@nestjs/common';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import { Backend, PROBE_HISTORY, type HealthSource } from './backend.js';

/** What a reload changed in the set of backends. */
export interface BackendChanges {
  readonly added: readonly Backend[];
  readonly removed: readonly Backend[];
  readonly kept: readonly Backend[];
}

@Injectable()
export class BackendRegistry implements OnApplicationShutdown {
  private readonly logger = new Logger(BackendRegistry.name);
  /** Every configured backend of every pool, enabled or not, in config order. Replaced on reload. */
  all: readonly Backend[] = [];
  private eligible: readonly Backend[] = [];
  private eligibleBackups: readonly Backend[] = [];
  private outlier: ProxymityConfig['outlierDetection'];
  private nextSlot = 0;
  /** Removed by a reload and still serving requests: closed once idle. */
  private readonly retired = new Set<Backend>();
  private readonly healthListeners: ((b: Backend) => void)[] = [];
  private readonly addListeners: ((b: Backend) => void)[] = [];

  constructor(@Inject(PROXYMITY_CONFIG) cfg: ProxymityConfig) {
    this.outlier = cfg.outlierDetection;
    this.apply(cfg);
  }

  /** Whether 5xx answers count as passive failures (outlierDetection.consider5xx). */
  get consider5xx(): boolean {
    return this.outlier.consider5xx;
  }

  /** Called after every health transition (load balancers rebuild their snapshots). */
  onHealthChange(listener: (b: Backend) => void): void {
    this.healthListeners.push(listener);
  }

  /** Called for every backend created, now and on later reloads (metrics bind its series). */
  onBackendAdded(listener: (b: Backend) => void): void {
    this.addListeners.push(listener);
    for (const b of this.all) listener(b);
  }

  /**
   * Builds the backends of `cfg`. A backend whose name, URL and connection settings are
   * unchanged keeps its object: health, counters, ejections and pooled connections survive.
   * Removed backends take no new requests and are closed once their last request is done.
   */
  apply(cfg: ProxymityConfig): BackendChanges {
    this.outlier = cfg.outlierDetection;
    const u = cfg.upstream;
    const agentOptions = {
      connectTimeoutMs: u.connectTimeout,
      readTimeoutMs: u.timeout,
      idleTimeoutMs: u.keepAliveTimeout,
      maxSockets: u.maxSockets,
      maxFreeSockets: u.maxFreeSockets,
    };
    const agentKey = JSON.stringify(agentOptions);
    const previous = new Map(this.all.map((b) => [`${b.id} ${b.url.href} ${JSON.stringify(b.agentOptions)}${b.tlsSpec ? ` ${JSON.stringify(b.tlsSpec)}` : ''}`, b]));
    const next: Backend[] = [];
    const added: Backend[] = [];
    const kept: Backend[] = [];
    for (const pool of Object.values(cfg.pools)) {
      for (const spec of pool.backends) {
        const b = { ...spec, pool: pool.name };
        const check = { ...pool.healthCheck, ...spec.healthCheck };
        const key = `${spec.name} ${new URL(spec.url).href} ${agentKey}${spec.tls ? ` ${JSON.stringify(spec.tls)}` : ''}`;
        const existing = previous.get(key);
        if (existing !== undefined) {
          previous.delete(key);
          existing.update(b, pool.slowStart, check);
          // Down by probes and now without probes: nothing would ever bring it back, so it is up.
          if (!check.enabled && !existing.healthy && !existing.ejected && existing.enabled) this.transition(existing, true, 'probe', 'health checks disabled by a reload');
          kept.push(existing);
          next.push(existing);
        } else {
          const created = new Backend(b, this.nextSlot++, pool.slowStart, agentOptions, check);
          added.push(created);
          next.push(created);
        }
      }
    }
    const removed = [...previous.values()];
    for (const b of removed) {
      b.retired = true;
      b.enabled = false;
      this.retired.add(b);
    }
    this.all = Object.freeze(next);
    this.eligible = this.buildEligible(false);
    this.eligibleBackups = this.buildEligible(true);
    for (const b of added) for (const l of this.addListeners) l(b);
    this.closeIdleRetired();
    return { added, removed, kept };
  }

  /** Closes retired backends that have no request left (called on every probe tick too). */
  closeIdleRetired(): void {
    for (const b of this.retired) {
      if (b.inFlight === 0) {
        b.destroy();
        this.retired.delete(b);
      }
    }
  }

  /** Enabled, healthy primary backends in config order. Replaced (never mutated) on every change. */
  get healthy(): readonly Backend[] {
    return this.eligible;
  }

  /** Enabled, healthy backup backends (used only while no primary is eligible). */
  get healthyBackups(): readonly Backend[] {
    return this.eligibleBackups;
  }

  get enabled(): readonly Backend[] {
    return this.all.filter((b) => b.enabled);
  }

  /** Outcome of one active probe; thresholds decide whether health changes. */
  reportProbe(backend: Backend, ok: boolean, detail: string, latencyMs: number): void {
    const result = { at: Date.now(), ok, detail, latencyMs };
    if (ok) backend.probesPassed++;
    else backend.probesFailed++;
    backend.lastProbe = result;
    backend.recentProbes.push(result);
    if (backend.recentProbes.length > PROBE_HISTORY) backend.recentProbes.shift();
    const hc = backend.check;
    const first = !backend.checked;
    backend.checked = true;
    if (first && ok && !backend.healthy) {
      // initialState "unknown": the first passing probe admits the backend, at full weight
      // (slow start is for recoveries, not for start-up).
      this.transition(backend, true, 'probe', `first probe passed: ${detail}`);
      backend.healthySince = 0;
      return;
    }
    if (ok) {
      backend.consecutiveFailures = 0;
      backend.consecutiveSuccesses++;
      if (!backend.healthy && backend.consecutiveSuccesses >= hc.healthyThreshold) {
        this.transition(backend, true, 'probe', `${backend.consecutiveSuccesses} passing probe(s), last: ${detail}`);
      }
    } else {
      backend.consecutiveSuccesses = 0;
      backend.consecutiveFailures++;
      if (backend.healthy && backend.consecutiveFailures >= hc.unhealthyThreshold) {
        this.transition(backend, false, 'probe', `${backend.consecutiveFailures} failing probe(s), last: ${detail}`);
      }
    }
  }

  /**
   * Outlier detection (Envoy semantics). A forwarded request failed at the connection level
   * (refused, reset, connect timeout, invalid response; a 5xx with consider5xx): after
   * `consecutiveFailures` in a row the backend is ejected for baseEjectionTime × its number of
   * ejections (capped at maxEjectionTime), unless that would eject more than
   * maxEjectionPercent of the enabled backends. It comes back when the time is over or when
   * active probes pass, whichever is first.
   */
  reportPassiveFailure(backend: Backend, kind: string, reason: string): void {
    backend.consecutiveSuccesses = 0;
    if (!backend.healthy) return;
    const od = this.outlier;
    backend.passiveFailures++;
    if (backend.passiveFailures < od.consecutiveFailures) return;
    const enabled = this.all.filter((b) => b.enabled && b.pool === backend.pool);
    const allowed = Math.max(1, Math.floor((enabled.length * od.maxEjectionPercent) / 100));
    const ejectedNow = enabled.filter((b) => b.ejected).length;
    if (ejectedNow >= allowed) {
      backend.passiveFailures = 0;
      this.logger.warn(`backend "${backend.id}" failed (${reason}) but stays in: ${ejectedNow} of ${enabled.length} already ejected (maxEjectionPercent ${od.maxEjectionPercent})`);
      return;
    }
    const now = Date.now();
    // The ejection count is forgotten once the backend has stayed up for maxEjectionTime.
    if (backend.healthySince > 0 && now - backend.healthySince >= od.maxEjectionTime) backend.ejections = 0;
    backend.ejections++;
    backend.ejectionsByReason.set(kind, (backend.ejectionsByReason.get(kind) ?? 0) + 1);
    const ms = Math.min((od.baseEjectionTime ?? backend.check.cooldown) * backend.ejections, od.maxEjectionTime);
    backend.ejected = true;
    backend.ejectedUntil = now + ms;
    this.transition(backend, false, 'passive', `${reason}; ejected for ${ms}ms (ejection ${backend.ejections})`);
  }

  /** A proxied request to the backend succeeded: its run of passive failures is over. */
  reportSuccess(backend: Backend): void {
    backend.passiveFailures = 0;
  }

  /** An ejected backend whose ejection time is over is tried again. */
  releaseExpiredEjection(b: Backend, now: number): void {
    if (b.enabled && b.ejected && !b.healthy && b.ejectedUntil <= now) this.transition(b, true, 'outlier', 'ejection time over, trying it again');
  }

  private transition(backend: Backend, healthy: boolean, source: HealthSource, reason: string): void {
    backend.healthy = healthy;
    if (healthy) {
      backend.ejected = false;
      backend.passiveFailures = 0;
    }
    backend.consecutiveFailures = 0;
    backend.consecutiveSuccesses = 0;
    const now = Date.now();
    backend.lastChange = { at: now, healthy, source, reason };
    if (healthy) backend.healthySince = now;
    this.eligible = this.buildEligible(false);
    this.eligibleBackups = this.buildEligible(true);
    const left = this.eligible.length + this.eligibleBackups.length;
    if (healthy) this.logger.log(`backend "${backend.id}" is UP (${source}: ${reason}); ${left} healthy`);
    else this.logger.warn(`backend "${backend.id}" is DOWN (${source}: ${reason}); ${left} healthy`);
    for (const l of this.healthListeners) l(backend);
  }

  private buildEligible(backup: boolean): readonly Backend[] {
    return Object.freeze(this.all.filter((b) => b.enabled && b.healthy && b.backup === backup));
  }

  onApplicationShutdown(): void {
    for (const b of this.all) b.destroy();
    for (const b of this.retired) b.destroy();
    this.retired.clear();
  }
}
