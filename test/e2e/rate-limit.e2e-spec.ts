/**
 * Rate limits through the real proxy: counts within one request of the budget, the 429 and its
 * headers, independent keys, IPv6 /64 grouping, in-flight caps, dry run, allow-list, and the
 * Redis store with a real redis-server: two proxies sharing one limit, and Redis killed and
 * restarted mid-test.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { RunningProxymity } from '../../src/proxymity.js';
import { closeAll, startBackends, type DummyBackend } from '../fixtures/backend-server.js';
import { request } from '../helpers/http-client.js';
import { delta, scrape } from '../helpers/metrics.js';
import { pollUntil } from '../helpers/poll-until.js';
import { startProxy } from '../helpers/proxy.js';
import { redisClients, startRedis, type RedisProcess } from '../helpers/redis.js';
import { parseConfig } from '../../src/config/index.js';
import { ReloadService } from '../../src/reload/index.js';
import { withAdminPortZero } from '../helpers/processes.js';

interface Hammered {
  ok: number;
  limited: number;
  /** Date.now() when the loop started and ended, when the first answer came, when the last request was sent. */
  startedAt: number;
  endedAt: number;
  firstAnsweredAt: number;
  lastSentAt: number;
}

/** Sends requests one after another for `ms`; returns how many were allowed (200) and limited (429). */
async function hammer(url: string, ms: number, headers: Record<string, string> = {}): Promise<Hammered> {
  const startedAt = Date.now();
  let ok = 0;
  let limited = 0;
  let firstAnsweredAt = 0;
  let lastSentAt = startedAt;
  while (Date.now() - startedAt < ms) {
    lastSentAt = Date.now();
    const res = await request(url, { headers });
    if (firstAnsweredAt === 0) firstAnsweredAt = Date.now();
    if (res.status === 200) ok++;
    else if (res.status === 429) limited++;
    else throw new Error(`unexpected ${res.status}: ${res.body}`);
  }
  return { ok, limited, startedAt, endedAt: Date.now(), firstAnsweredAt, lastSentAt };
}

/**
 * The requests one or more hammer loops got allowed, against the limit's budget: burst plus rate
 * × the time between the first and the last request's arrival at the proxy. The client cannot
 * see those arrivals, only bounds on them: the first arrived before its answer came, and the
 * last after it was sent; both lie within the loops. So a slow machine widens the window the
 * count must fall in, instead of failing the test.
 */
function assertWithinBudget(runs: Hammered[], burst: number, perSecond: number, slack: number): void {
  const ok = runs.reduce((n, r) => n + r.ok, 0);
  const outer = Math.max(...runs.map((r) => r.endedAt)) - Math.min(...runs.map((r) => r.startedAt));
  const inner = Math.max(0, Math.max(...runs.map((r) => r.lastSentAt)) - Math.min(...runs.map((r) => r.firstAnsweredAt)));
  const most = burst + (perSecond * outer) / 1000 + slack;
  const least = burst + (perSecond * inner) / 1000 - slack;
  assert.ok(ok >= least && ok <= most, `allowed ${ok}, expected ${least.toFixed(1)}-${most.toFixed(1)} (burst ${burst} + ${perSecond}/s over ${inner}-${outer} ms)`);
}

