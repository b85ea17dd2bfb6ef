import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { makeBackends } from '../../../test/helpers/backends.js';
import { RoundRobinStrategy } from './round-robin.strategy.js';

describe(RoundRobinStrategy.name, () => {
  it('gives each of 3 backends exactly N of 3N picks, in order', () => {
    const sut = new RoundRobinStrategy();
    const pool = makeBackends(['a', 'b', 'c']);
    const counts = new Map<string, number>();
    const seq: string[] = [];
    for (let i = 0; i < 300; i++) {
      const id = sut.pick(pool)!.id;
      counts.set(id, (counts.get(id) ?? 0) + 1);
      if (i < 6) seq.push(id);
    }
    assert.deepEqual(seq, ['a', 'b', 'c', 'a', 'b', 'c']);
    assert.deepEqual([...counts.values()], [100, 100, 100]);
  });

  it('interleaves weights 5,1,1 smoothly: a a b a c a a', () => {
    const sut = new RoundRobinStrategy();
    const pool = makeBackends([{ id: 'a', weight: 5 }, { id: 'b' }, { id: 'c' }]);
    const seq = Array.from({ length: 14 }, () => sut.pick(pool)!.id).join(' ');
    assert.equal(seq, 'a a b a c a a a a b a c a a');
  });

  it('gives weighted backends exactly their share over a full cycle', () => {
    const sut = new RoundRobinStrategy();
    const pool = makeBackends([{ id: 'a', weight: 3 }, { id: 'b', weight: 2 }, { id: 'c', weight: 1 }]);
    const counts: Record<string, number> = {};
    for (let i = 0; i < 600; i++) {
      const id = sut.pick(pool)!.id;
      counts[id] = (counts[id] ?? 0) + 1;
    }
    assert.deepEqual(counts, { a: 300, b: 200, c: 100 });
  });

  it('returns undefined for an empty pool', () => {
    assert.equal(new RoundRobinStrategy().pick([]), undefined);
  });

  it('keeps rotating when the pool shrinks', () => {
    const sut = new RoundRobinStrategy();
    const all = makeBackends(['a', 'b', 'c']);
    for (let i = 0; i < 3; i++) sut.pick(all);
    const small = [all[0], all[2]];
    assert.deepEqual([sut.pick(small)!.id, sut.pick(small)!.id, sut.pick(small)!.id], ['a', 'c', 'a']);
  });

  it('ramps a recovering backend with slow start', () => {
    let now = 1_000_000;
    const sut = new RoundRobinStrategy(() => now);
    const pool = makeBackends([{ id: 'a', slowStartMs: 10_000 }, { id: 'b', slowStartMs: 10_000 }]);
    pool[1].healthySince = now; // b just recovered: starts at 10% of its weight
    const early = Array.from({ length: 110 }, () => sut.pick(pool)!.id).filter((id) => id === 'b').length;
    assert.ok(early >= 8 && early <= 12, `b got ${early} of 110 at the start of its ramp`);
    now += 10_000; // ramp over
    const later = Array.from({ length: 100 }, () => sut.pick(pool)!.id).filter((id) => id === 'b').length;
    assert.ok(later >= 49 && later <= 51, `b got ${later} of 100 after its ramp`);
  });
});
