import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { growingPercentFor, HEADROOM_BYTES, operatorFlags } from './heap-tuning.js';

const MIB = 1024 * 1024;

describe(growingPercentFor.name, () => {
  it('leaves at least the headroom above the live size, in steps of 10%', () => {
    for (const live of [16, 25, 40, 64, 100, 128, 300, 639]) {
      const percent = growingPercentFor(live * MIB);
      assert.equal(percent % 10, 0);
      assert.ok((live * MIB * percent) / 100 >= HEADROOM_BYTES, `${live} MiB -> ${percent}%`);
    }
    assert.equal(growingPercentFor(25 * MIB), 280);
    assert.equal(growingPercentFor(64 * MIB), 110);
    assert.equal(growingPercentFor(100 * MIB), 70);
    assert.equal(growingPercentFor(128 * MIB), 60);
    assert.equal(growingPercentFor(639 * MIB), 20);
  });

  it('caps the factor for a tiny heap', () => {
    assert.equal(growingPercentFor(10 * MIB), 400);
    assert.equal(growingPercentFor(0), 400);
  });

  it('leaves the factor to V8 from 640 MiB of live objects on, where its smallest (1.1) leaves the headroom', () => {
    assert.equal(growingPercentFor(640 * MIB), 0);
    assert.equal(growingPercentFor(4096 * MIB), 0);
  });
});

describe(operatorFlags.name, () => {
  it('finds the young-generation flags on the command line, in either spelling, and in NODE_OPTIONS', () => {
    assert.deepEqual(operatorFlags(['--max-semi-space-size=8'], undefined), { young: true, growing: false });
    assert.deepEqual(operatorFlags(['--semi_space_growth_factor=2'], undefined), { young: true, growing: false });
    assert.deepEqual(operatorFlags([], '--max-old-space-size=512 --max-semi-space-size=4'), { young: true, growing: false });
  });

  it('finds the flags that set the growing factor', () => {
    assert.deepEqual(operatorFlags(['--heap-growing-percent=0'], undefined), { young: false, growing: true });
    assert.deepEqual(operatorFlags(['--heap_growing_percent=50'], undefined), { young: false, growing: true });
    assert.deepEqual(operatorFlags(['--predictable-gc-schedule'], ''), { young: false, growing: true });
  });

  it('ignores everything else', () => {
    assert.deepEqual(operatorFlags(['--max-old-space-size=512', '--enable-source-maps', '--predictable-x'], '--trace-warnings'), { young: false, growing: false });
  });
});
