/**
 * Metrics, admin listener and access logs, end to end: real backends, the real app, /metrics
 * scraped before and after known traffic (exact deltas and label sets), and every access-log
 * line of a run parsed and checked, one fault at a time.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseConfig, ConfigError } from '../../src/config/index.js';
import { closeAll, startBackends, type DummyBackend } from '../fixtures/backend-server.js';
import { request } from '../helpers/http-client.js';
import { delta, sample, scrape, seriesOf, type Scrape } from '../helpers/metrics.js';
import { pollUntil } from '../helpers/poll-until.js';
import { ProxyEngine } from '../../src/proxy/index.js';
import { proxyFixture, startProxy } from '../helpers/proxy.js';

/** A port nothing listens on (bound, then closed). */
async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const { port } = s.address() as net.AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** Starts a GET and destroys it after `ms` (the client gives up). */
function abortAfter(url: string, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const req = http.get(url, { agent: false });
    req.on('error', () => resolve());
    setTimeout(() => {
      req.destroy();
      resolve();
    }, ms);
  });
}

describe('metrics on the admin listener', () => {
  const fx = proxyFixture(2, 'healthCheck: {interval: 1s}\n');

  it('counts requests by backend, method and code, with durations and header times', async () => {
    const before = await scrape(fx.sut.adminUrl!);
    for (let i = 0; i < 10; i++) assert.equal((await request(`${fx.sut.url}/ok/${i}`)).status, 200);
    fx.backends[0].forcedStatus = 503;
    fx.backends[1].forcedStatus = 503;
    for (let i = 0; i < 2; i++) assert.equal((await request(`${fx.sut.url}/fail`, { method: 'POST', body: 'x' })).status, 503);
    fx.backends[0].behave();
    fx.backends[1].behave();
    const after = await scrape(fx.sut.adminUrl!);

    const total = 'proxymity_requests_total';
    assert.equal(delta(before, after, total, { backend: 'b1', method: 'GET', code: '200' }), 5);
    assert.equal(delta(before, after, total, { backend: 'b2', method: 'GET', code: '200' }), 5);
    assert.equal(delta(before, after, total, { backend: 'b1', method: 'POST', code: '503' }) + delta(before, after, total, { backend: 'b2', method: 'POST', code: '503' }), 2);
    assert.equal(delta(before, after, 'proxymity_request_duration_seconds_count', { method: 'GET', code_class: '2xx' }), 10);
    assert.equal(delta(before, after, 'proxymity_request_duration_seconds_count', { method: 'POST', code_class: '5xx' }), 2);
    assert.equal(delta(before, after, 'proxymity_request_duration_seconds_bucket', { method: 'GET', code_class: '2xx', le: '+Inf' }), 10);
    assert.equal(delta(before, after, 'proxymity_upstream_response_header_duration_seconds_count', { backend: 'b1' }), 6);
    assert.equal(delta(before, after, 'proxymity_upstream_response_header_duration_seconds_count', { backend: 'b2' }), 6);
    // A backend's 503 is its answer, not a proxy error.
    assert.deepEqual(seriesOf(after, 'proxymity_proxy_errors_total'), []);
    // Connections are kept alive: at most a few new ones, each with its connect time observed.
    const connects = sample(after, 'proxymity_upstream_connect_duration_seconds_count', { backend: 'b1' });
    assert.ok(connects >= 1 && connects <= 6, `connects to b1: ${connects}`);
  });

  it('labels every series with bounded values only: unknown methods are OTHER, paths never appear', async () => {
    const before = await scrape(fx.sut.adminUrl!);
    assert.equal((await request(`${fx.sut.url}/some/unique/path/${Date.now()}`, { method: 'PROPFIND' })).status, 200);
    const after = await scrape(fx.sut.adminUrl!);
    assert.equal(delta(before, after, 'proxymity_requests_total', { backend: 'b1', method: 'OTHER', code: '200' }) + delta(before, after, 'proxymity_requests_total', { backend: 'b2', method: 'OTHER', code: '200' }), 1);
    assert.ok(![...after.keys()].some((k) => k.includes('/some/unique')), 'no path in any label');
  });

  it('shows in-flight requests, active requests per backend, backend_up and probe results', async () => {
    fx.backends[0].delayMs = 1500;
    fx.backends[1].delayMs = 1500;
    const slow = [request(`${fx.sut.url}/slow/1`), request(`${fx.sut.url}/slow/2`)];
    const during = await pollUntil(() => scrape(fx.sut.adminUrl!), (s) => sample(s, 'proxymity_requests_in_flight') === 2, { what: 'two requests in flight' });
    assert.equal(sample(during, 'proxymity_backend_active_requests', { backend: 'b1' }), 1);
    assert.equal(sample(during, 'proxymity_backend_active_requests', { backend: 'b2' }), 1);
    assert.ok(sample(during, 'proxymity_open_connections') >= 2);
    await Promise.all(slow);
    fx.backends[0].behave();
    fx.backends[1].behave();
    const idle = await scrape(fx.sut.adminUrl!);
    assert.equal(sample(idle, 'proxymity_requests_in_flight'), 0);
    assert.equal(sample(idle, 'proxymity_backend_up', { backend: 'b1' }), 1);

    const before = await scrape(fx.sut.adminUrl!);
    fx.backends[1].healthy = false;
    // healthCheck.unhealthyThreshold is 3 (default): three failing probes take b2 out.
    const down = await pollUntil(() => scrape(fx.sut.adminUrl!), (s) => sample(s, 'proxymity_backend_up', { backend: 'b2' }) === 0, { timeoutMs: 10_000, what: 'b2 down' });
    assert.ok(delta(before, down, 'proxymity_health_checks_total', { backend: 'b2', result: 'fail' }) >= 3);
    assert.ok(delta(before, down, 'proxymity_health_checks_total', { backend: 'b1', result: 'pass' }) >= 1);
    fx.backends[1].healthy = true;
    await pollUntil(() => scrape(fx.sut.adminUrl!), (s) => sample(s, 'proxymity_backend_up', { backend: 'b2' }) === 1, { timeoutMs: 10_000, what: 'b2 up again' });
  });

  it('counts 499 when the client gives up, and includes Node process metrics', async () => {
    const before = await scrape(fx.sut.adminUrl!);
    fx.backends[0].delayMs = 2000;
    fx.backends[1].delayMs = 2000;
    await abortAfter(`${fx.sut.url}/given-up`, 150);
    const after = await pollUntil(() => scrape(fx.sut.adminUrl!), (s) => sample(s, 'proxymity_requests_in_flight') === 0, { what: 'aborted request finished' });
    fx.backends[0].behave();
    fx.backends[1].behave();
    assert.equal(delta(before, after, 'proxymity_requests_total', { backend: 'b1', method: 'GET', code: '499' }) + delta(before, after, 'proxymity_requests_total', { backend: 'b2', method: 'GET', code: '499' }), 1);
    assert.ok(sample(after, 'nodejs_heap_size_used_bytes') > 0);
    assert.ok(after.has('nodejs_eventloop_lag_seconds'));
  });

  it('never shadows a backend path: /metrics on the proxy port goes to a backend', async () => {
    const res = await request(`${fx.sut.url}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.json().backend, /^b[12]$/);
    assert.equal(res.json().path, '/metrics');
  });

  it('serves /health, /backends and /config on the admin listener', async () => {
    assert.equal((await request(`${fx.sut.adminUrl}/health`)).status, 200);
    const state = (await request(`${fx.sut.adminUrl}/backends`)).json();
    assert.equal(state.total, 2);
    assert.deepEqual(state.backends.map((b: { name: string; state: string }) => [b.name, b.state]), [['b1', 'up'], ['b2', 'up']]);
    assert.equal(state.backends[0].recentProbes.length > 0, true);
    assert.equal(typeof state.backends[0].probes.passed, 'number');
    const cfg = (await request(`${fx.sut.adminUrl}/config`)).json();
    assert.match(cfg.version, /^[0-9a-f]{16}$/);
    assert.equal(cfg.config.backend.length, 2);
    assert.equal(cfg.config.upstream.connectTimeout, 5000);
    // Unknown admin paths are the admin listener's 404, not a backend's.
    assert.equal((await request(`${fx.sut.adminUrl}/nope`)).status, 404);
  });
});

describe('failures in metrics', () => {
  let dead: Awaited<ReturnType<typeof startProxy>>;
  before(async () => {
    const urls = [`http://127.0.0.1:${await closedPort()}`, `http://127.0.0.1:${await closedPort()}`];
    dead = await startProxy(urls, 'retry: {attempts: 2}\nhealthCheck: {interval: 1h}\noutlierDetection: {consecutiveFailures: 1, baseEjectionTime: 1h}\n');
  });
  after(() => dead.close());

  it('counts retries, ejections, proxy errors and the 503 that follows, with exact label sets', async () => {
    const before = await scrape(dead.adminUrl!);
    assert.equal((await request(`${dead.url}/x`)).status, 502);
    assert.equal((await request(`${dead.url}/y`)).status, 503);
    const after = await scrape(dead.adminUrl!);
    assert.equal(delta(before, after, 'proxymity_retries_total', { reason: 'connect_failure' }), 1);
    assert.equal(delta(before, after, 'proxymity_proxy_errors_total', { error: 'connection_refused' }), 1);
    assert.equal(delta(before, after, 'proxymity_proxy_errors_total', { error: 'destination_unavailable' }), 1);
    assert.deepEqual(seriesOf(after, 'proxymity_proxy_errors_total').sort(), ['proxymity_proxy_errors_total{error="connection_refused"}', 'proxymity_proxy_errors_total{error="destination_unavailable"}']);
    assert.equal(delta(before, after, 'proxymity_backend_ejections_total', { backend: 'b1', reason: 'connection_refused' }), 1);
    assert.equal(delta(before, after, 'proxymity_backend_ejections_total', { backend: 'b2', reason: 'connection_refused' }), 1);
    assert.equal(sample(after, 'proxymity_backend_up', { backend: 'b1' }) + sample(after, 'proxymity_backend_up', { backend: 'b2' }), 0);
    const failedOn = ['b1', 'b2'].map((b) => delta(before, after, 'proxymity_requests_total', { backend: b, method: 'GET', code: '502' }));
    assert.deepEqual(failedOn.sort(), [0, 1], 'the 502 is counted once, on the backend of the last try');
    assert.equal(delta(before, after, 'proxymity_requests_total', { backend: '', method: 'GET', code: '503' }), 1);
  });
});

describe('admin token', () => {
  const token = 'a-very-secret-admin-token';
  const fx = proxyFixture(1, `admin: {port: 0, token: ${token}}\n`);

  it('requires the bearer token on /metrics and /backends, but not on /health', async () => {
    assert.equal((await request(`${fx.sut.adminUrl}/metrics`)).status, 401);
    assert.equal((await request(`${fx.sut.adminUrl}/backends`, { headers: { authorization: 'Bearer wrong-token-of-some-length' } })).status, 401);
    assert.equal((await request(`${fx.sut.adminUrl}/metrics`, { headers: { authorization: `Bearer ${token}` } })).status, 200);
    assert.equal((await request(`${fx.sut.adminUrl}/metrics`, { headers: { authorization: `bearer ${token}` } })).status, 200, 'the scheme is case-insensitive');
    assert.equal((await request(`${fx.sut.adminUrl}/health`)).status, 200);
    const cfg = (await request(`${fx.sut.adminUrl}/config`, { headers: { authorization: `Bearer ${token}` } })).json();
    assert.equal(cfg.config.admin.token, '[REDACTED]');
  });

  it('refuses a config that exposes the admin listener without a token', () => {
    const saved = process.env.PROXYMITY_ADMIN_TOKEN;
    delete process.env.PROXYMITY_ADMIN_TOKEN;
    try {
      assert.throws(
        () => parseConfig('backend: [{url: "http://127.0.0.1:1"}]\nadmin: {host: 0.0.0.0}\n', 'x.yaml'),
        (err: ConfigError) => /admin\.host: the admin listener on "0\.0\.0\.0" is reachable beyond this machine: set admin\.token/.test(err.message),
      );
    } finally {
      if (saved !== undefined) process.env.PROXYMITY_ADMIN_TOKEN = saved;
    }
  });

  it('can be switched off', async () => {
    const backends = await startBackends(1);
    const sut = await startProxy(backends, 'admin: {enabled: false}\n');
    try {
      assert.equal(sut.adminUrl, undefined);
      assert.equal((await request(`${sut.url}/`)).status, 200);
    } finally {
      await sut.close();
      await closeAll(backends);
    }
  });
});

interface AccessLine {
  time: string;
  request_id: string;
  client_ip: string;
  peer_ip: string;
  method: string;
  host: string;
  path: string;
  protocol: string;
  status: number;
  bytes_in: number;
  bytes_out: number;
  duration_ms: number;
  upstream_connect_ms: number | null;
  upstream_header_ms: number | null;
  backend: string | null;
  attempts: number;
  termination: string | null;
  error: string | null;
  request_headers?: Record<string, string | null>;
  response_headers?: Record<string, string>;
}

function readLog(file: string): AccessLine[] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as AccessLine);
}