describe('rate limits in memory', () => {
  let backends: DummyBackend[];
  let sut: RunningProxymity;

  before(async () => {
    backends = await startBackends(1);
    sut = await startProxy(
      backends,
      `rateLimit: {rate: 20, per: 1s, burst: 5, key: header:x-client, headers: true}
routes:
  - {match: {path: /ip/}, pool: default, rateLimit: {rate: 1, per: 1m, burst: 2, key: client-ip, allow: ["10.9.0.0/16"]}}
  - {match: {path: /conc/}, pool: default, rateLimit: {rate: 1000, per: 1s, key: header:x-client, maxConcurrent: 2}}
  - {match: {path: /dry/}, pool: default, rateLimit: {rate: 1, per: 1m, burst: 1, key: header:x-client, dryRun: true}}
  - {match: {path: /free/}, pool: default, rateLimit: false}
  - {match: {path: /combo/}, pool: default, rateLimit: {rate: 1, per: 1m, burst: 1, key: [cookie:sid, route], missingKey: deny}}
  - {pool: default}
healthCheck: {interval: 1h}
`,
      '  trustedProxies: [127.0.0.1]',
    );
  });
  after(async () => {
    await sut.close();
    await closeAll(backends);
  });

  it('allows burst + rate × time, within one request, then answers 429', async () => {
    const r = await hammer(`${sut.url}/a`, 1500, { 'x-client': 'alice' });
    assertWithinBudget([r], 5, 20, 1.5);
    assert.ok(r.limited > 0);
  });

  it('answers 429 with Retry-After and the RateLimit headers, and sends quota headers on allowed requests', async () => {
    const fresh = await request(`${sut.url}/h`, { headers: { 'x-client': 'hdr' } });
    assert.equal(fresh.status, 200);
    assert.equal(fresh.headers['ratelimit-policy'], '"global";q=5;w=1');
    assert.equal(fresh.headers.ratelimit, '"global";r=4;t=1');
    let limited;
    for (let i = 0; i < 10 && limited === undefined; i++) {
      const res = await request(`${sut.url}/h`, { headers: { 'x-client': 'hdr' } });
      if (res.status === 429) limited = res;
    }
    assert.ok(limited, 'no 429 within 10 requests');
    assert.equal(limited.headers['retry-after'], '1');
    assert.equal(limited.headers['ratelimit-policy'], '"global";q=5;w=1');
    assert.match(limited.headers.ratelimit as string, /^"global";r=0;t=\d+$/);
    assert.match(limited.body, /^429 Too Many Requests/);
  });

  it('keeps clients independent', async () => {
    for (let i = 0; i < 8; i++) await request(`${sut.url}/x`, { headers: { 'x-client': 'bob' } });
    assert.equal((await request(`${sut.url}/x`, { headers: { 'x-client': 'bob' } })).status, 429);
    assert.equal((await request(`${sut.url}/x`, { headers: { 'x-client': 'carol' } })).status, 200);
  });

  it('groups IPv6 clients by /64, and never limits the allow-list', async () => {
    const as = (xff: string) => request(`${sut.url}/ip/x`, { headers: { 'x-forwarded-for': xff } });
    assert.equal((await as('2001:db8:1:2::1')).status, 200);
    assert.equal((await as('2001:db8:1:2::ffff')).status, 200);
    assert.equal((await as('2001:db8:1:2:abcd::9')).status, 429, 'same /64: same bucket (burst 2)');
    assert.equal((await as('2001:db8:1:3::1')).status, 200, 'another /64');
    for (let i = 0; i < 5; i++) assert.equal((await as('10.9.4.4')).status, 200);
  });

  it('caps requests in flight per key (maxConcurrent)', async () => {
    backends[0].delayMs = 500;
    try {
      const statuses = await Promise.all(Array.from({ length: 4 }, () => request(`${sut.url}/conc/x`, { headers: { 'x-client': 'dave' } }).then((r) => r.status)));
      assert.deepEqual(statuses.sort(), [200, 200, 429, 429]);
      assert.equal((await request(`${sut.url}/conc/x`, { headers: { 'x-client': 'dave' } })).status, 200, 'slots are given back');
    } finally {
      backends[0].behave();
    }
  });

  it('counts but lets through in dry-run mode; a route with rateLimit: false is never limited', async () => {
    const before = await scrape(sut.adminUrl!);
    for (let i = 0; i < 4; i++) assert.equal((await request(`${sut.url}/dry/x`, { headers: { 'x-client': 'erin' } })).status, 200);
    for (let i = 0; i < 30; i++) assert.equal((await request(`${sut.url}/free/x`, { headers: { 'x-client': 'erin' } })).status, 200);
    const after = await scrape(sut.adminUrl!);
    assert.equal(delta(before, after, 'proxymity_rate_limit_decisions_total', { route: 'route-3', result: 'dry_run' }), 3);
    assert.equal(delta(before, after, 'proxymity_rate_limit_decisions_total', { route: 'route-3', result: 'allowed' }), 1);
  });

  it('keys on a cookie combined with the route, and denies requests without the cookie when missingKey is deny', async () => {
    const as = (cookie?: string) => request(`${sut.url}/combo/x`, { headers: cookie ? { cookie } : {} }).then((r) => r.status);
    assert.equal(await as(), 429);
    assert.equal(await as('theme=dark; sid=a1'), 200);
    assert.equal(await as('sid=a1'), 429);
    assert.equal(await as('sid=b2'), 200);
  });

  it('never limits /health', async () => {
    for (let i = 0; i < 30; i++) assert.equal((await request(`${sut.url}/health`, { headers: { 'x-client': 'alice' } })).status, 200);
  });
});

