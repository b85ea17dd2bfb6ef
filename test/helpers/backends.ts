/** Real Backend objects for strategy unit tests (their agents open no socket until used). */
import { Backend } from '../../src/backend/backend.js';
import { parseConfig } from '../../src/config/config.loader.js';

/** The default health check, as the config schema fills it in. */
export const DEFAULT_CHECK = parseConfig('backend:\n  - url: http://127.0.0.1:1\n').healthCheck;

export function makeBackends(specs: readonly (string | { id: string; weight?: number; backup?: boolean; maxConnections?: number; slowStartMs?: number })[]): Backend[] {
  return specs.map((spec, slot) => {
    const s = typeof spec === 'string' ? { id: spec } : spec;
    return new Backend(
      { name: s.id, url: `http://127.0.0.1:${10_000 + slot}`, enabled: true, weight: s.weight ?? 1, backup: s.backup ?? false, maxConnections: s.maxConnections },
      slot,
      s.slowStartMs ?? 0,
      { connectTimeoutMs: 1000, readTimeoutMs: 1000, idleTimeoutMs: 1000, maxSockets: 1, maxFreeSockets: 1 },
      DEFAULT_CHECK,
    );
  });
}

/** Deterministic uniform [0, 1) generator (mulberry32). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function shares(picks: readonly { id: string }[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const p of picks) out[p.id] = (out[p.id] ?? 0) + 1;
  for (const k of Object.keys(out)) out[k] /= picks.length;
  return out;
}
