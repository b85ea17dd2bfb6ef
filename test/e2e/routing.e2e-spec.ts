/**
 * Routes and pools through the real proxy and real backends: matching by host, path, method
 * and header, path rewrites, header changes, Host policy, per-route timeouts, retry policy and
 * body limit, 404 for unmatched requests, and the config checks that go with them.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ConfigError, parseConfig } from '../../src/config/index.js';
import type { RunningProxymity } from '../../src/proxymity.js';
import { startProxymity } from '../../src/proxymity.js';
import { closeAll, startBackends, type DummyBackend } from '../fixtures/backend-server.js';
import { request } from '../helpers/http-client.js';
import { withAdminPortZero } from '../helpers/processes.js';

function routedConfig(api: DummyBackend[], web: DummyBackend[]): string {
  return `
proxy: {host: 127.0.0.1, port: 0}
healthCheck: {interval: 1h}
outlierDetection: {consecutiveFailures: 100}
pools:
  api:
    strategy: round-robin
    backends:
${api.map((b) => `      - {name: ${b.name}, url: "${b.url}"}`).join('\n')}
  web:
    backends:
${web.map((b) => `      - {name: ${b.name}, url: "${b.url}"}`).join('\n')}
routes:
  - name: api-host
    match: {host: api.example.com}
    pool: api
  - name: api-path
    match: {path: /api/}
    pool: api
    stripPrefix: /api
    addPrefix: /v2
    requestHeaders: {set: {x-route: api}, remove: [x-secret], add: {x-tag: routed}}
    responseHeaders: {set: {x-served-by: proxymity}, add: {x-extra: "1"}}
  - match: {pathExact: /exact, methods: [POST]}
    pool: web
  - match: {headers: {x-canary: "1"}}
    pool: web
    hostHeader: backend
  - match: {host: "*.example.org"}
    pool: web
    hostHeader: literal.internal
  - match: {path: /slow/}
    pool: api
    stripPrefix: /slow
    timeouts: {headerTimeout: 200ms}
    retry: {attempts: 1}
  - match: {path: /retry5xx/}
    pool: api
    stripPrefix: /retry5xx
    retry: {on: [5xx]}
  - match: {path: /upload/}
    pool: web
    maxBodySize: 1KiB
  - match: {path: /static/, methods: [GET, HEAD]}
    pool: web
`;
}

describe('routes and pools', () => {
  let api: DummyBackend[];
  let web: DummyBackend[];
  let sut: RunningProxymity;

  before(async () => {
    api = await startBackends(2);
    web = [...(await startBackends(1))];
    (web[0] as { name: string }).name = 'w1';
    (api[0] as { name: string }).name = 'a1';
    (api[1] as { name: string }).name = 'a2';
    sut = await startProxymity(parseConfig(withAdminPortZero(routedConfig(api, web)), 'routes.yaml'), { logger: false });
  });
  after(async () => {
    await sut.close();
    await closeAll([...api, ...web]);
  });

  it('routes by host (port and case ignored) to a pool and balances inside it', async () => {
    const seen = new Set<string>();
    for (let i = 0; i < 4; i++) {
      const res = await request(`${sut.url}/anything/${i}`, { headers: { host: 'API.example.com:8080' } });
      assert.equal(res.status, 200);
      seen.add(res.json().backend);
      assert.equal(res.json().path, `/anything/${i}`);
    }
    assert.deepEqual([...seen].sort(), ['a1', 'a2']);
  });

  it('strips and adds path prefixes, keeps the query, and changes request and response headers', async () => {
    const res = await request(`${sut.url}/api/users?id=7`, { headers: { 'x-secret': 'no', 'x-tag': 'client' } });
    assert.equal(res.status, 200);
    const echo = res.json();
    assert.match(echo.backend, /^a[12]$/);
    assert.equal(echo.path, '/v2/users?id=7');
    assert.equal(echo.headers['x-route'], 'api');
    assert.equal(echo.headers['x-secret'], undefined);
    assert.equal(echo.headers['x-tag'], 'client, routed');
    assert.equal(res.headers['x-served-by'], 'proxymity');
    assert.equal(res.headers['x-extra'], '1');
  });

  it('matches an exact path with a method list, and only that', async () => {
    const post = await request(`${sut.url}/exact?x=1`, { method: 'POST', body: 'b' });
    assert.equal(post.json().backend, 'w1');
    const get = await request(`${sut.url}/exact`);
    assert.equal(get.status, 404);
    assert.equal(get.headers['proxy-status'], 'proxymity; error=destination_not_found');
    assert.match(get.body, /^404 Not Found: no route matches this request \(destination_not_found\)/);
    assert.equal((await request(`${sut.url}/exact/more`, { method: 'POST', body: 'b' })).status, 404);
  });

  it('matches a header, and sends the backend\'s host as Host when hostHeader is "backend"', async () => {
    const res = await request(`${sut.url}/canary`, { headers: { 'x-canary': '1' } });
    assert.equal(res.json().backend, 'w1');
    assert.equal(res.json().headers.host, new URL(web[0].url).host);
    assert.equal((await request(`${sut.url}/canary`, { headers: { 'x-canary': '2' } })).status, 404);
  });

  it('matches a wildcard host (subdomains only) and sends a literal Host', async () => {
    const res = await request(`${sut.url}/w`, { headers: { host: 'shop.eu.example.org' } });
    assert.equal(res.json().backend, 'w1');
    assert.equal(res.json().headers.host, 'literal.internal');
    assert.equal(res.json().headers['x-forwarded-host'], 'shop.eu.example.org');
    assert.equal((await request(`${sut.url}/w`, { headers: { host: 'example.org' } })).status, 404);
  });

  it('applies a route\'s own header timeout and retry attempts', async () => {
    const res = await request(`${sut.url}/slow/delay/2000`);
    assert.equal(res.status, 504);
    assert.equal(res.headers['proxy-status'], 'proxymity; error=http_response_timeout');
  });

  it('applies a route\'s own retry policy (5xx retried here, not elsewhere)', async () => {
    api[0].forcedStatus = 503;
    try {
      for (let i = 0; i < 4; i++) assert.equal((await request(`${sut.url}/retry5xx/r${i}`)).status, 200);
      const elsewhere: number[] = [];
      for (let i = 0; i < 4; i++) elsewhere.push((await request(`${sut.url}/api/r${i}`)).status);
      assert.deepEqual(elsewhere.sort(), [200, 200, 503, 503]);
    } finally {
      api[0].behave();
    }
  });

  it('applies a route\'s own body limit', async () => {
    assert.equal((await request(`${sut.url}/upload/x`, { method: 'PUT', body: 'x'.repeat(2048) })).status, 413);
    assert.equal((await request(`${sut.url}/static/x`, { method: 'GET' })).status, 200);
    assert.equal((await request(`${sut.url}/api/x`, { method: 'PUT', body: 'x'.repeat(2048) })).status, 200);
  });

  it('answers 404 for a request no route matches, and counts it', async () => {
    const res = await request(`${sut.url}/nowhere`, { method: 'DELETE' });
    assert.equal(res.status, 404);
    const metrics = (await request(`${sut.adminUrl}/metrics`)).body;
    assert.match(metrics, /proxymity_proxy_errors_total\{error="destination_not_found"\} [1-9]/);
  });
});

describe('pool and route config checks', () => {
  const check = (yaml: string) => {
    try {
      parseConfig(yaml, 'r.yaml');
    } catch (err) {
      return (err as ConfigError).message;
    }
    return 'valid';
  };

  it('names a route that points at a pool that does not exist, with a suggestion', () => {
    const msg = check('pools:\n  api: {backends: [{url: "http://127.0.0.1:1"}]}\nroutes:\n  - {pool: apl}\n');
    assert.match(msg, /r\.yaml:4:\d+ {2}routes\[0\]\.pool: no pool named "apl"; did you mean "api"\?/);
  });

  it('asks for routes when there are several pools', () => {
    const msg = check('pools:\n  a: {backends: [{url: "http://127.0.0.1:1"}]}\n  b: {backends: [{url: "http://127.0.0.1:2"}]}\n');
    assert.match(msg, /2 pools \(a, b\) but no routes/);
  });

  it('refuses a backend name used in two pools, and a hash pool without a key', () => {
    const msg = check('pools:\n  a: {backends: [{name: x, url: "http://127.0.0.1:1"}]}\n  b: {strategy: hash, backends: [{name: x, url: "http://127.0.0.1:2"}]}\nroutes: [{pool: a}]\n');
    assert.match(msg, /pools\.b\.backends\[0\]\.name: duplicate backend name "x" \(also pools\.a\.backends\[0\]\); names are unique across pools/);
    assert.match(msg, /pools\.b\.strategy: strategy "hash" needs hash\.key/);
  });

  it('keeps the seed format as the pool "default" with a catch-all route', () => {
    const cfg = parseConfig('backend: [{name: one, url: "http://127.0.0.1:1"}]\n', 'seed.yaml');
    assert.deepEqual(Object.keys(cfg.pools), ['default']);
    assert.equal(cfg.pools.default.backends[0].name, 'one');
    assert.equal(cfg.routes.length, 1);
    assert.deepEqual([cfg.routes[0].pool, cfg.routes[0].match], ['default', {}]);
  });
});
