import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import CachePolicy from 'http-cache-semantics';
import { parseDirectives, requestDirectives, responseDirectives } from './cache-control.js';
import { CacheStore, type RemovalReason } from './cache-store.js';
import { usability, usableOnError, worthKeeping } from './freshness.js';
import { keyOfUrl } from './response-cache.service.js';
import { cacheView, cdnCacheControl, normalizeCacheControl, parseAge, parseHttpDate } from './response-view.js';
import { StoredResponse, varyNames, varyValues } from './stored-response.js';

/** A stored response built the way the cache builds one; `age` (seconds) is what it arrived with. */
function stored(headers: Record<string, string>, opts: { key?: string; body?: string; status?: number; reqHeaders?: Record<string, string> } = {}): StoredResponse {
  const req = { method: 'GET', url: '/x', headers: { host: 'h', ...(opts.reqHeaders ?? {}) } };
  const status = opts.status ?? 200;
  const policy = new CachePolicy(req, { status, headers }, { shared: true });
  const raw = Object.entries(headers).flat();
  return new StoredResponse(opts.key ?? 'h/x', 'r', 'http', status, 'OK', raw, Buffer.from(opts.body ?? 'body'), policy, varyValues(varyNames(headers.vary), req.headers), Date.now());
}

const none = requestDirectives({});

describe('Cache-Control parsing', () => {
  it('reads directives case-insensitively, unquotes values and keeps the first of a repeated directive', () => {
    const d = parseDirectives('Max-Age=60, s-maxage="30", no-cache="set-cookie", max-age=0');
    assert.equal(d.get('max-age'), '60');
    assert.equal(d.get('s-maxage'), '30');
    assert.equal(d.get('no-cache'), 'set-cookie');
  });

  it('reads the request directives, with Pragma: no-cache only when there is no Cache-Control', () => {
    assert.deepEqual(requestDirectives({ 'cache-control': 'max-stale, min-fresh=5, only-if-cached' }), { noCache: false, noStore: false, maxAge: -1, maxStale: Infinity, minFresh: 5, onlyIfCached: true });
    assert.equal(requestDirectives({ 'cache-control': 'max-stale=10' }).maxStale, 10);
    assert.equal(requestDirectives({ pragma: 'no-cache' }).noCache, true);
    assert.equal(requestDirectives({ pragma: 'no-cache', 'cache-control': 'max-age=5' }).noCache, false);
    assert.equal(requestDirectives({ 'cache-control': 'max-age=abc' }).maxAge, -1);
  });

  it('treats must-revalidate, proxy-revalidate, s-maxage and no-cache as "validate once stale"', () => {
    for (const cc of ['must-revalidate', 'proxy-revalidate', 's-maxage=5', 'no-cache']) assert.equal(responseDirectives(`max-age=5, ${cc}`).mustRevalidate, true, cc);
    const d = responseDirectives('max-age=5, stale-while-revalidate=30, stale-if-error=600');
    assert.deepEqual(d, { mustRevalidate: false, staleWhileRevalidate: 30, staleIfError: 600 });
  });
});

