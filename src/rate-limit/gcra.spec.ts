import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { gcra, MemoryGcraStore } from './gcra.js';

describe('gcra', () => {
  const p = { intervalMs: 100, capacityMs: 500 }; // 10/s, burst 5

  it('allows a burst of `burst` requests at once, then one per interval', () => {
    const sut = new MemoryGcraStore(1000);
    const at0 = Array.from({ length: 7 }, () => sut.decide('k', p, 0).allowed);
    assert.deepEqual(at0, [true, true, true, true, true, false, false]);
    assert.equal(sut.decide('k', p, 99).allowed, false);
    assert.equal(sut.decide('k', p, 100).allowed, true);
    assert.equal(sut.decide('k', p, 100).allowed, false);
  });

  it('allows the whole burst when the interval is not a whole number of ms (no float drift)', () => {
    for (const rate of [3, 7, 9, 11, 13]) {
      const q = { intervalMs: 1000 / rate, capacityMs: (1000 / rate) * rate };
      const sut = new MemoryGcraStore(10);
      const now = 1_764_530_000_000;
      const allowed = Array.from({ length: rate + 1 }, () => sut.decide('k', q, now).allowed).filter(Boolean).length;
      assert.equal(allowed, rate, `rate ${rate}`);
    }
  });

  it('reports remaining quota, retry-after and reset', () => {
    const first = gcra(0, 0, p).result;
    assert.deepEqual(first, { allowed: true, remaining: 4, retryAfterMs: 0, resetMs: 100 });
    const full = gcra(500, 0, p).result;
    assert.deepEqual(full, { allowed: false, remaining: 0, retryAfterMs: 100, resetMs: 500 });
  });

  it('keeps at most maxKeys buckets under a flood of 100 000 distinct keys', () => {
    const sut = new MemoryGcraStore(10_000);
    for (let i = 0; i < 100_000; i++) sut.decide(`client-${i}`, p, 0);
    assert.equal(sut.size, 10_000);
    // The most recent keys are the ones kept.
    assert.equal(sut.decide('client-99999', p, 0).remaining, 3);
  });
});
