/**
 * Bounded soak: 10 000 requests through the real proxy while backends misbehave at random
 * (resets, dying mid-body, garbage, slow answers) and clients abort at random. Afterwards no
 * request is stuck in flight, no client connection is left open, and the heap is back near
 * its baseline. Real: app, sockets, backends.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { describe, it } from 'node:test';
import v8 from 'node:v8';
import vm from 'node:vm';
import { BackendRegistry } from '../../src/backend/index.js';
import { ProxyEngine } from '../../src/proxy/index.js';
import { pollUntil } from '../helpers/poll-until.js';
import { seededRandom } from '../helpers/backends.js';
import { proxyFixture } from '../helpers/proxy.js';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

const TOTAL = 10_000;
const CONCURRENCY = 32;
const DEADLINE_MS = 90_000;

describe('soak with random faults on both sides', () => {
  const fx = proxyFixture(3, 'healthCheck: {enabled: false}\noutlierDetection: {consecutiveFailures: 5, baseEjectionTime: 200ms}\nupstream: {timeout: 300ms}');

  it(`serves ${TOTAL} requests, every one with an outcome, and leaks nothing`, async () => {
    const random = seededRandom(2026);
    const engine = fx.sut.app.get(ProxyEngine);
    const registry = fx.sut.app.get(BackendRegistry);
    const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
    gc();
    const heapBefore = process.memoryUsage().heapUsed;
    const outcomes = new Map<string, number>();
    const count = (k: string) => outcomes.set(k, (outcomes.get(k) ?? 0) + 1);
    const deadline = Date.now() + DEADLINE_MS;
    let next = 0;

    const one = (): Promise<void> =>
      new Promise((resolve) => {
        const r = random();
        const b = fx.backends[Math.floor(random() * fx.backends.length)];
        // Backend-side faults, queued on a random backend (whichever request meets them).
        if (r < 0.03) b.failNext('reset');
        else if (r < 0.05) b.failNext('drop-mid-body');
        else if (r < 0.06) b.failNext('garbage');
        else if (r < 0.07) b.failNext('hang');
        const path = r < 0.5 ? '/' : r < 0.8 ? '/bytes/20000' : `/delay/${Math.floor(random() * 20)}`;
        const method = random() < 0.2 ? 'POST' : 'GET';
        const abortAfter = random() < 0.05 ? Math.floor(random() * 30) : -1; // client-side aborts
        const req = http.request(`${fx.sut.url}${path}`, { method, agent }, (res) => {
          res.on('data', () => undefined);
          res.on('end', () => {
            count(String(res.statusCode));
            resolve();
          });
          res.on('error', () => {
            count('cut');
            resolve();
          });
        });
        req.on('error', () => {
          count(abortAfter >= 0 ? 'client-abort' : 'error');
          resolve();
        });
        if (abortAfter >= 0) setTimeout(() => req.destroy(), abortAfter);
        req.end(method === 'POST' ? 'x'.repeat(2000) : undefined);
      });

    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < TOTAL && Date.now() < deadline) {
          next++;
          await one();
        }
      }),
    );
    agent.destroy();
    fx.backends.forEach((b) => b.behave());
    const total = [...outcomes.values()].reduce((a, b) => a + b, 0);
    assert.equal(total, TOTAL, `every request has an outcome: ${JSON.stringify([...outcomes])}`);
    for (const k of outcomes.keys()) assert.ok(['200', '502', '503', '504', 'cut', 'client-abort', 'error'].includes(k), `unexpected outcome ${k}`);
    assert.ok((outcomes.get('200') ?? 0) > TOTAL * 0.8, `most requests succeed: ${JSON.stringify([...outcomes])}`);

    await pollUntil(() => engine.inFlight, (n) => n === 0, { timeoutMs: 5000, what: 'no request in flight' });
    await pollUntil(() => registry.all.map((b) => b.inFlight).join(','), (s) => s === '0,0,0', { timeoutMs: 5000, what: 'no backend in-flight count left' });
    const open = () => new Promise<number>((resolve) => fx.sut.server.getConnections((_e, n) => resolve(n)));
    await pollUntil(open, (n) => n === 0, { timeoutMs: 5000, what: 'client connections closed' });
    // Upstream connections left are only idle pooled ones, within the pool's bound.
    for (const b of fx.backends) assert.ok(b.openConnections <= 64, `${b.name} has ${b.openConnections} connections`);

    gc();
    const growthMiB = (process.memoryUsage().heapUsed - heapBefore) / 1024 / 1024;
    assert.ok(growthMiB < 20, `heap grew by ${growthMiB.toFixed(1)} MiB`);
  });
});