describe('freshness', () => {
  it('serves a fresh response, and a fresh must-revalidate one', () => {
    assert.equal(usability(stored({ 'cache-control': 'max-age=60' }), none, 10), 'fresh');
    assert.equal(usability(stored({ 'cache-control': 'max-age=60, must-revalidate' }), none, 10), 'fresh');
  });

  it('revalidates when the request asks (no-cache, max-age, min-fresh), even a fresh response', () => {
    const s = stored({ 'cache-control': 'max-age=60' });
    assert.equal(usability(s, requestDirectives({ 'cache-control': 'no-cache' }), 1), 'revalidate-request');
    assert.equal(usability(s, requestDirectives({ 'cache-control': 'max-age=5' }), 10), 'revalidate-request');
    assert.equal(usability(s, requestDirectives({ 'cache-control': 'max-age=5' }), 4), 'fresh');
    assert.equal(usability(s, requestDirectives({ 'cache-control': 'max-age=0' }), 0), 'revalidate-request');
    assert.equal(usability(s, requestDirectives({ 'cache-control': 'min-fresh=55' }), 10), 'revalidate-request');
  });

  it('uses stale windows only when must-revalidate does not forbid it', () => {
    const swr = stored({ 'cache-control': 'max-age=10, stale-while-revalidate=30' });
    assert.equal(usability(swr, none, 20), 'stale-while-revalidate');
    assert.equal(usability(swr, none, 45), 'revalidate-stale');
    assert.equal(usability(swr, requestDirectives({ 'cache-control': 'max-stale=100' }), 45), 'stale');
    const strict = stored({ 'cache-control': 'max-age=10, must-revalidate, stale-while-revalidate=30, stale-if-error=30' });
    assert.equal(usability(strict, requestDirectives({ 'cache-control': 'max-stale' }), 20), 'revalidate-stale');
    assert.equal(usableOnError(strict, 20), false);
    const sie = stored({ 'cache-control': 'max-age=10, stale-if-error=30' });
    assert.equal(usableOnError(sie, 20), true);
    assert.equal(usableOnError(sie, 41), false);
  });

  it('counts the Age a response arrived with', () => {
    const s = stored({ 'cache-control': 'max-age=60', age: '70' });
    assert.ok(s.age() >= 70);
    assert.equal(usability(s, none, s.age()), 'revalidate-stale');
  });

  it('keeps a stale response only while it has a validator or a stale window left', () => {
    assert.equal(worthKeeping(stored({ 'cache-control': 'max-age=1' }), 5), false);
    assert.equal(worthKeeping(stored({ 'cache-control': 'max-age=1', etag: '"e"' }), 5), true);
    assert.equal(worthKeeping(stored({ 'cache-control': 'max-age=1, stale-if-error=10' }), 5), true);
  });
});

describe(StoredResponse.name, () => {
  it('stores headers without hop-by-hop fields, Age or the request id, and with the body\'s Content-Length', () => {
    const date = new Date().toUTCString();
    const s = stored({ date, 'cache-control': 'max-age=60', connection: 'x-hop', 'x-hop': '1', 'keep-alive': 'timeout=5', 'transfer-encoding': 'chunked', age: '3', 'x-request-id': 'abc', 'content-type': 'text/plain' }, { body: 'hello' });
    assert.deepEqual(s.headers, ['date', date, 'cache-control', 'max-age=60', 'content-type', 'text/plain', 'content-length', '5']);
  });

  it('adds a Date when the origin sent none (RFC 9110 §6.6.1)', () => {
    const s = stored({ 'cache-control': 'max-age=60' });
    const i = s.headers.indexOf('date');
    assert.ok(i >= 0 && Math.abs(Date.parse(s.headers[i + 1]) - Date.now()) < 2000);
  });

  it('takes the headers of a 304, but not those that describe the body', () => {
    const s = stored({ date: 'Mon, 30 Nov 2026 10:00:00 GMT', 'cache-control': 'max-age=1', etag: '"e"', 'x-v': '1', 'content-type': 'text/plain' });
    const req = { method: 'GET', url: '/x', headers: { host: 'h' } };
    const { policy } = s.policy.revalidatedPolicy(req, { status: 304, headers: { etag: '"e"', 'cache-control': 'max-age=60', 'x-v': '2', 'content-type': 'text/html' } });
    s.revalidated(policy, ['ETag', '"e"', 'Cache-Control', 'max-age=60', 'X-V', '2', 'Content-Type', 'text/html', 'Set-Cookie', 'a=b'], Date.now());
    assert.equal(s.lifetime, 60);
    assert.deepEqual(s.headers, ['date', 'Mon, 30 Nov 2026 10:00:00 GMT', 'content-type', 'text/plain', 'content-length', '4', 'ETag', '"e"', 'Cache-Control', 'max-age=60', 'X-V', '2']);
  });

  it('answers a client\'s If-None-Match by weak comparison, and If-Modified-Since only without it', () => {
    const s = stored({ date: 'Mon, 30 Nov 2026 11:00:00 GMT', etag: 'W/"a"', 'last-modified': 'Mon, 30 Nov 2026 10:00:00 GMT', 'cache-control': 'max-age=60' });
    assert.equal(s.notModifiedFor('"a"', undefined), true);
    assert.equal(s.notModifiedFor('"b", W/"a"', undefined), true);
    assert.equal(s.notModifiedFor('*', undefined), true);
    assert.equal(s.notModifiedFor('"b"', 'Tue, 01 Dec 2026 10:00:00 GMT'), false);
    assert.equal(s.notModifiedFor(undefined, 'Tue, 01 Dec 2026 10:00:00 GMT'), true);
    assert.equal(s.notModifiedFor(undefined, 'Sun, 29 Nov 2026 10:00:00 GMT'), false);
    assert.equal(s.notModifiedFor(undefined, 'not a date'), false);
    assert.deepEqual(s.notModifiedHeaders(), ['date', 'Mon, 30 Nov 2026 11:00:00 GMT', 'etag', 'W/"a"', 'last-modified', 'Mon, 30 Nov 2026 10:00:00 GMT', 'cache-control', 'max-age=60']);
  });

  it('keys variants by the normalized values of the Vary fields; an absent field differs from an empty one', () => {
    const names = varyNames('Accept-Encoding, Accept-Language');
    assert.deepEqual(names, ['accept-encoding', 'accept-language']);
    assert.equal(varyValues(names, { 'accept-encoding': 'gzip ,  br', 'accept-language': 'en' }), varyValues(names, { 'accept-encoding': 'gzip,br', 'accept-language': 'en' }));
    assert.notEqual(varyValues(names, { 'accept-encoding': '' }), varyValues(names, {}));
    assert.equal(varyValues(undefined, { 'accept-encoding': 'gzip' }), '');
  });
});

