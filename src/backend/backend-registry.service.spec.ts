import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseConfig } from '../config/config.loader.js';
import { BackendRegistry } from './backend-registry.service.js';

// Real collaborators: the config loader; the registry's agents open no socket here.
function build(outlier: string, n = 4) {
  const cfg = parseConfig(`backend:\n${Array.from({ length: n }, (_, i) => `  - {name: b${i + 1}, url: "http://127.0.0.1:${9100 + i}"}`).join('\n')}\noutlierDetection: ${outlier}\n`);
  return new BackendRegistry(cfg);
}

describe(BackendRegistry.name, () => {
  it('ejects after consecutiveFailures in a row, and a success resets the run', () => {
    const sut = build('{consecutiveFailures: 3}');
    const b = sut.all[0];
    sut.reportPassiveFailure(b, 'connection_terminated', 'reset');
    sut.reportPassiveFailure(b, 'connection_terminated', 'reset');
    sut.reportSuccess(b);
    sut.reportPassiveFailure(b, 'connection_terminated', 'reset');
    sut.reportPassiveFailure(b, 'connection_terminated', 'reset');
    assert.equal(b.healthy, true);
    sut.reportPassiveFailure(b, 'connection_terminated', 'reset');
    assert.equal(b.healthy, false);
    assert.equal(sut.healthy.length, 3);
    sut.onApplicationShutdown();
  });

  it('ejects for baseEjectionTime × ejections, capped at maxEjectionTime, and releases when it is over', () => {
    const sut = build('{baseEjectionTime: 1s, maxEjectionTime: 2500ms}');
    const b = sut.all[0];
    const lengths: number[] = [];
    for (let i = 0; i < 3; i++) {
      const before = Date.now();
      sut.reportPassiveFailure(b, 'connection_refused', 'refused');
      lengths.push(Math.round((b.ejectedUntil - before) / 100) * 100);
      sut.releaseExpiredEjection(b, b.ejectedUntil - 1);
      assert.equal(b.healthy, false, 'not before its time');
      sut.releaseExpiredEjection(b, b.ejectedUntil);
      assert.equal(b.healthy, true);
    }
    assert.deepEqual(lengths, [1000, 2000, 2500]);
    assert.match(b.lastChange!.reason, /ejection time over/);
    sut.onApplicationShutdown();
  });

  it('never ejects more than maxEjectionPercent of the backends, but always at least one', () => {
    const sut = build('{maxEjectionPercent: 50}');
    for (const b of sut.all) sut.reportPassiveFailure(b, 'connection_refused', 'refused');
    assert.equal(sut.healthy.length, 2);
    sut.onApplicationShutdown();
    const none = build('{maxEjectionPercent: 0}');
    for (const b of none.all) none.reportPassiveFailure(b, 'connection_refused', 'refused');
    assert.equal(none.healthy.length, 3, 'one may always be ejected');
    none.onApplicationShutdown();
  });
});
