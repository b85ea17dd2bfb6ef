/**
 * One upstream server. Everything the data plane needs per request is computed here once, when
 * the registry is built: the parsed URL, request defaults, the keep-alive agent. The mutable
 * fields are counters and health state; only BackendRegistry writes health.
 */
import type { Agent } from 'node:http';
import type { BackendConfig } from '../config/config.schema.js';
import { createUpstreamAgent, type UpstreamAgentOptions } from './upstream-agent.js';

export type HealthSource = 'probe' | 'passive' | 'cooldown';

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
  readonly enabled: boolean;
  readonly agent: Agent;
  /** Set once by ProxyEngine on first use; opaque to everyone else. */
  forwarder: unknown = undefined;

  /** Requests currently being forwarded to this backend. */
  inFlight = 0;
  healthy = true;
  consecutiveFailures = 0;
  consecutiveSuccesses = 0;
  /** With active checks off: when a passively failed backend is tried again (epoch ms). */
  cooldownUntil = 0;
  lastChange: HealthEvent | undefined = undefined;
  lastProbe: { at: number; ok: boolean; detail: string; latencyMs: number } | undefined = undefined;

  constructor(cfg: BackendConfig, agentOptions: UpstreamAgentOptions) {
    this.id = cfg.name;
    this.url = new URL(cfg.url);
    this.protocol = this.url.protocol;
    this.hostname = this.url.hostname.startsWith('[') ? this.url.hostname.slice(1, -1) : this.url.hostname;
    this.port = this.url.port ? Number(this.url.port) : this.protocol === 'https:' ? 443 : 80;
    this.basePath = this.url.pathname === '/' ? '' : this.url.pathname.replace(/\/$/, '');
    this.enabled = cfg.enabled;
    this.agent = createUpstreamAgent(this.protocol, agentOptions);
  }

  /** Frees the agent's sockets; the backend is unusable afterwards. */
  destroy(): void {
    this.agent.destroy();
  }
}