describe(CacheStore.name, () => {
  const removals: [RemovalReason, number][] = [];
  const sized = (key: string, bytes: number, reqHeaders?: Record<string, string>) => stored({ 'cache-control': 'max-age=60', ...(reqHeaders ? { vary: 'x-v' } : {}) }, { key, body: 'x'.repeat(bytes), reqHeaders });

  it('evicts the least recently used keys to stay within maxSize', () => {
    const a = sized('a', 1000);
    const sut = new CacheStore(a.size * 3 + 10, (r, n) => removals.push([r, n]));
    sut.put(a);
    sut.put(sized('b', 1000));
    sut.put(sized('c', 1000));
    sut.get('a'); // a is now the most recent
    sut.put(sized('d', 1000));
    assert.equal(sut.get('b'), undefined);
    assert.ok(sut.get('a') && sut.get('c') && sut.get('d'));
    assert.equal(sut.objects, 3);
    assert.ok(sut.bytes <= sut.maxSize);
    assert.deepEqual(removals.at(-1), ['size', 1]);
  });

  it('replaces the variant with the same Vary values and keeps the others', () => {
    const sut = new CacheStore(1 << 20);
    sut.put(sized('k', 10, { 'x-v': '1' }));
    sut.put(sized('k', 20, { 'x-v': '2' }));
    const replacement = sized('k', 30, { 'x-v': '1' });
    sut.put(replacement);
    assert.equal(sut.get('k')?.length, 2);
    assert.ok(sut.get('k')?.includes(replacement));
    assert.equal(sut.objects, 2);
  });

  it('drops the variants stored under another Vary when the origin changes what it varies on', () => {
    const sut = new CacheStore(1 << 20);
    sut.put(stored({ 'cache-control': 'max-age=60' }, { key: 'k' }));
    const varied = stored({ 'cache-control': 'max-age=60', vary: 'accept-encoding' }, { key: 'k', reqHeaders: { 'accept-encoding': 'gzip' } });
    sut.put(varied);
    assert.deepEqual(sut.get('k'), [varied]);
    assert.equal(sut.objects, 1);
  });

  it('never stores an object larger than maxSize, and deletes by key and by prefix', () => {
    const sut = new CacheStore(2000);
    sut.put(sized('huge', 5000));
    assert.equal(sut.objects, 0);
    for (const k of ['h/a/1', 'h/a/2', 'h/b']) sut.put(sized(k, 10));
    assert.equal(sut.deletePrefix('h/a/', 'purge'), 2);
    assert.equal(sut.delete('h/b', 'purge'), 1);
    assert.equal(sut.objects, 0);
    assert.equal(sut.bytes, 0);
  });

  it('shrinks to a smaller maxSize at once', () => {
    const sut = new CacheStore(1 << 20);
    for (let i = 0; i < 10; i++) sut.put(sized(`k${i}`, 1000));
    sut.resize(sut.bytes / 2);
    assert.ok(sut.bytes <= sut.maxSize);
    assert.ok(sut.get('k9') !== undefined);
    assert.equal(sut.get('k0'), undefined);
  });
});

