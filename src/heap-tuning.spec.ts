import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { growingPercentFor, HEADROOM_BYTES } from './heap-tuning.js';

const MIB = 1024 * 1024;

describe('growingPercentFor', () => {
  it('leaves at least the headroom above a small live size, in steps of 10%', () => {
    for (const live of [12, 25, 40, 64, 100, 127]) {
      const percent = growingPercentFor(live * MIB);
      assert.equal(percent % 10, 0);
      assert.ok(percent <= 400);
      if (percent < 400) assert.ok((live * MIB * percent) / 100 >= HEADROOM_BYTES, `${live} MiB -> ${percent}%`);
    }
    assert.equal(growingPercentFor(25 * MIB), 260);
    assert.equal(growingPercentFor(64 * MIB), 100);
    assert.equal(growingPercentFor(100 * MIB), 70);
  });

  it('caps the factor for a tiny heap', () => {
    assert.equal(growingPercentFor(10 * MIB), 400);
    assert.equal(growingPercentFor(0), 400);
  });

  it('leaves the factor to V8 from 128 MiB of live objects on', () => {
    assert.equal(growingPercentFor(128 * MIB), 0);
    assert.equal(growingPercentFor(1024 * MIB), 0);
  });
});
