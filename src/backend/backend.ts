/**
 * One upstream server. Everything the data plane needs per request is computed here once, when
 * the registry is built: the parsed URL, request defaults, the keep-alive agent. The mutable
 * fields are counters and health state; only BackendRegistry writes health.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import type { Agent } from 'node:http';
import { createUpstreamAgent, type UpstreamAgentOptions } from './upstream-agent.js';

/** What a backend is built from: one validated `backend[]` entry of config.yaml. */
export interface BackendSpec {
  readonly name: string;
  /** The pool it belongs to ("default" for the seed format's `backend` list). */
  readonly pool?: string;
  readonly url: string;
  readonly enabled: boolean;
  readonly weight: number;
  readonly backup: boolean;
  readonly maxConnections?: number;
  /** ms; undefined = the load balancer's default. */
  readonly slowStart?: number;
  readonly healthCheck?: Partial<ProbeSpec>;
  readonly tls?: BackendTlsSpec;
}

/** `backend[].tls` as configured (file paths). */
export interface BackendTlsSpec {
  readonly servername?: string;
  readonly ca?: string;
  readonly insecureSkipVerify: boolean;
  readonly clientCert?: string;
  readonly clientKey?: string;
}

/** TLS options for connections to an https backend (files read once, at build time). */
export interface BackendTls {
  readonly servername?: string;
  readonly ca?: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
  readonly rejectUnauthorized: boolean;
}

/** The health check that applies to one backend: `healthCheck` merged with its own overrides. */
export interface ProbeSpec {
  readonly enabled: boolean;
  readonly path: string;
  readonly method: string;
  readonly interval: number;
  readonly unhealthyInterval?: number;
  readonly timeout: number;
  readonly jitter: number;
  readonly healthyThreshold: number;
  readonly unhealthyThreshold: number;
  /** Inclusive [low, high] status ranges that pass. */
  readonly expectStatus: readonly (readonly number[])[];
  readonly expectBody?: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly port?: number;
  readonly initialState: 'healthy' | 'unknown';
  readonly cooldown: number;
}

export interface ProbeResult {
  readonly at: number;
  readonly ok: boolean;
  readonly detail: string;
  readonly latencyMs: number;
}

/** How many probe results each backend keeps for /health. */
export const PROBE_HISTORY = 5;

export type HealthSource = 'probe' | 'passive' | 'outlier';

/** One line of a backend's recent health history (kept for /health details and logs). */
export interface HealthEvent {
  readonly at: number;
  readonly healthy: boolean;
  readonly source: HealthSource;
  readonly reason: string;
}

export class Backend {
  readonly id: string;
  readonly url: URL;
  /** "http:" or "https:". */
  readonly protocol: string;
  /** Host name as `http.request` wants it: IPv6 literals without brackets. */
  readonly hostname: string;
  readonly port: number;
  /** Path prefix from the URL ("" for none), prepended to every proxied path. */
  readonly basePath: string;
  /**
   * Settings below are written only by the registry, at start and on a config reload (a backend
   * whose name and URL stay the same keeps its object, its health and its connections).
   */
  enabled: boolean;
  /** The pool it belongs to. */
  pool: string;
  /** A dense index for per-backend arrays, never reused by another backend. */
  readonly slot: number;
  weight: number;
  backup: boolean;
  /** Most requests in flight; Infinity when uncapped. */
  maxConnections: number;
  /** Slow-start window in ms (0 = off). */
  slowStartMs: number;
  /** Removed from the config by a reload: no new requests, closed once idle. */
  retired = false;
  readonly agent: Agent;
  /**
   * The active health probes' agent: the same class and settings as `agent` (see
   * upstream-request.ts for why), but its own single connection, so probes never queue behind
   * proxied traffic nor take its connections.
   */
  readonly probeAgent: Agent;
  readonly agentOptions: UpstreamAgentOptions;
  /** TLS options (https backends only): given to every connection, probes and tunnels included. */
  readonly tls: BackendTls | undefined;
  /** `tls` as configured (part of the backend's identity on reload). */
  readonly tlsSpec: BackendTlsSpec | undefined;
  /** The agent's pool key for this backend (plain HTTP only), to see whether a pooled socket is free. */
  readonly poolKey: string | undefined;
  /** Set once by ProxyEngine on first use; opaque to everyone else. */
  forwarder: unknown = undefined;

