/**
 * End to end through the real application on 127.0.0.1:0 and real backends on loopback.
 * Real: the Nest app, http-proxy, sockets, backends. Fake: nothing.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { after, afterEach, before, describe, it } from 'node:test';
import type { RunningProxymity } from '../../src/proxymity.js';
import { closeAll, DummyBackend, startBackends } from '../fixtures/backend-server.js';
import { request } from '../helpers/http-client.js';
import { pollUntil } from '../helpers/poll-until.js';
import { startProxy } from '../helpers/proxy.js';

describe('proxying', () => {
  let backends: DummyBackend[];
  let sut: RunningProxymity;
  let agent: http.Agent;

  before(async () => {
    backends = await startBackends(3);
    // Long probe interval: these tests drive health passively and must not race a probe.
    sut = await startProxy(backends, 'healthCheck: {interval: 1h}\nupstream: {timeout: 1s}');
    agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
  });
  after(async () => {
    agent.destroy();
    await sut.close();
    await closeAll(backends);
  });
  afterEach(() => backends.forEach((b) => b.behave()));

  it('spreads 3N requests exactly N per backend with round-robin', async () => {
    const before = backends.map((b) => b.proxied);
    for (let i = 0; i < 30; i++) assert.equal((await request(`${sut.url}/rr`, { agent })).status, 200);
    assert.deepEqual(backends.map((b, i) => b.proxied - before[i]), [10, 10, 10]);
  });

  it('forwards method, path, query and body unchanged', async () => {
    const body = 'a'.repeat(1000);
    const res = await request(`${sut.url}/a//b/%7Euser/x%20y?q=1&q=2&empty=#frag`, { method: 'PATCH', body, agent, headers: { 'content-type': 'text/plain' } });
    const echo = res.json();
    assert.equal(res.status, 200);
    assert.equal(echo.method, 'PATCH');
    assert.equal(echo.path, '/a//b/%7Euser/x%20y?q=1&q=2&empty=');
    assert.equal(echo.bodyBytes, 1000);
    assert.equal(echo.headers['content-type'], 'text/plain');
  });

  it('streams a chunked request body of unknown length', async () => {
    const res = await new Promise<any>((resolve, reject) => {
      const req = http.request(`${sut.url}/chunked`, { method: 'POST', agent }, (r) => {
        let text = '';
        r.on('data', (c) => (text += c));
        r.on('end', () => resolve(JSON.parse(text)));
      });
      req.on('error', reject);
      req.write('hello ');
      setImmediate(() => req.end('world'));
    });
    assert.equal(res.bodyBytes, 11);
    assert.equal(res.headers['transfer-encoding'], 'chunked');
  });

  it('sets X-Forwarded-*, Via and a request id, keeps Host, strips hop-by-hop', async () => {
    const res = await request(`${sut.url}/headers`, {
      agent: false,
      headers: { host: 'shop.example', 'x-forwarded-for': '192.0.2.7', connection: 'keep-alive, x-drop-me', 'x-drop-me': '1', 'keep-alive': 'timeout=9', te: 'gzip' },
    });
    const h = res.json().headers;
    assert.equal(h.host, 'shop.example');
    assert.equal(h['x-forwarded-for'], '127.0.0.1', 'an untrusted client cannot add hops');
    assert.equal(h['x-forwarded-proto'], 'http');
    assert.equal(h['x-forwarded-host'], 'shop.example');
    assert.equal(h.via, '1.1 proxymity');
    assert.equal(h['x-drop-me'], undefined);
    assert.equal(h['keep-alive'], undefined);
    assert.equal(h.te, undefined);
    assert.match(h['x-request-id'], /^[0-9a-f-]{36}$/);
    assert.equal(res.headers['x-request-id'], h['x-request-id']);
    assert.equal(res.headers.via, '1.1 proxymity');
    assert.equal(res.headers['x-backend'] !== undefined, true);
  });

  it('passes a client request id through both ways', async () => {
    const res = await request(`${sut.url}/id`, { agent, headers: { 'x-request-id': 'trace-42' } });
    assert.equal(res.json().headers['x-request-id'], 'trace-42');
    assert.equal(res.headers['x-request-id'], 'trace-42');
  });

  it('relays the backend status and body for 4xx/5xx answers', async () => {
    const res = await request(`${sut.url}/status/418`, { agent });
    assert.equal(res.status, 418);
    assert.equal(res.json().backend.startsWith('b'), true);
  });

  it('answers HEAD without a body', async () => {
    const res = await request(`${sut.url}/head`, { method: 'HEAD', agent });
    assert.equal(res.status, 200);
    assert.equal(res.body, '');
  });

  it('keeps upstream connections alive across requests', async () => {
    const b = backends[0];
    const conns = new Set<net.Socket>();
    const onConn = (s: net.Socket) => conns.add(s);
    b.server.on('connection', onConn);
    try {
      for (let i = 0; i < 30; i++) await request(`${sut.url}/ka`, { agent });
      assert.ok(conns.size <= 2, `backend saw ${conns.size} new connections for 10 requests`);
    } finally {
      b.server.off('connection', onConn);
    }
  });

  it('retries a GET once on a fresh connection when a reused keep-alive connection is reset, without marking the backend', async () => {
    await restoreAll();
    for (let i = 0; i < 6; i++) await request(`${sut.url}/warm`, { agent });
    const before = backends[1].proxied;
    backends[1].failNext('reset');
    for (let i = 0; i < 3; i++) assert.equal((await request(`${sut.url}/stale`, { agent })).status, 200);
    assert.equal(backends[1].proxied - before, 2, 'the reset request was replayed on the same backend');
    const health = (await request(`${sut.url}/health`)).json();
    assert.equal(health.details.backends.backends[1].state, 'up');
  });

  it('retries a GET on the next backend when one keeps resetting, and marks it down', async () => {
    await restoreAll();
    backends[1].failAlways('reset');
    const results = [];
    for (let i = 0; i < 6; i++) results.push((await request(`${sut.url}/retry`, { agent })).status);
    assert.deepEqual(results, [200, 200, 200, 200, 200, 200]);
    const health = (await request(`${sut.url}/health`)).json();
    assert.equal(health.details.backends.backends[1].state, 'down');
    assert.match(health.details.backends.backends[1].reason, /passive: connection_terminated/);
  });

  it('answers 502 with a clear body when a POST with a body hits a reset', async () => {
    await restoreAll();
    for (const b of backends) b.failNext('reset');
    const res = await request(`${sut.url}/post`, { method: 'POST', body: 'x'.repeat(10), agent });
    assert.equal(res.status, 502);
    assert.match(res.body, /^502 Bad Gateway: the backend closed the connection before responding \(connection_terminated\)/);
    assert.equal(res.headers['proxy-status'], 'proxymity; error=connection_terminated');
    assert.match(String(res.headers['x-request-id']), /^[0-9a-f-]{36}$/);
  });

  it('relays an answer the backend sends before reading the upload, without resetting the client', async () => {
    await restoreAll();
    backends.forEach((b) => b.failAlways('answer-early'));
    const res = await request(`${sut.url}/upload-too-big`, { method: 'POST', body: Buffer.alloc(20 * 1024 * 1024, 'u'), agent: false });
    assert.equal(res.status, 413);
    assert.equal(res.body, 'too big\r\n');
    backends.forEach((b) => b.behave());
    assert.equal((await request(`${sut.url}/after-early`, { agent })).status, 200);
  });

  it('answers 502 when the backend sends garbage instead of HTTP', async () => {
    await restoreAll();
    backends.forEach((b) => b.failAlways('garbage'));
    const res = await request(`${sut.url}/garbage`, { method: 'POST', body: 'x', agent });
    assert.equal(res.status, 502);
    assert.equal(res.headers['proxy-status'], 'proxymity; error=http_protocol_error');
  });

  it('answers 504 when the backend does not answer within upstream.timeout', async () => {
    await restoreAll();
    backends.forEach((b) => b.failAlways('hang'));
    const res = await request(`${sut.url}/hang`, { agent });
    assert.equal(res.status, 504);
    assert.equal(res.headers['proxy-status'], 'proxymity; error=http_response_timeout');
    // A slow answer is not a dead backend.
    const health = (await request(`${sut.url}/health`)).json();
    assert.equal(health.details.backends.healthy, 3);
  });

  it('cuts the client connection when the backend dies mid-body', async () => {
    await restoreAll();
    backends.forEach((b) => b.failAlways('drop-mid-body'));
    const outcome = await new Promise<string>((resolve) => {
      const req = http.get(`${sut.url}/drop`, { agent: false }, (res) => {
        assert.equal(res.statusCode, 200);
        res.on('data', () => undefined);
        res.on('end', () => resolve('complete'));
        res.on('error', (e: NodeJS.ErrnoException) => resolve(`error ${e.code}`));
        res.on('aborted', () => resolve('aborted'));
      });
      req.on('error', (e: NodeJS.ErrnoException) => resolve(`error ${e.code}`));
    });
    assert.notEqual(outcome, 'complete');
  });

  it('cancels the upstream request when the client disconnects', async () => {
    await restoreAll();
    const b = backends[0];
    b.failAlways('hang');
    backends[1].failAlways('hang');
    backends[2].failAlways('hang');
    const open = () => backends.reduce((n, x) => n + x.openConnections, 0);
    const baseline = open();
    const socket = net.connect(sut.port, '127.0.0.1');
    socket.write('GET /abandon HTTP/1.1\r\nHost: x\r\n\r\n');
    await pollUntil(() => sut.app.get(ProxyEngineToken()).inFlight, (n) => n === 1, { what: 'request in flight' });
    socket.destroy();
    await pollUntil(() => sut.app.get(ProxyEngineToken()).inFlight, (n) => n === 0, { what: 'request released' });
    // The hanging upstream connection is closed by the proxy, not left to time out.
    await pollUntil(open, (n) => n <= baseline, { what: 'upstream connection closed', timeoutMs: 800 });
  });

  it('answers 503 with Retry-After when no backend is healthy', async () => {
    await restoreAll();
    for (const b of backends) b.failAlways('reset');
    const statuses = [];
    for (let i = 0; i < 3; i++) statuses.push((await request(`${sut.url}/down`, { method: 'POST', body: 'x', agent })).status);
    const res = await request(`${sut.url}/down`, { agent });
    assert.equal(res.status, 503);
    assert.equal(res.headers['retry-after'], '1');
    assert.match(res.body, /^503 Service Unavailable: no backend is available .*\(destination_unavailable\)/);
    const health = await request(`${sut.url}/health`);
    assert.equal(health.status, 503);
    assert.equal(health.json().error.backends.message, 'no healthy backend');
  });

  it('rejects a request target that is neither origin- nor absolute-form with 400', async () => {
    await restoreAll();
    const raw = await rawRequest(sut.port, 'GET foo:bar HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.match(raw, /^HTTP\/1\.1 400 /);
  });

  it('rewrites an absolute-form target to origin-form', async () => {
    const raw = await rawRequest(sut.port, 'GET http://shop.example/abs?x=1 HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n');
    assert.match(raw, /^HTTP\/1\.1 200 /);
    assert.match(raw, /"path":"\/abs\?x=1"/);
  });

  it('survives malformed requests and keeps serving', async () => {
    const raw = await rawRequest(sut.port, 'GARBAGE\r\n\r\n');
    assert.match(raw, /^HTTP\/1\.1 400 /);
    assert.equal((await request(`${sut.url}/after`, { agent })).status, 200);
  });

  async function restoreAll(): Promise<void> {
    backends.forEach((b) => b.behave());
    // Bring passively failed backends back the way operators would see it: a passing probe.
    const { BackendRegistry } = await import('../../src/backend/index.js');
    const { HealthProbeService } = await import('../../src/health/index.js');
    const registry = sut.app.get(BackendRegistry);
    const probes = sut.app.get(HealthProbeService);
    for (let round = 0; round < 3; round++) for (const b of registry.all) await probes.probe(b);
    assert.equal(registry.healthy.length, 3);
  }
});

function ProxyEngineToken() {
  return ProxyEngineClass;
}
import { ProxyEngine as ProxyEngineClass } from '../../src/proxy/index.js';

function rawRequest(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(text));
    let out = '';
    s.on('data', (d) => (out += d));
    s.on('end', () => resolve(out));
    s.on('error', reject);
    s.setTimeout(5000, () => s.destroy(new Error('raw request timed out')));
  });
}

describe('retrying requests with a body', () => {
  it('sends a POST to the next backend when the first refuses the connection (no body byte was sent)', async () => {
    const alive = await startBackends(1);
    const dead = await startBackends(1);
    const deadUrl = dead[0].url;
    await dead[0].close();
    const sut = await startProxy([deadUrl, alive[0].url], 'healthCheck: {interval: 1h}');
    try {
      const res = await request(`${sut.url}/orders`, { method: 'POST', body: 'x'.repeat(100_000), headers: { 'content-type': 'text/plain' } });
      assert.equal(res.status, 200);
      assert.equal(res.json().bodyBytes, 100_000);
      assert.equal(alive[0].seen.length, 1);
    } finally {
      await sut.close();
      await closeAll(alive);
    }
  });
});