describe('access log', () => {
  let backends: DummyBackend[];
  let logFile: string;
  let lines: AccessLine[];
  let deadLines: AccessLine[];
  let faultMetrics: { before: Scrape; after: Scrape };

  before(async () => {
    backends = await startBackends(1);
    const b = backends[0];
    logFile = join(mkdtempSync(join(tmpdir(), 'proxymity-log-')), 'access.log');
    const sut = await startProxy(
      backends,
      [
        `accessLog: {enabled: true, output: "${logFile}", requestHeaders: [authorization, x-trace], responseHeaders: [content-type, set-cookie]}`,
        'retry: {attempts: 1}',
        'healthCheck: {interval: 1h}',
        'outlierDetection: {consecutiveFailures: 1000}',
        'upstream: {timeout: 300ms}',
      ].join('\n'),
      '  maxBodySize: 1KiB\n  trustedProxies: [127.0.0.1]',
    );
    const metricsBefore = await scrape(sut.adminUrl!);
    const ok = await request(`${sut.url}/ok?q=1`, { headers: { authorization: 'Bearer secret', 'x-trace': 't1', 'x-request-id': 'req-ok-1', 'x-forwarded-for': '203.0.113.7' } });
    assert.equal(ok.status, 200);
    b.failNext('reset');
    // A POST: a reset GET on a reused connection is replayed once on a fresh one (stale keep-alive).
    assert.equal((await request(`${sut.url}/reset`, { method: 'POST', body: 'r', headers: { 'x-request-id': 'req-reset' } })).status, 502);
    b.failNext('hang');
    assert.equal((await request(`${sut.url}/hang`, { headers: { 'x-request-id': 'req-hang' } })).status, 504);
    b.failNext('garbage');
    assert.equal((await request(`${sut.url}/garbage`, { headers: { 'x-request-id': 'req-garbage' } })).status, 502);
    b.failNext('drop-mid-body');
    await request(`${sut.url}/bytes/1000000`, { headers: { 'x-request-id': 'req-drop' } }).catch(() => undefined);
    assert.equal((await request(`${sut.url}/big`, { method: 'POST', body: 'x'.repeat(2048), headers: { 'x-request-id': 'req-413' } })).status, 413);
    assert.equal((await request(`${sut.url}/upload`, { method: 'POST', body: 'y'.repeat(700), headers: { 'x-request-id': 'req-upload' } })).status, 200);
    b.delayMs = 2000;
    await abortAfter(`${sut.url}/given-up`, 150);
    await pollUntil(() => sut.app.get(ProxyEngine).inFlight, (n) => n === 0, { what: 'aborted request finished' });
    b.behave();
    await b.close();
    assert.equal((await request(`${sut.url}/refused`, { headers: { 'x-request-id': 'req-refused' } })).status, 502);
    faultMetrics = { before: metricsBefore, after: await scrape(sut.adminUrl!) };
    await sut.close(); // flushes the log
    lines = readLog(logFile);

    // Retries exhausted, then nothing left: a proxy whose two backends refuse.
    const deadLog = join(logFile, '..', 'dead.log');
    const urls = [`http://127.0.0.1:${await closedPort()}`, `http://127.0.0.1:${await closedPort()}`];
    const dead = await startProxy(urls, `accessLog: {enabled: true, output: "${deadLog}"}\nretry: {attempts: 2}\nhealthCheck: {interval: 1h}\noutlierDetection: {consecutiveFailures: 1, baseEjectionTime: 1h}\n`);
    assert.equal((await request(`${dead.url}/a`)).status, 502);
    assert.equal((await request(`${dead.url}/b`)).status, 503);
    await dead.close();
    deadLines = readLog(deadLog);
  });
  after(() => closeAll(backends));

  const byId = (id: string) => {
    const line = lines.find((l) => l.request_id === id);
    assert.ok(line, `no access-log line for ${id}; got ${lines.map((l) => l.request_id).join(', ')}`);
    return line;
  };

  it('writes one JSON line per request with every field', () => {
    assert.equal(lines.length, 9);
    for (const l of lines) {
      assert.deepEqual(
        Object.keys(l).filter((k) => k !== 'request_headers' && k !== 'response_headers' && k !== 'user_agent').sort(),
        ['attempts', 'backend', 'bytes_in', 'bytes_out', 'client_ip', 'duration_ms', 'error', 'host', 'method', 'path', 'peer_ip', 'protocol', 'request_id', 'status', 'termination', 'time', 'upstream_connect_ms', 'upstream_header_ms'],
      );
      assert.ok(!Number.isNaN(Date.parse(l.time)));
      assert.equal(l.protocol, 'HTTP/1.1');
      assert.ok(l.duration_ms >= 0);
    }
  });

  it('logs a normal request with client ip through trustedProxies, timings, sizes and redacted headers', () => {
    const l = byId('req-ok-1');
    assert.equal(l.status, 200);
    assert.equal(l.termination, null);
    assert.equal(l.error, null);
    assert.equal(l.client_ip, '203.0.113.7');
    assert.equal(l.peer_ip, '127.0.0.1');
    assert.equal(l.method, 'GET');
    assert.equal(l.path, '/ok?q=1');
    assert.equal(l.backend, 'b1');
    assert.equal(l.attempts, 1);
    assert.ok(l.bytes_out > 100, `bytes_out ${l.bytes_out}`);
    assert.equal(l.bytes_in, 0);
    assert.equal(typeof l.upstream_connect_ms, 'number', 'first request opened a connection');
    assert.equal(typeof l.upstream_header_ms, 'number');
    assert.deepEqual(l.request_headers, { authorization: '[REDACTED]', 'x-trace': 't1' });
    assert.equal(l.response_headers?.['content-type'], 'application/json');
  });

  it('names the termination of each fault', () => {
    const expect: [id: string, status: number, termination: string, error: string][] = [
      ['req-reset', 502, 'upstream_reset', 'connection_terminated'],
      ['req-hang', 504, 'upstream_timeout', 'http_response_timeout'],
      ['req-garbage', 502, 'upstream_protocol_error', 'http_protocol_error'],
      ['req-drop', 200, 'upstream_reset', 'connection_terminated'],
      ['req-413', 413, 'request_too_large', 'request_too_large'],
      ['req-refused', 502, 'upstream_connect_failure', 'connection_refused'],
    ];
    for (const [id, status, termination, error] of expect) {
      const l = byId(id);
      assert.deepEqual([l.status, l.termination, l.error], [status, termination, error], id);
    }
    const gaveUp = lines.find((l) => l.path === '/given-up');
    assert.deepEqual([gaveUp?.status, gaveUp?.termination], [499, 'client_closed']);
    assert.equal(byId('req-413').backend, null);
    assert.equal(byId('req-upload').bytes_in, 700);
  });

  it('counts each fault under its RFC 9209 error type in proxy_errors_total, and 499 for the client that left', () => {
    const { before, after } = faultMetrics;
    const errors = (error: string) => delta(before, after, 'proxymity_proxy_errors_total', { error });
    assert.equal(errors('connection_terminated'), 2, 'reset before the answer, and the cut mid-body');
    assert.equal(errors('http_response_timeout'), 1);
    assert.equal(errors('http_protocol_error'), 1);
    assert.equal(errors('request_too_large'), 1);
    assert.equal(errors('connection_refused'), 1);
    assert.equal(delta(before, after, 'proxymity_requests_total', { backend: 'b1', method: 'GET', code: '499' }), 1);
    assert.equal(delta(before, after, 'proxymity_requests_total', { backend: 'b1', method: 'GET', code: '504' }), 1);
    assert.equal(delta(before, after, 'proxymity_requests_total', { backend: '', method: 'POST', code: '413' }), 1);
  });

  it('says retry_limit_exceeded after the last try, then no_healthy_backend', () => {
    assert.equal(deadLines.length, 2);
    const [a, b] = deadLines;
    assert.deepEqual([a.status, a.termination, a.error, a.attempts], [502, 'retry_limit_exceeded', 'connection_refused', 2]);
    assert.deepEqual([b.status, b.termination, b.error, b.attempts, b.backend], [503, 'no_healthy_backend', 'destination_unavailable', 0, null]);
  });
});

describe('request ids and trace context', () => {
  const fx = proxyFixture(1);

  it('keeps a valid X-Request-Id, replaces an invalid one, and passes traceparent untouched', async () => {
    const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    const kept = await request(`${fx.sut.url}/id`, { headers: { 'x-request-id': 'abc-123', traceparent, tracestate: 'k=v' } });
    assert.equal(kept.headers['x-request-id'], 'abc-123');
    assert.equal(kept.json().headers['x-request-id'], 'abc-123');
    assert.equal(kept.json().headers.traceparent, traceparent);
    assert.equal(kept.json().headers.tracestate, 'k=v');
    const replaced = await request(`${fx.sut.url}/id`, { headers: { 'x-request-id': 'has spaces "and quotes"' } });
    assert.match(replaced.headers['x-request-id'] as string, /^[0-9a-f-]{36}$/);
    assert.equal(replaced.json().headers['x-request-id'], replaced.headers['x-request-id']);
    const generated = await request(`${fx.sut.url}/id`);
    assert.match(generated.headers['x-request-id'] as string, /^[0-9a-f-]{36}$/);
  });
});