describe('cache keys', () => {
  it('are host (lowercased, port kept) and target', () => {
    assert.equal(keyOfUrl('http://Example.COM:8080/a/b?c=1'), 'example.com:8080/a/b?c=1');
    assert.equal(keyOfUrl('https://example.com'), 'example.com/');
  });
});

describe('response view', () => {
  it('parses the three HTTP-date forms strictly', () => {
    const t = Date.UTC(1994, 10, 6, 8, 49, 37);
    assert.equal(parseHttpDate('Sun, 06 Nov 1994 08:49:37 GMT'), t);
    assert.equal(parseHttpDate('Sunday, 06-Nov-94 08:49:37 GMT'), t);
    assert.equal(parseHttpDate('Sun Nov  6 08:49:37 1994'), t);
    assert.equal(parseHttpDate('Wednesday, 01-Jan-70 00:00:00 GMT', Date.UTC(2026, 0, 1)), Date.UTC(2070, 0, 1), 'within 50 years ahead: this century');
    assert.equal(parseHttpDate('Friday, 01-Jan-99 00:00:00 GMT', Date.UTC(2026, 0, 1)), Date.UTC(1999, 0, 1), 'more than 50 years ahead: the last century');
    for (const bad of ['Sun, 06 Nov 1994 08:49:37', 'Sun, 06 Nov 1994 08:49:37 UTC', 'Sun, 06-Nov-1994 08:49:37 GMT', 'Sun,  06 Nov 1994 08:49:37 GMT', 'Sun, 06 Nov 1994 8:49:37 GMT', 'Sun 06 Nov 1994 08:49:37 GMT', 'Thu, 31 Apr 2026 00:00:00 GMT', '0', '']) {
      assert.equal(parseHttpDate(bad), undefined, bad);
    }
  });

  it('reads Age as delta-seconds only', () => {
    assert.equal(parseAge('7200'), 7200);
    assert.equal(parseAge('7200.0'), undefined);
    assert.equal(parseAge('-1'), undefined);
    assert.equal(parseAge('7200, 0'), 7200, 'of a list, the first member');
  });

  it('reads CDN-Cache-Control as a Structured Field Dictionary, and ignores an invalid one', () => {
    assert.equal(cdnCacheControl('max-age=60, stale-if-error=30'), 'max-age=60, stale-if-error=30');
    assert.equal(cdnCacheControl('no-store'), 'no-store');
    assert.equal(cdnCacheControl('private=?0, max-age=5'), 'max-age=5');
    assert.equal(cdnCacheControl('max-age=10000, &&&&&'), undefined);
    assert.equal(cdnCacheControl('max-age="10000"'), undefined, 'max-age must be an Integer');
    assert.equal(cdnCacheControl('Max-Age=5'), undefined, 'keys are lowercase');
  });

  it('normalizes Cache-Control: lowercase names, first of a repeat, no malformed directives, commas inside quotes kept', () => {
    assert.equal(normalizeCacheControl('No-CaChE, MaX-AgE=60, max-age=0'), 'no-cache, max-age=60');
    assert.equal(normalizeCacheControl('max-age =3600, public'), 'public');
    assert.equal(normalizeCacheControl('private="a, b", max-age=5'), 'private="a, b", max-age=5');
  });

  it('gives http-cache-semantics an expired Expires for an invalid or repeated one, and CDN-Cache-Control over Cache-Control', () => {
    assert.equal(cacheView({ expires: 'Thu, 01 Dec 2094 16:00:00' }, ['Expires', 'Thu, 01 Dec 2094 16:00:00']).expires, 'invalid');
    assert.equal(cacheView({ expires: 'Thu, 01 Dec 2094 16:00:00 GMT' }, ['Expires', 'Thu, 01 Dec 2094 16:00:00 GMT', 'Expires', 'Thu, 01 Dec 2094 16:00:00 GMT']).expires, 'invalid');
    const cdn = cacheView({ 'cache-control': 'max-age=60', expires: 'Thu, 01 Dec 2094 16:00:00 GMT', 'cdn-cache-control': 'no-store' }, []);
    assert.equal(cdn['cache-control'], 'no-store');
    assert.equal(cdn.expires, undefined);
    assert.equal(cacheView({ age: '12.5' }, []).age, undefined);
  });
});
