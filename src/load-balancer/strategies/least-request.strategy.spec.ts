import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { makeBackends, seededRandom, shares } from '../../../test/helpers/backends.js';
import { LeastConnectionsStrategy } from './least-connections.strategy.js';
import { PowerOfTwoStrategy } from './power-of-two.strategy.js';

describe(LeastConnectionsStrategy.name, () => {
  it('picks the backend with the fewest requests in flight', () => {
    const sut = new LeastConnectionsStrategy();
    const pool = makeBackends(['a', 'b', 'c']);
    pool[0].inFlight = 5;
    pool[1].inFlight = 1;
    pool[2].inFlight = 3;
    for (let i = 0; i < 5; i++) assert.equal(sut.pick(pool)!.id, 'b');
  });

  it('weighs in-flight counts by weight', () => {
    const sut = new LeastConnectionsStrategy();
    const pool = makeBackends([{ id: 'a', weight: 4 }, { id: 'b' }]);
    pool[0].inFlight = 6; // 1.5 per unit of weight
    pool[1].inFlight = 2; // 2 per unit of weight
    assert.equal(sut.pick(pool)!.id, 'a');
  });

  it('breaks ties round-robin, not by list order', () => {
    const sut = new LeastConnectionsStrategy();
    const pool = makeBackends(['a', 'b', 'c']);
    assert.deepEqual(Array.from({ length: 6 }, () => sut.pick(pool)!.id), ['a', 'b', 'c', 'a', 'b', 'c']);
  });

  it('spreads ties evenly whichever backend is busy', () => {
    const sut = new LeastConnectionsStrategy();
    const pool = makeBackends(['a', 'b', 'c']);
    pool[1].inFlight = 1;
    const s = shares(Array.from({ length: 3000 }, () => sut.pick(pool)!));
    assert.deepEqual(s, { a: 0.5, c: 0.5 });
  });

  it('shares idle backends by weight (5:1 gives 5:1)', () => {
    const sut = new LeastConnectionsStrategy();
    const pool = makeBackends([{ id: 'a', weight: 5 }, { id: 'b' }]);
    const s = shares(Array.from({ length: 6000 }, () => sut.pick(pool)!));
    assert.equal(s.a, 5 / 6);
  });

  it('follows uneven load as requests start and finish', () => {
    const sut = new LeastConnectionsStrategy();
    const pool = makeBackends(['fast', 'slow']);
    // "slow" never finishes its requests; "fast" finishes each at once.
    let slowPicks = 0;
    for (let i = 0; i < 100; i++) {
      const b = sut.pick(pool)!;
      if (b.id === 'slow') {
        slowPicks++;
        b.inFlight++;
      }
    }
    assert.equal(slowPicks, 1);
  });
});

describe(PowerOfTwoStrategy.name, () => {
  it('spreads evenly over equal, idle backends (±2% over 100 000 picks)', () => {
    const sut = new PowerOfTwoStrategy(seededRandom(7));
    const pool = makeBackends(['a', 'b', 'c', 'd']);
    const s = shares(Array.from({ length: 100_000 }, () => sut.pick(pool)!));
    for (const id of ['a', 'b', 'c', 'd']) assert.ok(Math.abs(s[id] - 0.25) < 0.02, `${id}: ${s[id]}`);
  });

  it('never picks the busiest backend when another is among the two choices', () => {
    const sut = new PowerOfTwoStrategy(seededRandom(1));
    const pool = makeBackends(['a', 'b', 'c']);
    pool[2].inFlight = 10;
    const s = shares(Array.from({ length: 30_000 }, () => sut.pick(pool)!));
    assert.equal(s.c, undefined);
  });

  it('always picks two distinct backends', () => {
    // random() always 0 would pick index 0 twice without the distinctness rule.
    const sut = new PowerOfTwoStrategy(() => 0);
    const pool = makeBackends(['a', 'b']);
    pool[0].inFlight = 3;
    assert.equal(sut.pick(pool)!.id, 'b');
  });
});
