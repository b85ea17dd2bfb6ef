import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { makeBackends, seededRandom, shares } from '../../../test/helpers/backends.js';
import { RandomStrategy } from './random.strategy.js';

describe(RandomStrategy.name, () => {
  it('follows weights 1,2,3 within ±2% over 100 000 picks', () => {
    const sut = new RandomStrategy(seededRandom(42));
    const pool = makeBackends([{ id: 'a', weight: 1 }, { id: 'b', weight: 2 }, { id: 'c', weight: 3 }]);
    const s = shares(Array.from({ length: 100_000 }, () => sut.pick(pool)!));
    assert.ok(Math.abs(s.a - 1 / 6) < 0.02, `a ${s.a}`);
    assert.ok(Math.abs(s.b - 2 / 6) < 0.02, `b ${s.b}`);
    assert.ok(Math.abs(s.c - 3 / 6) < 0.02, `c ${s.c}`);
  });

  it('is uniform over equal weights', () => {
    const sut = new RandomStrategy(seededRandom(3));
    const pool = makeBackends(['a', 'b']);
    const s = shares(Array.from({ length: 100_000 }, () => sut.pick(pool)!));
    assert.ok(Math.abs(s.a - 0.5) < 0.02);
  });

  it('returns undefined for an empty pool', () => {
    assert.equal(new RandomStrategy(Math.random).pick([]), undefined);
  });
});
