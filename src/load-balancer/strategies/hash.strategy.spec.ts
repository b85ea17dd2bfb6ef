import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import { describe, it } from 'node:test';
import { makeBackends, shares } from '../../../test/helpers/backends.js';
import { compileKey, cookieValue } from './hash-key.js';
import { HashStrategy } from './hash.strategy.js';

const byHeader = (v: string) => ({ headers: { 'x-user': v } }) as unknown as IncomingMessage;
const users = Array.from({ length: 20_000 }, (_, i) => `user-${i}`);
const manyUsers = Array.from({ length: 100_000 }, (_, i) => `user-${i}`);

describe(HashStrategy.name, () => {
  it('sends the same key to the same backend every time', () => {
    const pool = makeBackends(['a', 'b', 'c']);
    const sut = HashStrategy.fromSpec(pool, 'header:X-User', undefined);
    for (const u of users.slice(0, 200)) assert.equal(sut.pick(pool, byHeader(u)), sut.pick(pool, byHeader(u)));
  });

  it('spreads 100 000 keys evenly, within ±2% of a third each', () => {
    const pool = makeBackends(['a', 'b', 'c']);
    const sut = HashStrategy.fromSpec(pool, 'header:x-user', undefined);
    const s = shares(manyUsers.map((u) => sut.pick(pool, byHeader(u))!));
    for (const id of ['a', 'b', 'c']) assert.ok(Math.abs(s[id] - 1 / 3) < 0.02, `${id}: ${s[id]}`);
  });

  it('gives weighted backends their share of keys (weights 3:1, within ±2%)', () => {
    const pool = makeBackends([{ id: 'a', weight: 3 }, { id: 'b' }]);
    const sut = HashStrategy.fromSpec(pool, 'header:x-user', undefined);
    const s = shares(manyUsers.map((u) => sut.pick(pool, byHeader(u))!));
    assert.ok(Math.abs(s.a - 0.75) < 0.02, `a: ${s.a}`);
  });

  it('moves about 1/N of the keys when a backend is added', () => {
    const four = makeBackends(['a', 'b', 'c', 'd']);
    const three = four.slice(0, 3);
    const before = HashStrategy.fromSpec(three, 'header:x-user', undefined);
    const after = HashStrategy.fromSpec(four, 'header:x-user', undefined);
    let moved = 0;
    for (const u of users) {
      const x = before.pick(three, byHeader(u))!;
      const y = after.pick(four, byHeader(u))!;
      if (x !== y) {
        moved++;
        assert.equal(y.id, 'd', 'keys only move to the new backend');
      }
    }
    const fraction = moved / users.length;
    assert.ok(Math.abs(fraction - 0.25) < 0.05, `moved ${fraction}`);
  });

  it('moves an unhealthy backend\'s keys to a deterministic next choice and back on recovery', () => {
    const all = makeBackends(['a', 'b', 'c']);
    const sut = HashStrategy.fromSpec(all, 'header:x-user', undefined);
    const home = new Map(users.map((u) => [u, sut.pick(all, byHeader(u))!]));
    const withoutB = [all[0], all[2]];
    const away = new Map(users.map((u) => [u, sut.pick(withoutB, byHeader(u))!]));
    for (const u of users) {
      if (home.get(u)!.id !== 'b') assert.equal(away.get(u), home.get(u), 'keys of healthy backends stay');
      else assert.notEqual(away.get(u)!.id, 'b');
      assert.equal(sut.pick(withoutB, byHeader(u)), away.get(u), 'the next choice is deterministic');
    }
    for (const u of users) assert.equal(sut.pick(all, byHeader(u)), home.get(u), 'keys come back');
  });

  for (const weights of [[1, 1, 1, 1], [3, 1, 1, 1]]) {
    it(`never lets one backend exceed balanceFactor × its weighted share of the load (weights ${weights.join(',')})`, () => {
      const pool = makeBackends(weights.map((w, i) => ({ id: `b${i}`, weight: w })));
      const sut = HashStrategy.fromSpec(pool, 'header:x-user', 1.25);
      const totalWeight = weights.reduce((a, b) => a + b, 0);
      // One hot key, 400 concurrent requests that all stay in flight.
      for (let i = 0; i < 400; i++) {
        const b = sut.pick(pool, byHeader('hot'))!;
        b.inFlight++;
        const total = pool.reduce((n, x) => n + x.inFlight, 0);
        for (const x of pool) {
          const cap = Math.ceil(((1.25 * total) / totalWeight) * x.weight);
          assert.ok(x.inFlight <= cap, `${x.id} has ${x.inFlight} > cap ${cap} at request ${i}`);
        }
      }
    });
  }

  it('spreads requests without the key round-robin', () => {
    const pool = makeBackends(['a', 'b']);
    const sut = HashStrategy.fromSpec(pool, 'header:x-user', undefined);
    const none = { headers: {} } as IncomingMessage;
    assert.deepEqual([sut.pick(pool, none)!.id, sut.pick(pool, none)!.id], ['a', 'b']);
  });
});

describe('compileKey', () => {
  const req = { url: '/cart/view?user=42&x=1', headers: { cookie: 'a=1; sid=xyz; b=2', 'x-tenant': 'acme' }, socket: { remoteAddress: '192.0.2.9' } } as unknown as IncomingMessage;

  it('reads each kind of key', () => {
    assert.equal(compileKey('client-ip')(req), '192.0.2.9');
    assert.equal(compileKey('path')(req), '/cart/view');
    assert.equal(compileKey('header:X-Tenant')(req), 'acme');
    assert.equal(compileKey('cookie:sid')(req), 'xyz');
    assert.equal(compileKey('query:user')(req), '42');
    assert.equal(compileKey('query:missing')(req), undefined);
  });

  it('does not confuse cookies whose names share a prefix', () => {
    assert.equal(cookieValue('sidx=1; sid=2', 'sid'), '2');
    assert.equal(cookieValue('xsid=1', 'sid'), undefined);
  });
});
