/**
 * The response cache through the real proxy and a real scripted origin: what is stored and
 * served (RFC 9111 for a shared cache), Vary, revalidation, client conditionals, HEAD from GET,
 * stale-while-revalidate and stale-if-error, request collapsing, invalidation, purge, size
 * bounds, per-route switches and metrics.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import { after, before, describe, it } from 'node:test';
import { parseConfig } from '../../src/config/index.js';
import { startProxymity, type RunningProxymity } from '../../src/proxymity.js';
import { ScriptedOrigin } from '../fixtures/scripted-origin.js';
import { makeTestCa } from '../helpers/certs.js';
import { h2Request, request, type TestResponse } from '../helpers/http-client.js';
import { delta, sample, scrape } from '../helpers/metrics.js';
import { pollUntil } from '../helpers/poll-until.js';
import { withAdminPortZero } from '../helpers/processes.js';

const TOKEN = 'cache-test-admin-token-0123456789';

function cacheConfig(origin: string, cacheYaml = '', consecutiveFailures = 1000): string {
  return `
proxy: {host: 127.0.0.1, port: 0}
healthCheck: {enabled: false}
outlierDetection: {consecutiveFailures: ${consecutiveFailures}}
retry: {attempts: 1}
admin: {token: ${TOKEN}}
cache:
  enabled: true
${cacheYaml}
pools:
  origin:
    backends:
      - {name: origin, url: "${origin}"}
routes:
  - name: uncached
    match: {path: /nocache/}
    pool: origin
    cache: false
  - name: writes
    match: {path: /w/, methods: [POST, PUT, DELETE, PATCH]}
    pool: origin
    cache: false
  - name: canary
    match: {headers: {x-canary: "1"}}
    pool: origin
    addPrefix: /canary
  - name: all
    pool: origin
`;
}

async function start(origin: ScriptedOrigin, cacheYaml = '', consecutiveFailures = 1000): Promise<RunningProxymity> {
  return startProxymity(parseConfig(withAdminPortZero(cacheConfig(origin.url, cacheYaml, consecutiveFailures)), 'cache.yaml'), { logger: false });
}

const status = (r: TestResponse): string => String(r.headers['cache-status'] ?? '');
const HTTP_DATE_PAST = (secondsAgo: number): string => new Date(Date.now() - secondsAgo * 1000).toUTCString();

describe('ResponseCache (e2e)', () => {
  let origin: ScriptedOrigin;
  let sut: RunningProxymity;
  const get = (path: string, headers: http.OutgoingHttpHeaders = {}, method = 'GET') => request(sut.url + path, { headers, method });

  before(async () => {
    origin = await new ScriptedOrigin().listen();
    sut = await start(origin);
  });
  after(async () => {
    await sut.close();
    await origin.close();
  });

  describe('storing and serving', () => {
    it('serves a max-age response from the cache with Age and Cache-Status, and each request keeps its own request id', async () => {
      origin.on('/fresh', (_req, n) => ({ headers: { 'cache-control': 'max-age=60', 'x-n': String(n) }, body: `version ${n}` }));
      const first = await get('/fresh');
      assert.equal(first.body, 'version 1');
      assert.match(status(first), /^Proxymity; fwd=uri-miss; fwd-status=200; stored$/);
      const second = await get('/fresh');
      assert.equal(second.body, 'version 1');
      assert.match(status(second), /^Proxymity; hit; ttl=(59|60)$/);
      assert.match(String(second.headers.age), /^\d+$/);
      assert.equal(second.headers['content-length'], '9');
      assert.notEqual(second.headers['x-request-id'], first.headers['x-request-id']);
      assert.equal(origin.count('/fresh'), 1);
    });

    it('keys on the host: the same path on another host is another object', async () => {
      origin.on('/by-host', (req) => ({ headers: { 'cache-control': 'max-age=60' }, body: String(req.headers.host) }));
      assert.equal((await get('/by-host', { host: 'a.example' })).body, 'a.example');
      assert.equal((await get('/by-host', { host: 'b.example' })).body, 'b.example');
      assert.equal((await get('/by-host', { host: 'a.example' })).body, 'a.example');
      assert.equal(origin.count('/by-host'), 2);
    });

    it('uses s-maxage over max-age for a shared cache', async () => {
      origin.on('/smaxage', { headers: { 'cache-control': 'max-age=0, s-maxage=60' }, body: 'shared' });
      await get('/smaxage');
      assert.match(status(await get('/smaxage')), /hit/);
      assert.equal(origin.count('/smaxage'), 1);
    });

    it('honours Expires, and treats a past or invalid Expires as stale', async () => {
      origin.on('/expires-future', { headers: { date: new Date().toUTCString(), expires: new Date(Date.now() + 60_000).toUTCString() }, body: 'x' });
      origin.on('/expires-past', { headers: { date: new Date().toUTCString(), expires: HTTP_DATE_PAST(60) }, body: 'x' });
      origin.on('/expires-zero', { headers: { expires: '0' }, body: 'x' });
      for (const p of ['/expires-future', '/expires-past', '/expires-zero']) {
        await get(p);
        await get(p);
      }
      assert.equal(origin.count('/expires-future'), 1);
      assert.equal(origin.count('/expires-past'), 2);
      assert.equal(origin.count('/expires-zero'), 2);
    });

    it('reads freshness strictly: an invalid Expires is expired, Cache-Control names are case-insensitive, a fractional Age is no Age', async () => {
      origin.on('/expires-invalid', { headers: { date: new Date().toUTCString(), expires: new Date(Date.now() + 3_600_000).toUTCString().replace(' GMT', '') }, body: 'x' });
      origin.on('/no-cache-case', (req) => (req.headers['if-none-match'] ? { status: 304, headers: { etag: '"n"' } } : { headers: { etag: '"n"', 'cache-control': 'max-age=10000, No-CaChE' }, body: 'n' }));
      origin.on('/age-float', { headers: { date: new Date().toUTCString(), 'cache-control': 'max-age=3600', age: '7200.0' }, body: 'a' });
      for (const p of ['/expires-invalid', '/no-cache-case', '/age-float']) await get(p);
      assert.match(status(await get('/expires-invalid')), /fwd=uri-miss|fwd=stale/);
      assert.equal(status(await get('/no-cache-case')), 'Proxymity; fwd=stale; fwd-status=304');
      assert.match(status(await get('/age-float')), /hit/);
    });

    it('follows CDN-Cache-Control (RFC 9213) over Cache-Control', async () => {
      origin.on('/cdn-longer', { headers: { 'cache-control': 'no-store', 'cdn-cache-control': 'max-age=60' }, body: 'c' });
      origin.on('/cdn-no-store', { headers: { 'cache-control': 'max-age=60', 'cdn-cache-control': 'no-store' }, body: 'c' });
      for (const p of ['/cdn-longer', '/cdn-longer', '/cdn-no-store', '/cdn-no-store']) await get(p);
      assert.equal(origin.count('/cdn-longer'), 1);
      assert.equal(origin.count('/cdn-no-store'), 2);
    });

    it('uses heuristic freshness from Last-Modified only for heuristically cacheable statuses', async () => {
      origin.on('/heuristic', { headers: { date: new Date().toUTCString(), 'last-modified': HTTP_DATE_PAST(10 * 86400) }, body: 'old' });
      origin.on('/heuristic-302', { status: 302, headers: { location: '/elsewhere', date: new Date().toUTCString(), 'last-modified': HTTP_DATE_PAST(10 * 86400) }, body: '' });
      for (const p of ['/heuristic', '/heuristic', '/heuristic-302', '/heuristic-302']) await get(p);
      assert.equal(origin.count('/heuristic'), 1, '10% of 10 days: fresh for a day');
      assert.equal(origin.count('/heuristic-302'), 2, '302 is not heuristically cacheable');
    });

    for (const [name, cc] of [['no-store', 'no-store, max-age=60'], ['private', 'private, max-age=60']] as const) {
      it(`never stores a ${name} response`, async () => {
        const path = `/${name}`;
        origin.on(path, { headers: { 'cache-control': cc }, body: name });
        const first = await get(path);
        await get(path);
        assert.equal(origin.count(path), 2);
        assert.match(status(first), /fwd=uri-miss; fwd-status=200; detail=not-storable/);
      });
    }

    it('does not store a response that sets a cookie (as nginx and Varnish)', async () => {
      origin.on('/cookie', { headers: { 'cache-control': 'max-age=60', 'set-cookie': 'session=abc' }, body: 'mine' });
      const first = await get('/cookie');
      await get('/cookie');
      assert.equal(origin.count('/cookie'), 2);
      assert.match(status(first), /detail=set-cookie/);
    });

    it('does not store answers to requests with Authorization unless the response allows it (public, s-maxage)', async () => {
      origin.on('/auth-plain', { headers: { 'cache-control': 'max-age=60' }, body: 'alice' });
      origin.on('/auth-public', { headers: { 'cache-control': 'public, max-age=60' }, body: 'shared' });
      for (const p of ['/auth-plain', '/auth-plain', '/auth-public', '/auth-public']) await get(p, { authorization: 'Bearer alice' });
      assert.equal(origin.count('/auth-plain'), 2);
      assert.equal(origin.count('/auth-public'), 1);
    });

    it('revalidates a no-cache response every time, and serves the stored body on 304', async () => {
      origin.on('/no-cache', (req, n) => (req.headers['if-none-match'] === '"v1"' ? { status: 304, headers: { etag: '"v1"', 'cache-control': 'no-cache' } } : { headers: { etag: '"v1"', 'cache-control': 'no-cache' }, body: `body ${n}` }));
      await get('/no-cache');
      const again = await get('/no-cache');
      assert.equal(again.status, 200);
      assert.equal(again.body, 'body 1');
      assert.equal(status(again), 'Proxymity; fwd=stale; fwd-status=304');
      assert.equal(origin.count('/no-cache'), 2);
      assert.equal(origin.last('/no-cache')?.['if-none-match'], '"v1"');
    });

    it('gives a Set-Cookie on a 304 to that client only, never to others', async () => {
      origin.on('/cookie-304', (req) => (req.headers['if-none-match'] === '"c"' ? { status: 304, headers: { etag: '"c"', 'cache-control': 'max-age=60', 'set-cookie': 'session=alice-secret' } } : { headers: { etag: '"c"', 'cache-control': 'max-age=1' }, body: 'page' }));
      await get('/cookie-304');
      const alice = await pollUntil(() => get('/cookie-304'), (r) => status(r).includes('fwd=stale'), { what: 'the revalidation' });
      assert.deepEqual(alice.headers['set-cookie'], ['session=alice-secret']);
      const bob = await get('/cookie-304');
      assert.match(status(bob), /hit/);
      assert.equal(bob.headers['set-cookie'], undefined);
    });

    it('takes a 304 without validators as confirming, and one naming another ETag as a reason to fetch again', async () => {
      origin.on('/bare-304', (req, n) => (req.headers['if-none-match'] === '"b"' ? { status: 304, headers: { 'cache-control': 'max-age=60' } } : { headers: { etag: '"b"', 'cache-control': 'max-age=1' }, body: `b${n}` }));
      await get('/bare-304');
      const confirmed = await pollUntil(() => get('/bare-304'), (r) => status(r).includes('fwd=stale'), { what: 'the revalidation' });
      assert.equal(status(confirmed), 'Proxymity; fwd=stale; fwd-status=304');
      assert.equal(confirmed.body, 'b1');
      assert.match(status(await get('/bare-304')), /hit/);

      origin.on('/other-304', (req, n) => (req.headers['if-none-match'] !== undefined ? { status: 304, headers: { etag: '"new"' } } : { headers: { etag: n === 1 ? '"old"' : '"new"', 'cache-control': n === 1 ? 'max-age=1, must-revalidate' : 'max-age=60' }, body: `version ${n}` }));
      await get('/other-304');
      const refetched = await pollUntil(() => get('/other-304'), (r) => !status(r).includes('hit'), { what: 'the revalidation' });
      assert.equal(refetched.body, 'version 3', 'never the old body: fetched again without validators');
      assert.equal(origin.last('/other-304')?.['if-none-match'], undefined);
      assert.match(status(await get('/other-304')), /hit/);
    });

    it('serves a fresh must-revalidate response, and once stale never without revalidating (not even within stale-while-revalidate)', async () => {
      origin.on('/must', { headers: { 'cache-control': 'max-age=60, must-revalidate' }, body: 'm' });
      await get('/must');
      assert.match(status(await get('/must')), /hit/);
      assert.equal(origin.count('/must'), 1);
      origin.on('/must-stale', (req) => (req.headers['if-none-match'] === '"m"' ? { status: 304, headers: { etag: '"m"' } } : { headers: { etag: '"m"', 'cache-control': 'max-age=1, must-revalidate, stale-while-revalidate=60, stale-if-error=60' }, body: 'm' }));
      await get('/must-stale');
      const later = await pollUntil(() => get('/must-stale'), (r) => !status(r).includes('hit'), { what: 'the stale must-revalidate response' });
      assert.equal(status(later), 'Proxymity; fwd=stale; fwd-status=304');
      assert.equal(later.body, 'm');
    });

    it('streams a response larger than maxObjectSize through without storing it', async () => {
      const big = Buffer.alloc(2 * 1024 * 1024, 7);
      origin.on('/big', { headers: { 'cache-control': 'max-age=60' }, body: big });
      origin.on('/big-chunked', { headers: { 'cache-control': 'max-age=60' }, body: big, chunked: true });
      for (const p of ['/big', '/big-chunked']) {
        const r1 = await get(p);
        const r2 = await get(p);
        assert.equal(Buffer.byteLength(r1.body), big.length);
        assert.equal(Buffer.byteLength(r2.body), big.length);
        assert.equal(origin.count(p), 2, p);
        if (p === '/big') assert.match(status(r1), /detail=too-large/);
      }
    });

    it('does not store a response cut mid-body, and stays up', async () => {
      origin.on('/dies', (_req, n) => (n === 1 ? { headers: { 'cache-control': 'max-age=60', 'content-length': '1000' }, body: Buffer.alloc(1000, 1), dieAfterBytes: 100, chunked: true } : { headers: { 'cache-control': 'max-age=60' }, body: 'whole' }));
      await assert.rejects(get('/dies'));
      const next = await get('/dies');
      assert.equal(next.body, 'whole');
      assert.match(status(next), /fwd=uri-miss/);
      assert.equal(origin.count('/dies'), 2);
    });

    it('gives immutable no freshness of its own: Expires still rules', async () => {
      origin.on('/immutable', { headers: { date: new Date().toUTCString(), expires: new Date(Date.now() + 60_000).toUTCString(), 'cache-control': 'public, immutable' }, body: 'i' });
      await get('/immutable');
      assert.match(status(await get('/immutable')), /^Proxymity; hit; ttl=(59|60)$/);
    });

    it('counts the apparent age from Date when the origin sends no Age', async () => {
      origin.on('/old-date', { headers: { date: HTTP_DATE_PAST(50), 'cache-control': 'max-age=60' }, body: 'o' });
      await get('/old-date');
      assert.match(status(await get('/old-date')), /^Proxymity; hit; ttl=(9|10)$/);
      assert.ok(Number((await get('/old-date')).headers.age) >= 50);
    });

    it('keeps routes apart: a URL another route rewrote and sent elsewhere is another object', async () => {
      origin.on('/shared', { headers: { 'cache-control': 'max-age=60' }, body: 'stable' });
      origin.on('/canary/shared', { headers: { 'cache-control': 'max-age=60' }, body: 'CANARY' });
      assert.equal((await get('/shared', { 'x-canary': '1' })).body, 'CANARY');
      const plain = await get('/shared');
      assert.equal(plain.body, 'stable');
      assert.match(status(plain), /fwd=uri-miss/);
      assert.equal((await get('/shared', { 'x-canary': '1' })).body, 'CANARY');
      assert.equal((await get('/shared')).body, 'stable');
      assert.equal(origin.count('/shared') + origin.count('/canary/shared'), 2);
    });

    it('leaves routes with cache: false alone', async () => {
      origin.on('/nocache/x', { headers: { 'cache-control': 'max-age=60' }, body: 'x' });
      const r = await get('/nocache/x');
      await get('/nocache/x');
      assert.equal(origin.count('/nocache/x'), 2);
      assert.equal(r.headers['cache-status'], undefined);
    });
  });

  describe('Vary', () => {
    it('stores one variant per value of the Vary fields', async () => {
      origin.on('/vary', (req) => ({ headers: { 'cache-control': 'max-age=60', vary: 'Accept-Encoding' }, body: `enc=${req.headers['accept-encoding'] ?? 'none'}` }));
      assert.equal((await get('/vary', { 'accept-encoding': 'gzip' })).body, 'enc=gzip');
      assert.equal((await get('/vary', { 'accept-encoding': 'br' })).body, 'enc=br');
      const gz = await get('/vary', { 'accept-encoding': 'gzip' });
      assert.equal(gz.body, 'enc=gzip');
      assert.match(status(gz), /hit/);
      const none = await get('/vary');
      assert.equal(none.body, 'enc=none');
      assert.match(status(none), /fwd=vary-miss/);
      assert.equal(origin.count('/vary'), 3);
    });

    it('serves the newest response when the origin changes what it varies on', async () => {
      origin.on('/vary-change', (_req, n) => ({ headers: { 'cache-control': 'max-age=600', ...(n > 1 ? { vary: 'Accept-Encoding' } : {}) }, body: `v${n}` }));
      await get('/vary-change');
      assert.equal((await get('/vary-change', { 'cache-control': 'no-cache' })).body, 'v2');
      const r = await get('/vary-change');
      assert.equal(r.body, 'v2');
      assert.match(status(r), /hit/);
    });

    it('never serves a Vary: * response from the cache', async () => {
      origin.on('/vary-star', { headers: { 'cache-control': 'max-age=60', vary: '*' }, body: 's' });
      await get('/vary-star');
      await get('/vary-star');
      assert.equal(origin.count('/vary-star'), 2);
    });
  });

  describe('request directives', () => {
    it('revalidates on request no-cache and max-age=0 (fwd=request), and serves stale within max-stale', async () => {
      origin.on('/req-cc', (req) => (req.headers['if-none-match'] === '"r"' ? { status: 304, headers: { etag: '"r"', 'cache-control': 'max-age=60' } } : { headers: { etag: '"r"', 'cache-control': 'max-age=60' }, body: 'r' }));
      await get('/req-cc');
      const noCache = await get('/req-cc', { 'cache-control': 'no-cache' });
      assert.equal(status(noCache), 'Proxymity; fwd=request; fwd-status=304');
      assert.equal(noCache.body, 'r');
      assert.equal(status(await get('/req-cc', { pragma: 'no-cache' })), 'Proxymity; fwd=request; fwd-status=304');
      assert.equal(status(await get('/req-cc', { 'cache-control': 'max-age=0' })), 'Proxymity; fwd=request; fwd-status=304');
      assert.equal(origin.count('/req-cc'), 4);

      origin.on('/max-stale', { headers: { 'cache-control': 'max-age=1' }, body: 'ms' });
      await get('/max-stale');
      await pollUntil(() => get('/max-stale', { 'cache-control': 'max-stale=600' }), (r) => /ttl=-/.test(status(r)), { what: 'a stale hit under max-stale' });
      assert.equal(origin.count('/max-stale'), 1);
    });

    it('answers only-if-cached with 504 when nothing is stored, from the cache otherwise', async () => {
      origin.on('/oic', { headers: { 'cache-control': 'max-age=60' }, body: 'o' });
      const miss = await get('/oic', { 'cache-control': 'only-if-cached' });
      assert.equal(miss.status, 504);
      assert.equal(origin.count('/oic'), 0);
      await get('/oic');
      const hit = await get('/oic', { 'cache-control': 'only-if-cached' });
      assert.equal(hit.status, 200);
      assert.equal(hit.body, 'o');
    });

    it('lets no client evict what others share: not with Authorization and no-cache, not with no-store inside stale-while-revalidate', async () => {
      origin.on('/shared-entry', (req, n) => ({ headers: { 'cache-control': 'max-age=600' }, body: req.headers.authorization ? `private ${n}` : `shared ${n}` }));
      await get('/shared-entry');
      await get('/shared-entry', { authorization: 'Bearer x', 'cache-control': 'no-cache' });
      const after = await get('/shared-entry');
      assert.equal(after.body, 'shared 1');
      assert.match(status(after), /hit/);

      origin.on('/swr-keep', (req, n) => ({ headers: { 'cache-control': 'max-age=1, stale-while-revalidate=60' }, body: `s${n}` }));
      await get('/swr-keep');
      await pollUntil(() => get('/swr-keep', { 'cache-control': 'no-store' }), (r) => status(r).includes('stale-while-revalidate'), { what: 'a stale-while-revalidate hit' });
      const kept = await pollUntil(() => get('/swr-keep'), (r) => r.body === 's2', { what: 'the refreshed copy' });
      assert.match(status(kept), /hit/);
      assert.equal(origin.last('/swr-keep')?.['cache-control'], undefined, 'the refresh does not carry the client\'s Cache-Control');
    });

    it('does not store the answer to a request with no-store', async () => {
      origin.on('/req-no-store', { headers: { 'cache-control': 'max-age=60' }, body: 'n' });
      await get('/req-no-store', { 'cache-control': 'no-store' });
      await get('/req-no-store');
      assert.equal(origin.count('/req-no-store'), 2);
    });
  });

  describe('HEAD and conditional requests', () => {
    it('answers HEAD from a stored GET, with the GET\'s Content-Length and no body', async () => {
      origin.on('/head', { headers: { 'cache-control': 'max-age=60' }, body: 'twelve bytes' });
      await get('/head');
      const head = await get('/head', {}, 'HEAD');
      assert.equal(head.status, 200);
      assert.equal(head.body, '');
      assert.equal(head.headers['content-length'], '12');
      assert.match(status(head), /hit/);
      assert.equal(origin.count('/head'), 1);
    });

    it('answers a client\'s matching If-None-Match or If-Modified-Since with 304 from the cache', async () => {
      const lm = HTTP_DATE_PAST(3600);
      origin.on('/cond', { headers: { 'cache-control': 'max-age=60', etag: 'W/"abc"', 'last-modified': lm }, body: 'conditional' });
      await get('/cond');
      const inm = await get('/cond', { 'if-none-match': '"x", "abc"' });
      assert.equal(inm.status, 304);
      assert.equal(inm.body, '');
      assert.equal(inm.headers.etag, 'W/"abc"');
      assert.equal((await get('/cond', { 'if-none-match': '"other"' })).status, 200);
      assert.equal((await get('/cond', { 'if-modified-since': new Date().toUTCString() })).status, 304);
      assert.equal((await get('/cond', { 'if-modified-since': HTTP_DATE_PAST(7200) })).status, 200);
      assert.equal(origin.count('/cond'), 1);
    });

    it('passes If-Match and If-Unmodified-Since to the origin, which alone can answer 412', async () => {
      origin.on('/precondition', (req) => (req.headers['if-match'] === '"old"' ? { status: 412, body: '' } : { headers: { 'cache-control': 'max-age=60', etag: '"new"' }, body: 'p' }));
      await get('/precondition');
      const r = await get('/precondition', { 'if-match': '"old"' });
      assert.equal(r.status, 412);
      assert.equal(status(r), 'Proxymity; fwd=request; detail=precondition; fwd-status=412');
      assert.equal(origin.count('/precondition'), 2);
    });

    it('fills with a full request although the client sent conditionals, and answers them itself', async () => {
      origin.on('/cond-miss', (req) => (req.headers['if-none-match'] !== undefined ? { status: 304, headers: { etag: '"e"' } } : { headers: { 'cache-control': 'max-age=60', etag: '"e"' }, body: 'full' }));
      const r = await get('/cond-miss', { 'if-none-match': '"e"' });
      assert.equal(r.status, 304, 'the fill went without the conditional; the client\'s own still gets its 304');
      assert.equal(r.body, '');
      assert.equal(origin.last('/cond-miss')?.['if-none-match'], undefined);
      const full = await get('/cond-miss');
      assert.equal(full.body, 'full', 'stored while the client got a 304');
      assert.match(status(full), /hit/);
      assert.equal((await get('/cond-miss', { 'if-none-match': '"e"' })).status, 304);
      assert.equal(origin.count('/cond-miss'), 1);
    });

    it('keeps a 304 for the client when the response cannot be stored', async () => {
      origin.on('/cond-private', (req) => (req.headers['if-none-match'] === '"p"' ? { status: 304, headers: { etag: '"p"', 'cache-control': 'private' } } : { headers: { 'cache-control': 'private', etag: '"p"' }, body: 'x'.repeat(1000) }));
      const first = await get('/cond-private', { 'if-none-match': '"p"' });
      assert.equal(first.status, 304, 'answered from the full response the fill asked for');
      const second = await get('/cond-private', { 'if-none-match': '"p"' });
      assert.equal(second.status, 304);
      assert.equal(origin.last('/cond-private')?.['if-none-match'], '"p"', 'known uncacheable: the client\'s conditional goes to the origin');
    });

    it('revalidates a stale response with its validators and takes the 304\'s headers', async () => {
      origin.on('/reval', (req, n) =>
        req.headers['if-none-match'] === '"v"' ? { status: 304, headers: { etag: '"v"', 'cache-control': 'max-age=60', 'x-version': String(n) } } : { headers: { etag: '"v"', 'cache-control': 'max-age=1', 'x-version': String(n) }, body: 'payload' },
      );
      await get('/reval');
      const revalidated = await pollUntil(() => get('/reval'), (r) => status(r).includes('fwd=stale'), { what: 'a revalidation' });
      assert.equal(status(revalidated), 'Proxymity; fwd=stale; fwd-status=304');
      assert.equal(revalidated.body, 'payload');
      assert.equal(revalidated.headers['x-version'], '2');
      const hit = await get('/reval');
      assert.match(status(hit), /^Proxymity; hit; ttl=(59|60)$/, 'fresh again for the 304\'s max-age');
      assert.equal(hit.headers['x-version'], '2');
      assert.equal(origin.count('/reval'), 2);
    });
  });

  describe('stale-while-revalidate and stale-if-error', () => {
    it('serves stale at once within stale-while-revalidate and refreshes in the background', async () => {
      origin.on('/swr', (_req, n) => ({ headers: { 'cache-control': 'max-age=1, stale-while-revalidate=60' }, body: `v${n}`, delayMs: n === 1 ? 0 : 300 }));
      await get('/swr');
      const stale = await pollUntil(() => get('/swr'), (r) => status(r).includes('stale-while-revalidate'), { what: 'a stale-while-revalidate hit' });
      assert.equal(stale.body, 'v1', 'the stale copy, without waiting for the origin');
      const fresh = await pollUntil(() => get('/swr'), (r) => r.body === 'v2', { what: 'the refreshed copy' });
      assert.match(status(fresh), /hit/);
      assert.equal(origin.count('/swr'), 2, 'one background refresh');
    });

    it('serves stale within stale-if-error when the origin answers 5xx, and the error when outside it', async () => {
      origin.on('/sie', (_req, n) => (n === 1 ? { headers: { 'cache-control': 'max-age=1, stale-if-error=60' }, body: 'good' } : { status: 503, body: 'down' }));
      origin.on('/no-sie', (_req, n) => (n === 1 ? { headers: { 'cache-control': 'max-age=1' }, body: 'good' } : { status: 503, body: 'down' }));
      await get('/sie');
      await get('/no-sie');
      const stale = await pollUntil(() => get('/sie'), (r) => status(r).includes('stale-if-error'), { what: 'stale-if-error' });
      assert.equal(stale.status, 200);
      assert.equal(stale.body, 'good');
      assert.equal(status(stale), 'Proxymity; fwd=stale; fwd-status=503; detail=stale-if-error');
      const down = await pollUntil(() => get('/no-sie'), (r) => r.status !== 200, { what: 'the error' });
      assert.equal(down.status, 503);
    });
  });

  describe('invalidation and purge', () => {
    it('invalidates the URL and its Location after a successful unsafe request, not after a failed one', async () => {
      origin.on('/item', (_req, n) => ({ headers: { 'cache-control': 'max-age=60' }, body: `item ${n}` }));
      origin.on('/list', (_req, n) => ({ headers: { 'cache-control': 'max-age=60' }, body: `list ${n}` }));
      await get('/item');
      await get('/list');
      origin.on('/item', (req, n) => (req.method === 'POST' ? { status: n === 2 ? 400 : 201, headers: { location: '/list' }, body: '' } : { headers: { 'cache-control': 'max-age=60' }, body: `item ${n}` }));
      const refused = await get('/item', {}, 'POST');
      assert.equal(refused.status, 400);
      assert.equal(status(refused), 'Proxymity; fwd=method');
      assert.equal((await get('/item')).body, 'item 1', 'a 4xx does not invalidate');
      await get('/item', {}, 'POST');
      assert.equal((await get('/item')).body, 'item 4');
      assert.equal((await get('/list')).body, 'list 2', 'Location invalidated too');
    });

    it('invalidates on unsafe requests that went through a route without the cache, and resolves a relative Location against the target', async () => {
      origin.on('/w/item', (req, n) => (req.method === 'PUT' ? { status: 204 } : { headers: { 'cache-control': 'max-age=60' }, body: `w ${n}` }));
      await get('/w/item');
      assert.match(status(await get('/w/item')), /hit/);
      const put = await get('/w/item', {}, 'PUT');
      assert.equal(put.status, 204);
      assert.equal(put.headers['cache-status'], undefined, 'the uncached route says nothing about the cache');
      assert.equal((await get('/w/item')).body, 'w 3');

      origin.on('/items/list', (_req, n) => ({ headers: { 'cache-control': 'max-age=60' }, body: `l${n}` }));
      origin.on('/items/', (req) => (req.method === 'POST' ? { status: 201, headers: { location: 'list' } } : { status: 404 }));
      await get('/items/list');
      await get('/items/', {}, 'POST');
      assert.equal((await get('/items/list')).body, 'l2');
    });

    it('does not store a fill that a purge overtook', async () => {
      origin.on('/overtaken', (_req, n) => ({ headers: { 'cache-control': 'max-age=60' }, body: `o${n}`, delayMs: n === 1 ? 300 : 0 }));
      const slow = get('/overtaken');
      await pollUntil(() => origin.count('/overtaken'), (n) => n === 1, { what: 'the fill to reach the origin' });
      const purged = await request(`${sut.adminUrl}/cache/purge?all=true`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } });
      assert.equal(purged.status, 200);
      assert.equal((await slow).body, 'o1');
      assert.equal((await get('/overtaken')).body, 'o2');
    });

    it('purges one URL, a prefix, or all, with the admin token only', async () => {
      for (const p of ['/p/a', '/p/b', '/q']) origin.on(p, (_req, n) => ({ headers: { 'cache-control': 'max-age=60' }, body: String(n) }));
      for (const p of ['/p/a', '/p/b', '/q']) await get(p, { host: 'site.example' });
      const purge = (query: string, token?: string) => request(`${sut.adminUrl}/cache/purge?${query}`, { method: 'POST', headers: token ? { authorization: `Bearer ${token}` } : {} });
      assert.equal((await purge(`url=${encodeURIComponent('http://site.example/q')}`)).status, 401);
      assert.equal((await purge('', TOKEN)).status, 400);
      const one = await purge(`url=${encodeURIComponent('http://site.example/q')}`, TOKEN);
      assert.deepEqual(one.json(), { purged: 1 });
      assert.equal((await get('/q', { host: 'site.example' })).body, '2');
      assert.equal((await get('/p/a', { host: 'site.example' })).body, '1');
      const prefix = await purge(`prefix=${encodeURIComponent('http://site.example/p/')}`, TOKEN);
      assert.deepEqual(prefix.json(), { purged: 2 });
      assert.equal((await get('/p/a', { host: 'site.example' })).body, '2');
      assert.equal((await get('/p/b', { host: 'site.example' })).body, '2');
      const all = await purge('all=true', TOKEN);
      assert.ok(all.json().purged >= 3);
      const stats = await request(`${sut.adminUrl}/cache`, { headers: { authorization: `Bearer ${TOKEN}` } });
      assert.equal(stats.json().objects, 0);
      assert.equal(stats.json().storedBytes, 0);
    });
  });

  describe('collapsing', () => {
    it('sends 100 concurrent misses for one URL to the origin once', async () => {
      origin.on('/hot', (_req, n) => ({ headers: { 'cache-control': 'max-age=60' }, body: `hot ${n}`, delayMs: 300 }));
      const before = await scrape(sut.adminUrl as string, TOKEN);
      const agent = new http.Agent({ keepAlive: true, maxSockets: 100 });
      const all = await Promise.all(Array.from({ length: 100 }, () => request(`${sut.url}/hot`, { agent })));
      agent.destroy();
      assert.equal(origin.count('/hot'), 1);
      assert.ok(all.every((r) => r.status === 200 && r.body === 'hot 1'));
      const statuses = all.map(status);
      assert.equal(statuses.filter((s) => s.endsWith('; stored')).length, 1);
      assert.equal(statuses.filter((s) => s === 'Proxymity; fwd=uri-miss; collapsed').length, 99);
      // Counted as each exchange closes, which may trail the client's last byte.
      const after = await pollUntil(() => scrape(sut.adminUrl as string, TOKEN), (m) => delta(before, m, 'proxymity_cache_requests_total', { result: 'collapsed' }) >= 99, { what: '99 collapsed in the metrics' });
      assert.equal(delta(before, after, 'proxymity_cache_requests_total', { result: 'collapsed' }), 99);
      assert.equal(delta(before, after, 'proxymity_cache_requests_total', { result: 'miss' }), 1);
    });

    it('gives waiters the stale stand-in when the fill fails within stale-if-error, without asking the origin again', async () => {
      origin.on('/sie-hot', (_req, n) => (n === 1 ? { headers: { 'cache-control': 'max-age=1, stale-if-error=600' }, body: 'kept' } : { status: 503, delayMs: 300, body: 'down' }));
      await get('/sie-hot');
      await pollUntil(() => get('/sie-hot', { 'cache-control': 'only-if-cached' }), (r) => r.status === 504, { what: 'the entry to go stale' });
      const agent = new http.Agent({ keepAlive: true, maxSockets: 30 });
      const all = await Promise.all(Array.from({ length: 30 }, () => request(`${sut.url}/sie-hot`, { agent })));
      agent.destroy();
      assert.ok(all.every((r) => r.status === 200 && r.body === 'kept'));
      assert.ok(all.every((r) => status(r).includes('stale-if-error')));
      assert.equal(origin.count('/sie-hot'), 2);
    });

    it('counts a waiter whose client leaves as 499, and leaves nothing in flight', async () => {
      origin.on('/slow-fill', { headers: { 'cache-control': 'max-age=60' }, body: 'slow', delayMs: 400 });
      const before = await scrape(sut.adminUrl as string, TOKEN);
      const leader = get('/slow-fill');
      await pollUntil(() => origin.count('/slow-fill'), (n) => n === 1, { what: 'the fill to start' });
      await new Promise<void>((resolve) => {
        const req = http.get(`${sut.url}/slow-fill`, { agent: false });
        req.on('error', () => resolve());
        req.setTimeout(50, () => {
          req.destroy();
          resolve();
        });
      });
      assert.equal((await leader).body, 'slow');
      const after = await pollUntil(() => scrape(sut.adminUrl as string, TOKEN), (m) => delta(before, m, 'proxymity_requests_total', { backend: '', method: 'GET', code: '499' }) === 1, { what: 'the 499' });
      assert.equal(sample(after, 'proxymity_requests_in_flight'), 0);
    });

    it('lets waiters go to the origin themselves when the response cannot be stored', async () => {
      origin.on('/hot-private', (_req, n) => ({ headers: { 'cache-control': 'private' }, body: `p ${n}`, delayMs: 200 }));
      const agent = new http.Agent({ keepAlive: true, maxSockets: 20 });
      const all = await Promise.all(Array.from({ length: 20 }, () => request(`${sut.url}/hot-private`, { agent })));
      agent.destroy();
      assert.ok(all.every((r) => r.status === 200));
      assert.equal(origin.count('/hot-private'), 20);
      assert.equal(all.map(status).filter((s) => s.includes('collapsed=?0')).length, 19);
    });
  });
});

describe('ResponseCache bounds (e2e)', () => {
  let origin: ScriptedOrigin;
  let sut: RunningProxymity;
  before(async () => {
    origin = await new ScriptedOrigin().listen();
    sut = await start(origin, '  maxSize: 1MiB\n  maxObjectSize: 64KiB');
  });
  after(async () => {
    await sut.close();
    await origin.close();
  });

  it('holds at most maxSize in bodies being stored: slow fills beyond it stream uncached', async () => {
    const body = Buffer.alloc(60 * 1024, 's');
    for (let i = 0; i < 30; i++) origin.on(`/slow/${i}`, { headers: { 'cache-control': 'max-age=60' }, body, pauseMs: 300 });
    const all = await Promise.all(Array.from({ length: 30 }, (_, i) => request(`${sut.url}/slow/${i}`)));
    assert.ok(all.every((r) => r.status === 200 && r.body.length === body.length));
    const busy = all.filter((r) => status(r).includes('detail=busy')).length;
    const stored = all.filter((r) => status(r).endsWith('stored')).length;
    assert.ok(stored <= 17 && busy >= 13, `stored ${stored}, busy ${busy}`);
    const stats = await request(`${sut.adminUrl}/cache`, { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(stats.json().capturingBytes, 0);
  });

  it('stays under maxSize while 10 000 distinct objects pass, evicting the least recently used', async () => {
    const body = Buffer.alloc(1024, 'x');
    for (let i = 0; i < 10_000; i++) origin.on(`/obj/${i}`, { headers: { 'cache-control': 'max-age=600' }, body });
    const before = await scrape(sut.adminUrl as string, TOKEN);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
    let next = 0;
    let maxSeen = 0;
    const worker = async (): Promise<void> => {
      while (next < 10_000) {
        const i = next++;
        const r = await request(`${sut.url}/obj/${i}`, { agent });
        assert.equal(r.status, 200);
        if (i % 500 === 0) {
          const stats = await request(`${sut.adminUrl}/cache`, { headers: { authorization: `Bearer ${TOKEN}` } });
          maxSeen = Math.max(maxSeen, stats.json().storedBytes);
        }
      }
    };
    await Promise.all(Array.from({ length: 16 }, worker));
    agent.destroy();
    const m = await scrape(sut.adminUrl as string, TOKEN);
    const stored = sample(m, 'proxymity_cache_stored_bytes');
    const objects = sample(m, 'proxymity_cache_objects');
    assert.ok(stored <= 1024 * 1024 && maxSeen <= 1024 * 1024, `stored ${stored}, max seen ${maxSeen}`);
    assert.ok(objects > 500 && objects < 1024, `objects ${objects}`);
    assert.equal(delta(before, m, 'proxymity_cache_evictions_total', { reason: 'size' }), 10_000 + sample(before, 'proxymity_cache_objects') - objects);
    // The most recent objects are the ones kept.
    const recent = await request(`${sut.url}/obj/9999`);
    assert.match(status(recent), /hit/);
    const old = await request(`${sut.url}/obj/0`);
    assert.match(status(old), /fwd=uri-miss/);
  });
});

describe('ResponseCache with the origin gone (e2e)', () => {
  let origin: ScriptedOrigin;
  let sut: RunningProxymity;
  before(async () => {
    origin = await new ScriptedOrigin().listen();
    sut = await start(origin, '', 1);
  });
  after(async () => {
    await sut.close();
    if (origin.server.listening) await origin.close();
  });

  it('serves stale within stale-if-error when the origin is killed (refused, then ejected), and the error for what has no stale-if-error', async () => {
    origin.on('/sie', { headers: { 'cache-control': 'max-age=1, stale-if-error=600' }, body: 'kept' });
    origin.on('/plain', { headers: { 'cache-control': 'max-age=1' }, body: 'plain' });
    await request(`${sut.url}/sie`);
    await request(`${sut.url}/plain`);
    await origin.close();
    const stale = await pollUntil(() => request(`${sut.url}/sie`), (r) => status(r).includes('stale-if-error'), { what: 'stale-if-error after the origin died' });
    assert.equal(stale.status, 200);
    assert.equal(stale.body, 'kept');
    assert.equal(status(stale), 'Proxymity; fwd=stale; detail=stale-if-error');
    // The refused connection ejected the only backend: now no backend is chosen at all.
    const again = await request(`${sut.url}/sie`);
    assert.equal(again.body, 'kept');
    assert.match(status(again), /stale-if-error/);
    const gone = await request(`${sut.url}/plain`);
    assert.equal(gone.status, 503);
    await pollUntil(() => scrape(sut.adminUrl as string, TOKEN), (m) => sample(m, 'proxymity_cache_requests_total', { result: 'stale' }) >= 1, { what: 'a stale result in the metrics' });
  });
});

describe('ResponseCache over HTTP/2 (e2e)', () => {
  let origin: ScriptedOrigin;
  let sut: RunningProxymity;
  const ca = makeTestCa();
  before(async () => {
    origin = await new ScriptedOrigin().listen();
    const cert = ca.issue('h2', ['h2.test']);
    const yaml = `${cacheConfig(origin.url)}
listeners:
  - {name: tls, host: 127.0.0.1, port: 0, protocol: https, certificates: [{cert: "${cert.cert}", key: "${cert.key}"}]}
`;
    sut = await startProxymity(parseConfig(withAdminPortZero(yaml), 'cache-h2.yaml'), { logger: false });
  });
  after(async () => {
    await sut.close();
    await origin.close();
  });

  it('serves hits and 304s to HTTP/2 clients', async () => {
    origin.on('/h2', { headers: { 'cache-control': 'max-age=60', etag: '"h2"', 'content-type': 'text/plain' }, body: 'over h2' });
    const client = http2.connect(sut.listeners.tls, { ca: readFileSync(ca.caCert), servername: 'h2.test' });
    client.on('error', () => undefined); // reported through the requests
    const get = (headers: http2.OutgoingHttpHeaders = {}) => h2Request(client, { ':path': '/h2', ':authority': 'h2.test', ...headers });
    try {
      const first = await get();
      assert.equal(first.headers[':status'], 200);
      const hit = await get();
      assert.equal(hit.headers[':status'], 200);
      assert.equal(hit.body, 'over h2');
      assert.match(String(hit.headers['cache-status']), /hit/);
      const notModified = await get({ 'if-none-match': '"h2"' });
      assert.equal(notModified.headers[':status'], 304);
      assert.equal(origin.count('/h2'), 1);
      // Plain http for the same host and path is another object (a backend may answer each scheme differently, e.g. redirect http to https).
      const plain = await request(`${sut.url}/h2`, { headers: { host: 'h2.test' } });
      assert.match(status(plain), /^Proxymity; fwd=uri-miss/);
      assert.equal(origin.count('/h2'), 2);
    } finally {
      client.close();
    }
  });
});

describe('ResponseCache with cache.staleIfError (e2e)', () => {
  let origin: ScriptedOrigin;
  let sut: RunningProxymity;
  before(async () => {
    origin = await new ScriptedOrigin().listen();
    sut = await start(origin, '  staleIfError: 10m');
  });
  after(async () => {
    await sut.close();
    await origin.close();
  });

  it('serves stale for a failing backend within cache.staleIfError, unless the response must be revalidated', async () => {
    origin.on('/grace', (_req, n) => (n === 1 ? { headers: { 'cache-control': 'max-age=1' }, body: 'graced' } : { status: 502, body: 'bad' }));
    origin.on('/strict', (_req, n) => (n === 1 ? { headers: { 'cache-control': 'max-age=1, must-revalidate' }, body: 'strict' } : { status: 502, body: 'bad' }));
    await request(`${sut.url}/grace`);
    await request(`${sut.url}/strict`);
    const graced = await pollUntil(() => request(`${sut.url}/grace`), (r) => status(r).includes('stale-if-error'), { what: 'the grace' });
    assert.equal(graced.status, 200);
    assert.equal(graced.body, 'graced');
    const strict = await pollUntil(() => request(`${sut.url}/strict`), (r) => r.status !== 200, { what: 'the 502' });
    assert.equal(strict.status, 502);
  });
});
