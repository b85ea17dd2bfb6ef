/**
 * Active and passive health checking through the real app. Real: app, backends, probes on the
 * real @Cron tick. Nothing is faked; waits use pollUntil.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, describe, it } from 'node:test';
import type { RunningProxymity } from '../../src/proxymity.js';
import { BackendRegistry, type Backend } from '../../src/backend/index.js';
import { parseConfig } from '../../src/config/index.js';
import { ReloadService } from '../../src/reload/index.js';
import { closeAll, DummyBackend, startBackends } from '../fixtures/backend-server.js';
import { request } from '../helpers/http-client.js';
import { pollUntil } from '../helpers/poll-until.js';
import { withAdminPortZero } from '../helpers/processes.js';
import { proxyFixture, startProxy } from '../helpers/proxy.js';

const healthState = async (url: string) => {
  const res = await request(`${url}/health`);
  const details = (res.json().details ?? res.json().error).backends;
  return { status: res.status, states: details.backends.map((b: { state: string }) => b.state).join(',') as string, body: res.json() };
};

describe('active health checks', () => {
  const fx = proxyFixture(2, 'healthCheck: {interval: 1s, timeout: 300ms, healthyThreshold: 2, unhealthyThreshold: 2}');

  it('starts with every backend healthy, so traffic flows at once', async () => {
    const s = await healthState(fx.sut.url);
    assert.equal(s.status, 200);
    assert.equal(s.states, 'up,up');
    assert.equal(s.body.status, 'ok');
  });

  it('answers GET and HEAD, uncacheable, on both listeners; other methods get 405 with Allow', async () => {
    for (const base of [fx.sut.url, fx.sut.adminUrl as string]) {
      const get = await request(`${base}/health?probe=1`);
      assert.equal(get.status, 200);
      assert.equal(get.headers['content-type'], 'application/json; charset=utf-8');
      assert.equal(get.headers['cache-control'], 'no-store');
      assert.equal((await request(`${base}/health`, { headers: { 'x-request-id': 'health-check-42' } })).headers['x-request-id'], 'health-check-42');
      assert.equal(Number(get.headers['content-length']), Buffer.byteLength(get.body));
      const head = await request(`${base}/health`, { method: 'HEAD' });
      assert.equal(head.status, 200);
      assert.equal(head.body, '');
      // The length of the GET body it stands for (which changes with every probe result, so not compared).
      assert.ok(Number(head.headers['content-length']) > 100);
      const post = await request(`${base}/health`, { method: 'POST' });
      assert.equal(post.status, 405);
      assert.equal(post.headers.allow, 'GET, HEAD');
    }
    const post = await request(`${fx.sut.adminUrl}/metrics`, { method: 'POST' });
    assert.equal(post.status, 405);
    assert.equal(post.headers.allow, 'GET, HEAD');
  });

  it('takes a backend out after unhealthyThreshold failed probes and sends it no traffic', async () => {
    fx.backends[0].healthy = false;
    const s = await pollUntil(() => healthState(fx.sut.url), (x) => x.states === 'down,up', { timeoutMs: 6000, what: 'b1 down' });
    assert.match(s.body.details.backends.backends[0].reason, /probe: 2 failing probe\(s\), last: HTTP 503/);
    const before = fx.backends[0].proxied;
    for (let i = 0; i < 6; i++) assert.equal((await request(`${fx.sut.url}/x`)).status, 200);
    assert.equal(fx.backends[0].proxied, before);
    assert.equal((await request(`${fx.sut.url}/health`)).status, 200, 'one healthy backend is enough for /health');
  });

  it('brings it back after healthyThreshold passing probes', async () => {
    fx.backends[0].healthy = true;
    await pollUntil(() => healthState(fx.sut.url), (x) => x.states === 'up,up', { timeoutMs: 6000, what: 'b1 up' });
    const before = fx.backends[0].proxied;
    for (let i = 0; i < 4; i++) await request(`${fx.sut.url}/x`);
    assert.equal(fx.backends[0].proxied - before, 2);
  });

  it('fails a probe that exceeds healthCheck.timeout', async () => {
    fx.backends[1].healthDelayMs = 1000;
    const s = await pollUntil(() => healthState(fx.sut.url), (x) => x.states === 'up,down', { timeoutMs: 6000, what: 'b2 down' });
    assert.match(s.body.details.backends.backends[1].reason, /last: timeout after 300ms/);
  });

  it('fails a probe whose connection is refused', async () => {
    fx.backends[1].healthDelayMs = 0;
    await pollUntil(() => healthState(fx.sut.url), (x) => x.states === 'up,up', { timeoutMs: 6000, what: 'b2 up' });
    await fx.backends[1].close();
    const s = await pollUntil(() => healthState(fx.sut.url), (x) => x.states === 'up,down', { timeoutMs: 6000, what: 'b2 down' });
    assert.match(s.body.details.backends.backends[1].reason, /ECONNREFUSED/);
  });

  it('reports 503 on /health when no backend is healthy, and recovers by itself', async () => {
    fx.backends[0].healthy = false;
    const s = await pollUntil(() => healthState(fx.sut.url), (x) => x.status === 503, { timeoutMs: 6000, what: '/health 503' });
    assert.equal(s.body.status, 'error');
    assert.equal((await request(`${fx.sut.url}/any`)).status, 503);
    fx.backends[0].healthy = true;
    await pollUntil(() => healthState(fx.sut.url), (x) => x.status === 200, { timeoutMs: 6000, what: '/health 200' });
    assert.equal((await request(`${fx.sut.url}/any`)).status, 200);
  });
});

describe('passive health with active checks off', () => {
  const fx = proxyFixture(2, 'healthCheck: {enabled: false, cooldown: 500ms}');

  it('marks a refusing backend down at once and tries it again after the cool-down', async () => {
    const port = fx.backends[0].port;
    await fx.backends[0].close();
    // Both requests succeed: the refused one is retried on b2.
    assert.equal((await request(`${fx.sut.url}/a`)).status, 200);
    assert.equal((await request(`${fx.sut.url}/b`)).status, 200);
    assert.equal((await healthState(fx.sut.url)).states, 'down,up');
    const revived = await new DummyBackend({ name: 'b1' }).listen(port);
    fx.backends[0] = revived;
    await pollUntil(() => healthState(fx.sut.url), (x) => x.states === 'up,up', { timeoutMs: 4000, what: 'cool-down over' });
    for (let i = 0; i < 4; i++) await request(`${fx.sut.url}/c`);
    assert.equal(revived.proxied, 2);
  });
});

describe('localhost backends', () => {
  it('reaches a backend on localhost whether it listens on IPv4 or IPv6', async () => {
    const v4 = await new DummyBackend({ name: 'v4' }).listen(0, '127.0.0.1');
    const v6 = await new DummyBackend({ name: 'v6' }).listen(0, '::1');
    const sut = await startProxy([`http://localhost:${v4.port}`, `http://localhost:${v6.port}`], 'healthCheck: {interval: 1h}');
    try {
      const names = new Set<string>();
      for (let i = 0; i < 4; i++) {
        const res = await request(`${sut.url}/`);
        assert.equal(res.status, 200);
        names.add(res.json().backend);
      }
      assert.deepEqual([...names].sort(), ['v4', 'v6']);
    } finally {
      await sut.close();
      await closeAll([v4, v6]);
    }
  });
});

describe('health check options', () => {
  const started: { sut: RunningProxymity; backends: DummyBackend[] }[] = [];
  after(async () => {
    for (const s of started) {
      await s.sut.close();
      await closeAll(s.backends);
    }
  });
  async function setup(n: number, extraYaml: string, backendYaml: string[] = []) {
    const backends = await startBackends(n);
    const yaml = `proxy: {host: 127.0.0.1, port: 0}\nbackend:\n${backends.map((b, i) => `  - name: ${b.name}\n    url: ${b.url}\n${backendYaml[i] ?? ''}`).join('')}${extraYaml}\n`;
    const { parseConfig } = await import('../../src/config/index.js');
    const { startProxymity } = await import('../../src/proxymity.js');
    const sut = await startProxymity(parseConfig(withAdminPortZero(yaml), 'test.yaml'), { logger: false });
    started.push({ sut, backends });
    return { sut, backends };
  }

  it('probes with the configured method and headers, and checks status ranges and the body', async () => {
    const { sut, backends } = await setup(2, 'healthCheck: {interval: 1s, healthyThreshold: 1, unhealthyThreshold: 1, method: HEAD, headers: {X-Probe: "yes"}, expectStatus: ["200-204"]}', ['', '    healthCheck: {method: GET, expectBody: "/\\"status\\":\\"ok\\"/"}\n']);
    await pollUntil(() => backends[0].lastHealthRequest, (r) => r !== undefined, { timeoutMs: 3000, what: 'first probe' });
    assert.equal(backends[0].lastHealthRequest!.method, 'HEAD');
    assert.equal(backends[0].lastHealthRequest!.headers['x-probe'], 'yes');
    await pollUntil(() => backends[1].lastHealthRequest, (r) => r !== undefined, { timeoutMs: 3000, what: 'first probe of b2' });
    assert.equal(backends[1].lastHealthRequest!.method, 'GET', 'the per-backend override wins');
    // b2's body stops matching (503 {"status":"unhealthy"}) -> down, with the reason.
    backends[1].healthy = false;
    const s = await pollUntil(() => healthState(sut.url), (x) => x.states === 'up,down', { timeoutMs: 5000, what: 'b2 down' });
    assert.match(s.body.details.backends.backends[1].reason, /HTTP 503 \(expected 200-204\)/);
  });

  it('fails a probe whose body does not match expectBody even with a passing status', async () => {
    const { sut } = await setup(1, 'healthCheck: {interval: 1s, unhealthyThreshold: 1, expectBody: "ready"}');
    const s = await pollUntil(() => healthState(sut.url), (x) => x.states === 'down', { timeoutMs: 5000, what: 'down on body' });
    assert.match(s.body.error.backends.backends[0].reason, /HTTP 200, body does not match ready/);
  });

  it('probes another port when healthCheck.port is set', async () => {
    const side = await startBackends(1);
    started.push({ sut: { close: async () => undefined } as unknown as RunningProxymity, backends: side });
    const { sut } = await setup(1, `healthCheck: {interval: 1s, unhealthyThreshold: 1, port: ${side[0].port}}`);
    await pollUntil(() => side[0].lastHealthRequest, (r) => r !== undefined, { timeoutMs: 3000, what: 'probe on the side port' });
    side[0].healthy = false;
    await pollUntil(() => healthState(sut.url), (x) => x.states === 'down', { timeoutMs: 5000, what: 'down via the side port' });
  });

  it('sends no traffic to an "unknown" backend until its first probe passes', async () => {
    const { sut, backends } = await setup(1, 'healthCheck: {interval: 1s, timeout: 1500ms, initialState: unknown}');
    backends[0].healthDelayMs = 1200; // the first probe passes only after 1.2 s
    const early = await healthState(sut.url);
    assert.equal(early.states, 'unknown');
    assert.equal(early.status, 503);
    assert.equal((await request(`${sut.url}/early`)).status, 503);
    await pollUntil(() => healthState(sut.url), (x) => x.states === 'up', { timeoutMs: 5000, what: 'first pass' });
    assert.equal((await request(`${sut.url}/later`)).status, 200);
  });

  it('probes a down backend at unhealthyInterval, not interval', async () => {
    const { sut, backends } = await setup(2, 'healthCheck: {interval: 1h, unhealthyInterval: 1s, healthyThreshold: 1}');
    await pollUntil(() => backends[1].lastHealthRequest, (r) => r !== undefined, { timeoutMs: 3000, what: 'first probe' });
    backends[1].failAlways('reset');
    for (let i = 0; i < 4; i++) await request(`${sut.url}/x`); // passive failure takes b2 out
    await pollUntil(() => healthState(sut.url), (x) => x.states === 'up,down', { timeoutMs: 3000, what: 'b2 down' });
    backends[1].behave();
    await pollUntil(() => healthState(sut.url), (x) => x.states === 'up,up', { timeoutMs: 4000, what: 'b2 back within seconds' });
  });
});

describe('a probe in flight when a reload removes its backend', () => {
  it('is not reported: the removed backend is not marked down by its cut probe', async () => {
    // b1 holds every health probe open until released; proxied requests are answered at once.
    const held: http.ServerResponse[] = [];
    const b1 = http.createServer((req, res) => {
      if (req.url === '/health') held.push(res);
      else res.end('ok');
    });
    await new Promise<void>((resolve) => b1.listen(0, '127.0.0.1', resolve));
    const [b2] = await startBackends(1);
    const b1Url = `http://127.0.0.1:${(b1.address() as AddressInfo).port}`;
    const sut = await startProxy([b1Url, b2.url], 'healthCheck: {interval: 1s, timeout: 30s, unhealthyThreshold: 1}');
    try {
      const registry = sut.app.get(BackendRegistry);
      const removed = registry.all.find((b) => b.id === 'b1') as Backend;
      await pollUntil(() => held.length, (n) => n >= 1, { timeoutMs: 5000, what: 'a probe held by b1' });
      const yaml = `proxy: {host: 127.0.0.1, port: 0}\nbackend:\n  - {name: b2, url: "${b2.url}"}\nhealthCheck: {interval: 1s, timeout: 30s, unhealthyThreshold: 1}\n`;
      const result = sut.app.get(ReloadService).apply(parseConfig(withAdminPortZero(yaml), 'reload.yaml'), 'test');
      assert.equal(result.result, 'success', result.details.join('; '));
      // Idle, the removed backend is closed (its probe agent with it), which cuts the held probe.
      await pollUntil(() => held.every((r) => r.socket === null || r.socket.destroyed), (cut) => cut, { timeoutMs: 5000, what: 'the held probe to be cut' });
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.equal(removed.probesFailed, 0, `the cut probe was counted: ${removed.lastProbe?.detail}`);
      assert.equal(removed.healthy, true, 'the removed backend was marked down by its cut probe');
    } finally {
      await sut.close();
      b1.closeAllConnections();
      await new Promise((resolve) => b1.close(resolve));
      await closeAll([b2]);
    }
  });
});
