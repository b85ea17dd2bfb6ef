import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import { describe, it } from 'node:test';
import { BackendRegistry } from '../backend/backend-registry.service.js';
import type { Backend } from '../backend/backend.js';
import { parseConfig } from '../config/config.loader.js';
import { LoadBalancerService } from './load-balancer.service.js';
import { STRATEGY_NAMES } from './strategy.registry.js';

// Real collaborators: the config loader and the registry (its agents open no socket here).
function build(strategy: string, extra = '') {
  const cfg = parseConfig(`backend:\n${[1, 2, 3, 4].map((i) => `  - {name: b${i}, url: "http://127.0.0.1:${9000 + i}"}`).join('\n')}\n  - {name: spare, url: "http://127.0.0.1:9009", backup: true}\nloadBalancer: {strategy: ${strategy}, hash: {key: client-ip}}\n${extra}`);
  const registry = new BackendRegistry(cfg);
  const sut = new LoadBalancerService(registry, cfg);
  return { registry, sut, pool: sut.pool('default')! };
}
const req = { headers: {}, url: '/', socket: { remoteAddress: '192.0.2.1' } } as unknown as IncomingMessage;

describe(LoadBalancerService.name, () => {
  for (const strategy of STRATEGY_NAMES) {
    it(`${strategy}: a retry never goes back to a backend already tried, and ends at the backup`, () => {
      const { sut, registry, pool } = build(strategy);
      const tried: Backend[] = [];
      for (let i = 0; i < 4; i++) {
        const b = sut.pickExcluding(pool, req, tried)!;
        assert.ok(!tried.includes(b), `${b.id} picked twice`);
        assert.equal(b.backup, false);
        tried.push(b);
      }
      assert.equal(sut.pickExcluding(pool, req, tried)?.id, 'spare');
      assert.equal(sut.pickExcluding(pool, req, [...tried, registry.all[4]]), undefined);
      registry.onApplicationShutdown();
    });
  }

  it('skips backends at maxConnections and falls back to the backup when all primaries are at their cap', () => {
    const { sut, registry, pool } = build('round-robin');
    const [b1, b2, b3, b4] = registry.all;
    for (const b of [b1, b2, b3, b4]) (b as { maxConnections: number }).maxConnections = 1;
    b1.inFlight = 1;
    b2.inFlight = 1;
    const picks = new Set(Array.from({ length: 6 }, () => sut.pick(pool, req)!.id));
    assert.deepEqual([...picks].sort(), ['b3', 'b4']);
    b3.inFlight = 1;
    b4.inFlight = 1;
    assert.equal(sut.pick(pool, req)?.id, 'spare');
    registry.onApplicationShutdown();
  });
});
