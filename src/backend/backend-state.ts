/**
 * One backend's health and traffic state as JSON, for /health and the admin /backends
 * endpoint. Reads the registry's state only (no I/O).
 */
import type { Backend, ProbeResult } from './backend.js';

export type BackendStateName = 'up' | 'down' | 'unknown' | 'disabled';

export function backendState(b: Backend): BackendStateName {
  return !b.enabled ? 'disabled' : b.healthy ? 'up' : b.checked || b.lastChange !== undefined ? 'down' : 'unknown';
}

function probeJson(p: ProbeResult) {
  return { at: new Date(p.at).toISOString(), ok: p.ok, detail: p.detail, latencyMs: p.latencyMs };
}

/** The summary /health shows per backend. */
export function describeBackend(b: Backend) {
  return {
    name: b.id,
    url: b.url.href,
    state: backendState(b),
    inFlight: b.inFlight,
    ...(b.lastChange ? { since: new Date(b.lastChange.at).toISOString(), reason: `${b.lastChange.source}: ${b.lastChange.reason}` } : {}),
    ...(b.lastProbe ? { lastProbe: probeJson(b.lastProbe), recentProbes: b.recentProbes.map(probeJson) } : {}),
    ...(b.ejected ? { ejectedUntil: new Date(b.ejectedUntil).toISOString(), ejections: b.ejections } : {}),
  };
}

/** Everything known about a backend: the /health summary plus weights, counters and check settings. */
export function describeBackendInDetail(b: Backend) {
  return {
    ...describeBackend(b),
    weight: b.weight,
    backup: b.backup,
    maxConnections: Number.isFinite(b.maxConnections) ? b.maxConnections : null,
    ejected: b.ejected,
    ejections: b.ejections,
    ejectionsByReason: Object.fromEntries(b.ejectionsByReason),
    consecutiveFailures: b.consecutiveFailures,
    consecutiveSuccesses: b.consecutiveSuccesses,
    passiveFailures: b.passiveFailures,
    probes: { passed: b.probesPassed, failed: b.probesFailed },
    healthCheck: b.check.enabled ? { path: b.check.path, method: b.check.method, interval: b.check.interval, timeout: b.check.timeout } : null,
  };
}