  /** The active health check for this backend (defaults merged with its overrides). */
  check: ProbeSpec;
  /** Requests currently being forwarded to this backend. */
  inFlight = 0;
  healthy: boolean;
  /** False until the first probe result: with initialState "unknown" the backend is "unknown", not "down". */
  checked = false;
  consecutiveFailures = 0;
  consecutiveSuccesses = 0;
  /** Connection-level failures of proxied requests in a row (outlier detection). */
  passiveFailures = 0;
  /** Passively ejected (as opposed to failed by probes); `ejectedUntil` is when it is tried again. */
  ejected = false;
  ejectedUntil = 0;
  /** Ejections so far; each lasts longer, up to outlierDetection.maxEjectionTime. */
  ejections = 0;
  /** When the backend last became healthy again (epoch ms); 0 = healthy since start, no ramp. */
  healthySince = 0;
  lastChange: HealthEvent | undefined = undefined;
  lastProbe: ProbeResult | undefined = undefined;
  /** The last few probe results, newest last (at most PROBE_HISTORY). */
  readonly recentProbes: ProbeResult[] = [];
  /** Active probes so far, by outcome (for metrics; monotonic). */
  probesPassed = 0;
  probesFailed = 0;
  /** Ejections so far by the failure kind that caused them (for metrics; monotonic). */
  readonly ejectionsByReason = new Map<string, number>();

  constructor(cfg: BackendSpec, slot: number, defaultSlowStartMs: number, agentOptions: UpstreamAgentOptions, check: ProbeSpec) {
    this.slot = slot;
    this.check = check;
    this.healthy = check.initialState === 'healthy';
    this.weight = cfg.weight;
    this.backup = cfg.backup;
    this.maxConnections = cfg.maxConnections ?? Infinity;
    this.slowStartMs = cfg.slowStart ?? defaultSlowStartMs;
    this.pool = cfg.pool ?? 'default';
    this.id = cfg.name;
    this.url = new URL(cfg.url);
    this.protocol = this.url.protocol;
    this.hostname = this.url.hostname.startsWith('[') ? this.url.hostname.slice(1, -1) : this.url.hostname;
    this.port = this.url.port ? Number(this.url.port) : this.protocol === 'https:' ? 443 : 80;
    this.basePath = this.url.pathname === '/' ? '' : this.url.pathname.replace(/\/$/, '');
    this.enabled = cfg.enabled;
    this.tls = this.protocol === 'https:' ? readTls(cfg.tls, this.hostname) : undefined;
    this.tlsSpec = cfg.tls;
    this.agent = createUpstreamAgent(this.protocol, agentOptions, this.tls);
    this.probeAgent = createUpstreamAgent(this.protocol, { ...agentOptions, maxSockets: 1, maxFreeSockets: 1 }, this.tls);
    this.agentOptions = agentOptions;
    this.poolKey = this.protocol === 'http:' ? this.agent.getName({ host: this.hostname, port: this.port }) : undefined;
  }

  /**
   * Weight after slow start: a backend that has just recovered ramps linearly from 10% to its
   * full weight over `slowStartMs` (Envoy's and HAProxy's slow start; not at process start).
   */
  effectiveWeight(now: number): number {
    const since = this.healthySince;
    if (since === 0 || this.slowStartMs === 0) return this.weight;
    const elapsed = now - since;
    if (elapsed >= this.slowStartMs) return this.weight;
    return this.weight * Math.max(0.1, elapsed / this.slowStartMs);
  }

  /** True when a connected keep-alive socket is waiting in the pool (the next request takes it). */
  hasFreeSocket(): boolean {
    const key = this.poolKey;
    if (key === undefined) return false;
    const free = (this.agent.freeSockets as Record<string, unknown[] | undefined>)[key];
    return free !== undefined && free.length > 0;
  }

  /** Takes the settings of a reloaded config (same name and URL); health and counters stay. */
  update(cfg: BackendSpec, defaultSlowStartMs: number, check: ProbeSpec): void {
    this.enabled = cfg.enabled;
    this.pool = cfg.pool ?? 'default';
    this.weight = cfg.weight;
    this.backup = cfg.backup;
    this.maxConnections = cfg.maxConnections ?? Infinity;
    this.slowStartMs = cfg.slowStart ?? defaultSlowStartMs;
    this.check = check;
  }

  /** Frees the agents' sockets; the backend is unusable afterwards. */
  destroy(): void {
    this.agent.destroy();
    this.probeAgent.destroy();
  }
}

/**
 * The TLS options of an https backend. SNI and the certificate check use `servername`, by
 * default the URL's host name; an IP address is sent no SNI (RFC 6066 allows only host names)
 * and the certificate is checked against the address. Without this, Node would take the name
 * from each request's Host header, the client's name for the proxy.
 */
function readTls(spec: BackendTlsSpec | undefined, hostname: string): BackendTls {
  return {
    servername: spec?.servername ?? (isIP(hostname) === 0 ? hostname : ''),
    ca: spec?.ca !== undefined ? readFileSync(spec.ca) : undefined,
    cert: spec?.clientCert !== undefined ? readFileSync(spec.clientCert) : undefined,
    key: spec?.clientKey !== undefined ? readFileSync(spec.clientKey) : undefined,
    rejectUnauthorized: spec?.insecureSkipVerify !== true,
  };
}
