import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DEFAULT_CHECK, makeBackends } from '../../test/helpers/backends.js';
import { Backend } from './backend.js';

describe(Backend.name, () => {
  it('ramps its effective weight linearly from 10% to full over the slow-start window', () => {
    const [sut] = makeBackends([{ id: 'a', weight: 10, slowStartMs: 20_000 }]);
    assert.equal(sut.effectiveWeight(5_000), 10, 'healthy since start: no ramp');
    sut.healthySince = 100_000;
    const at = (ms: number) => sut.effectiveWeight(100_000 + ms);
    assert.equal(at(0), 1, 'floor of 10%');
    assert.equal(at(1_000), 1, 'still at the floor below 10% of the window');
    assert.equal(at(5_000), 2.5);
    assert.equal(at(10_000), 5);
    assert.equal(at(15_000), 7.5);
    assert.equal(at(20_000), 10);
    assert.equal(at(60_000), 10);
  });

  it('has no ramp without slow start', () => {
    const [sut] = makeBackends([{ id: 'a', weight: 3 }]);
    sut.healthySince = 1000;
    assert.equal(sut.effectiveWeight(1000), 3);
  });

  it('parses its URL once: host, port, base path and IPv6 literals', () => {
    const [a] = makeBackends(['a']);
    assert.equal(a.hostname, '127.0.0.1');
    assert.equal(a.basePath, '');
    const v6 = new Backend({ name: 'v6', url: 'http://[::1]:8081/api/', enabled: true, weight: 1, backup: false }, 0, 0, { connectTimeoutMs: 1, readTimeoutMs: 1, idleTimeoutMs: 1, maxSockets: 1, maxFreeSockets: 1 }, DEFAULT_CHECK);
    assert.equal(v6.hostname, '::1');
    assert.equal(v6.port, 8081);
    assert.equal(v6.basePath, '/api');
  });
});
