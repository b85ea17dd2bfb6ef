import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Backend } from '../../backend/backend.js';
import { RoundRobinStrategy } from './round-robin.strategy.js';

const pool = (...ids: string[]) => ids.map((id) => ({ id }) as Backend);

describe(RoundRobinStrategy.name, () => {
  it('gives each of 3 backends exactly N of 3N picks, in order', () => {
    const sut = new RoundRobinStrategy();
    const p = pool('a', 'b', 'c');
    const counts = new Map<string, number>();
    const seq: string[] = [];
    for (let i = 0; i < 300; i++) {
      const id = sut.pick(p)!.id;
      counts.set(id, (counts.get(id) ?? 0) + 1);
      if (i < 6) seq.push(id);
    }
    assert.deepEqual(seq, ['a', 'b', 'c', 'a', 'b', 'c']);
    assert.deepEqual([...counts.values()], [100, 100, 100]);
  });

  it('returns undefined for an empty pool', () => {
    assert.equal(new RoundRobinStrategy().pick([]), undefined);
  });

  it('keeps rotating when the pool shrinks', () => {
    const sut = new RoundRobinStrategy();
    sut.pick(pool('a', 'b', 'c'));
    sut.pick(pool('a', 'b', 'c'));
    sut.pick(pool('a', 'b', 'c'));
    const small = pool('a', 'c');
    assert.deepEqual([sut.pick(small)!.id, sut.pick(small)!.id, sut.pick(small)!.id], ['a', 'c', 'a']);
  });
});
