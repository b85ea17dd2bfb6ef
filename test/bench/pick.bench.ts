/** Micro-benchmark of every registered strategy's pick(): picks per second with 3 and 100 backends. */
import type { IncomingMessage } from 'node:http';
import type { Backend } from '../../src/backend/index.js';
import { STRATEGIES } from '../../src/load-balancer/index.js';

export interface PickResult {
  strategy: string;
  backends: number;
  picksPerSecond: number;
}

/** A backend as strategies see it (no sockets: only what pick() reads). */
function benchBackend(i: number): Backend {
  const weight = 1 + (i % 2);
  return { id: `b${i}`, slot: i, weight, inFlight: i % 3, healthy: true, enabled: true, backup: false, maxConnections: Infinity, slowStartMs: 0, effectiveWeight: () => weight } as unknown as Backend;
}

export function benchPicks(durationMs = 400): PickResult[] {
  const out: PickResult[] = [];
  const req = { headers: { cookie: 'sid=abc' }, url: '/path?user=1', socket: { remoteAddress: '10.0.0.1' } } as unknown as IncomingMessage;
  for (const [name, factory] of STRATEGIES) {
    for (const n of [3, 100]) {
      const pool = Array.from({ length: n }, (_, i) => benchBackend(i));
      const sut = factory({ strategy: name, hash: { key: 'client-ip' }, slowStart: 0 } as never, { random: Math.random, now: Date.now, backends: pool });
      let sink = 0;
      for (let i = 0; i < 50_000; i++) sink += sut.pick(pool, req) === undefined ? 1 : 0; // warm up
      let picks = 0;
      const start = performance.now();
      let elapsed = 0;
      while (elapsed < durationMs) {
        for (let i = 0; i < 10_000; i++) sink += sut.pick(pool, req) === undefined ? 1 : 0;
        picks += 10_000;
        elapsed = performance.now() - start;
      }
      if (sink > 0) throw new Error(`${name} returned undefined for a non-empty pool`);
      out.push({ strategy: name, backends: n, picksPerSecond: Math.round((picks / elapsed) * 1000) });
    }
  }
  return out;
}