describe('rate limits in Redis', () => {
  let redis: RedisProcess;
  let backends: DummyBackend[];

  before(async () => {
    redis = await startRedis();
    backends = await startBackends(1);
  });
  after(async () => {
    await redis.stop().catch(() => undefined);
    await closeAll(backends);
  });

  const policy = (url: string, onStoreError: string) => `rateLimit: {rate: 10, per: 1s, burst: 5, key: header:x-client, store: redis, redis: {url: "${url}", timeout: 200ms}, onStoreError: ${onStoreError}}\nhealthCheck: {interval: 1h}\n`;

  it('enforces one combined limit across two proxies sharing one Redis', async () => {
    const a = await startProxy(backends, policy(redis.url, 'allow'));
    const b = await startProxy(backends, policy(redis.url, 'allow'));
    try {
      const [ra, rb] = await Promise.all([hammer(`${a.url}/s`, 1200, { 'x-client': 'shared' }), hammer(`${b.url}/s`, 1200, { 'x-client': 'shared' })]);
      // One budget for both: two proxies that each kept their own count would allow twice this.
      assertWithinBudget([ra, rb], 5, 10, 2);
      assert.ok(ra.ok > 0 && rb.ok > 0, 'each proxy served some');
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('follows onStoreError when Redis dies (allow, deny), counts the outage once, and recovers when it returns', async () => {
    const open = await startProxy(backends, policy(redis.url, 'allow'));
    const closed = await startProxy(backends, policy(redis.url, 'deny'));
    try {
      for (let i = 0; i < 8; i++) await request(`${open.url}/r`, { headers: { 'x-client': 'outage' } });
      assert.equal((await request(`${open.url}/r`, { headers: { 'x-client': 'outage' } })).status, 429, 'limited while Redis is up');
      const before = await scrape(open.adminUrl!);
      await redis.stop();
      for (let i = 0; i < 5; i++) {
        assert.equal((await request(`${open.url}/r`, { headers: { 'x-client': 'outage' } })).status, 200, 'fail open');
        const denied = await request(`${closed.url}/r`, { headers: { 'x-client': 'outage' } });
        assert.equal(denied.status, 503, 'fail closed');
        assert.equal(denied.headers['proxy-status'], 'proxymity; error=rate_limit_unavailable');
      }
      const during = await scrape(open.adminUrl!);
      assert.equal(delta(before, during, 'proxymity_rate_limit_store_errors_total'), 1, 'one outage, counted once');
      assert.equal(delta(before, during, 'proxymity_rate_limit_decisions_total', { route: 'route-1', result: 'store_error_allowed' }), 5);
      redis = await startRedis(redis.port);
      // ioredis reconnects by itself; then the limit holds again (and the fail-closed proxy serves again).
      await pollUntil(() => request(`${closed.url}/r2`, { headers: { 'x-client': 'after' } }).then((r) => r.status), (s) => s === 200, { timeoutMs: 10_000, what: 'Redis back' });
      let limited = false;
      for (let i = 0; i < 10 && !limited; i++) limited = (await request(`${open.url}/r3`, { headers: { 'x-client': 'after-2' } })).status === 429;
      assert.ok(limited, 'limited again after the outage');
    } finally {
      await open.close();
      await closed.close();
    }
  });

  it('moves a limit to another Redis on reload without failing the first requests, and disconnects from the old one', async () => {
    const other = await startRedis();
    const sut = await startProxy(backends, policy(redis.url, 'deny'));
    try {
      assert.ok((await redisClients(redis.port)) >= 1, 'connected to the first Redis');
      const yaml = `proxy: {host: 127.0.0.1, port: 0}\nbackend:\n  - name: b1\n    url: "${backends[0]!.url}"\n${policy(other.url, 'deny')}`;
      const result = sut.app.get(ReloadService).apply(parseConfig(withAdminPortZero(yaml), 'reload.yaml'), 'test');
      assert.equal(result.result, 'success', result.details.join('; '));
      // Right away, while the new connection is still being opened: the limit (fail closed) now
      // lives in the new Redis, so the burst of 5 is spent there, then 429. None is a 503.
      const statuses: number[] = [];
      for (let i = 0; i < 8; i++) statuses.push((await request(`${sut.url}/moved`, { headers: { 'x-client': 'moved' } })).status);
      assert.ok(statuses.slice(0, 5).every((s) => s === 200) && statuses.includes(429), statuses.join(','));
      await pollUntil(() => redisClients(redis.port), (n) => n === 0, { what: 'the old Redis client to be closed' });
      assert.ok((await redisClients(other.port)) >= 1, 'a client of the new Redis');
    } finally {
      await sut.close();
      await other.stop();
    }
  });
});
