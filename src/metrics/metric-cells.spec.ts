import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Registry } from 'prom-client';
import { BoundCounter, BoundHistogram } from './metric-cells.js';

describe(BoundCounter.name, () => {
  it('gives the same series for the same label values and counts per series', async () => {
    const sut = new BoundCounter('t_requests_total', 'help', ['backend', 'code'] as const);
    const a = sut.bind({ backend: 'b1', code: '200' });
    const b = sut.bind({ backend: 'b1', code: '502' });
    assert.equal(sut.bind({ code: '200', backend: 'b1' }), a);
    assert.notEqual(a, b);
    sut.inc(a);
    sut.inc(a);
    sut.inc(b, 3);
    const registry = new Registry();
    registry.registerMetric(sut as never);
    const text = await registry.metrics();
    assert.match(text, /^# TYPE t_requests_total counter$/m);
    assert.match(text, /^t_requests_total\{backend="b1",code="200"\} 2$/m);
    assert.match(text, /^t_requests_total\{backend="b1",code="502"\} 3$/m);
  });
});

describe(BoundHistogram.name, () => {
  it('exposes cumulative buckets, +Inf, sum and count in the Prometheus format', async () => {
    const sut = new BoundHistogram('t_seconds', 'help', ['method'] as const, [0.1, 1]);
    const get = sut.bind({ method: 'GET' });
    sut.observe(get, 0.05);
    sut.observe(get, 0.1); // le is inclusive
    sut.observe(get, 0.5);
    sut.observe(get, 7);
    assert.equal(sut.count(get), 4);
    const registry = new Registry();
    registry.registerMetric(sut as never);
    const text = await registry.metrics();
    assert.match(text, /^# TYPE t_seconds histogram$/m);
    assert.match(text, /^t_seconds_bucket\{method="GET",le="0.1"\} 2$/m);
    assert.match(text, /^t_seconds_bucket\{method="GET",le="1"\} 3$/m);
    assert.match(text, /^t_seconds_bucket\{method="GET",le="\+Inf"\} 4$/m);
    assert.match(text, /^t_seconds_sum\{method="GET"\} 7.65$/m);
    assert.match(text, /^t_seconds_count\{method="GET"\} 4$/m);
  });
});
