/**
 * Each upstream timeout with its own error, through the real proxy and real backends.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { RunningProxymity } from '../../src/proxymity.js';
import { closeAll, type DummyBackend, startBackends } from '../fixtures/backend-server.js';
import { startStalledListener, type StalledListener } from '../fixtures/stalled-listener.js';
import { makeTestCa, type TestCa } from '../helpers/certs.js';
import { request } from '../helpers/http-client.js';
import { delta, scrape } from '../helpers/metrics.js';
import { pollUntil } from '../helpers/poll-until.js';
import { ProxyEngine } from '../../src/proxy/index.js';
import { BackendRegistry } from '../../src/backend/index.js';
import { proxyFixture, startProxy } from '../helpers/proxy.js';

function download(url: string): Promise<{ status: number; outcome: string; body: string }> {
  return new Promise((resolve) => {
    http
      .get(url, { agent: false }, (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, outcome: 'complete', body }));
        res.on('error', () => resolve({ status: res.statusCode ?? 0, outcome: 'cut', body }));
      })
      .on('error', (e) => resolve({ status: 0, outcome: `error ${e.message}`, body: '' }));
  });
}

describe('upstream timeouts', () => {
  const fx = proxyFixture(1, 'healthCheck: {interval: 1h}\nupstream: {timeout: 400ms, headerTimeout: 250ms, totalTimeout: 1500ms}');

  it('answers 504 when the headers do not arrive within headerTimeout', async () => {
    const t0 = Date.now();
    const res = await request(`${fx.sut.url}/delay/350`);
    assert.equal(res.status, 504);
    assert.equal(res.headers['proxy-status'], 'proxymity; error=http_response_timeout');
    assert.ok(Date.now() - t0 < 340, 'the header timeout fired before the idle timeout could');
  });

  it('passes an answer that arrives within headerTimeout', async () => {
    assert.equal((await request(`${fx.sut.url}/delay/100`)).status, 200);
  });

  it('keeps a response flowing past headerTimeout as long as data keeps coming', async () => {
    const res = await download(`${fx.sut.url}/drip/4/150`);
    assert.deepEqual([res.status, res.outcome, res.body.length], [200, 'complete', 20]);
  });

  it('cuts a response whose backend goes silent mid-body for the idle timeout', async () => {
    const res = await download(`${fx.sut.url}/drip/3/600`);
    // The proxy's response headers may still sit in its write buffer (Node sends them with the
    // first body chunk), so the client sees either a cut body or a closed connection: never a
    // complete response, never a second status line.
    assert.notEqual(res.outcome, 'complete');
    assert.ok(res.body.length < 15);
  });

  it('cuts an exchange that runs past totalTimeout even while data keeps coming', async () => {
    const t0 = Date.now();
    const res = await download(`${fx.sut.url}/drip/20/150`);
    assert.equal(res.outcome, 'cut');
    assert.ok(Date.now() - t0 < 2500, 'cut at the total timeout, not at the end of the body');
  });
});

describe('upstream connect timeout', () => {
  let stalled: StalledListener;
  let backends: DummyBackend[];
  let sut: RunningProxymity;
  let pair: RunningProxymity;
  before(async () => {
    stalled = await startStalledListener();
    backends = await startBackends(1);
    sut = await startProxy([stalled.url], 'healthCheck: {interval: 1h}\nupstream: {connectTimeout: 300ms, timeout: 60s}');
    pair = await startProxy([stalled.url, backends[0]!.url], 'healthCheck: {interval: 1h}\nupstream: {connectTimeout: 300ms, timeout: 60s}');
  });
  after(async () => {
    await sut.close();
    await pair.close();
    await closeAll(backends);
    await stalled.close();
  });

  it('answers 504 connection_timeout when the backend never accepts the connection', async () => {
    const res = await request(`${sut.url}/`);
    assert.equal(res.status, 504);
    assert.equal(res.headers['proxy-status'], 'proxymity; error=connection_timeout');
  });

  it('sends a request whose connect timed out to another backend', async () => {
    for (let i = 0; i < 4; i++) assert.equal((await request(`${pair.url}/`)).status, 200, `request ${i + 1}`);
  });
});

/**
 * Silences the client causes are the client's: a download it stops reading is bounded by
 * proxy.sendTimeout, not by the backend's idle timeout, and an upload it stops sending gets 408.
 * Neither is logged, counted, retried or ejected as a backend failure.
 */
describe('client-side timeouts', () => {
  const MiB = 1024 * 1024;
  let backends: DummyBackend[];
  let silent: http.Server;
  let silentUrl: string;
  let sut: RunningProxymity;
  let dir: string;
  let logFile: string;
  let engine: ProxyEngine;
  let registry: BackendRegistry;
  let ca: TestCa;

  before(async () => {
    backends = await startBackends(2);
    // Part of a response, then silence with the connection open: 16 MiB of 32, or 20 KiB of 1 MiB.
    silent = http.createServer((req, res) => {
      req.resume();
      if (req.url === '/silent/cacheable') return void res.writeHead(200, { 'cache-control': 'max-age=60', 'content-length': '5' }).end('hello');
      if (req.url === '/silent/cacheable-384k') return void res.writeHead(200, { 'cache-control': 'max-age=60', 'content-length': String(384 * 1024) }).end(Buffer.alloc(384 * 1024, 8));
      if (req.url === '/silent/big-cacheable') return void res.writeHead(200, { 'cache-control': 'max-age=60', 'content-length': String(24 * MiB) }).end(Buffer.alloc(24 * MiB, 9));
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(32 * MiB) });
      if (req.url === '/silent/20k') return void res.write(Buffer.alloc(20 * 1024, 7));
      const chunk = Buffer.alloc(MiB, 7);
      let n = 0;
      const pump = (): void => {
        while (n < 16) {
          n++;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
      };
      pump();
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    silentUrl = `http://127.0.0.1:${(silent.address() as net.AddressInfo).port}`;
    dir = mkdtempSync(join(tmpdir(), 'proxymity-client-timeouts-'));
    logFile = join(dir, 'access.log');
    ca = makeTestCa();
    const cert = ca.issue('a', ['a.test']);
    sut = await startProxy(
      backends,
      [
        'healthCheck: {enabled: false}',
        'upstream: {timeout: 300ms}',
        'retry: {on: [connect-failure, reset, timeout], methods: [GET, POST], bufferBody: 1MiB}',
        `accessLog: {enabled: true, output: "${logFile}"}`,
        'routes:',
        '  - match: {path: /silent/}',
        '    pool: quiet',
        '  - match: {path: /}',
        '    pool: default',
        'pools:',
        `  quiet: {backends: [{name: s1, url: "${silentUrl}"}]}`,
        'cache: {enabled: true, maxObjectSize: 32MiB}',
        'listeners:',
        `  - {name: tls, host: 127.0.0.1, port: 0, protocol: https, certificates: [{cert: "${cert.cert}", key: "${cert.key}"}]}`,
      ].join('\n'),
      '  sendTimeout: 1500ms',
    );
    engine = sut.app.get(ProxyEngine);
    registry = sut.app.get(BackendRegistry);
  });
  after(async () => {
    await sut.close();
    await closeAll(backends);
    silent.closeAllConnections();
    await new Promise((resolve) => silent.close(resolve));
    rmSync(dir, { recursive: true, force: true });
    rmSync(ca.dir, { recursive: true, force: true });
  });

  const logLine = (path: string) =>
    pollUntil(
      () => readFileSync(logFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.path === path),
      (l) => l !== undefined,
      { timeoutMs: 3000, what: `the access-log line of ${path}` },
    ) as Promise<Record<string, unknown>>;

  /**
   * GETs `path`, stops reading after `readFirst` bytes for `pauseMs`, then reads the rest. (A
   * client that never reads again would not even see the connection close: the FIN sits behind
   * the data in its receive buffer.)
   */
  function pausedDownload(path: string, readFirst: number, pauseMs: number): Promise<{ status: number; bytes: number; complete: boolean }> {
    return new Promise((resolve) => {
      http
        .get(`${sut.url}${path}`, { agent: false }, (res) => {
          let bytes = 0;
          let paused = false;
          res.on('data', (c: Buffer) => {
            bytes += c.length;
            if (!paused && bytes >= readFirst) {
              paused = true;
              res.pause();
              setTimeout(() => res.resume(), pauseMs);
            }
          });
          res.on('end', () => resolve({ status: res.statusCode ?? 0, bytes, complete: true }));
          res.on('error', () => resolve({ status: res.statusCode ?? 0, bytes, complete: false }));
          res.on('close', () => resolve({ status: res.statusCode ?? 0, bytes, complete: res.complete }));
        })
        .on('error', () => resolve({ status: 0, bytes: 0, complete: false }));
    });
  }

  it('lets a client pause a download longer than the backend idle timeout, within sendTimeout', async () => {
    const before = await scrape(sut.adminUrl as string);
    // 64 MiB: far more than the socket buffers hold, so the backend is held up while the client pauses.
    const got = await pausedDownload(`/bytes/${64 * MiB}`, MiB, 1000);
    assert.deepEqual(got, { status: 200, bytes: 64 * MiB, complete: true });
    const line = await logLine(`/bytes/${64 * MiB}`);
    assert.equal(line.termination, null);
    const after = await scrape(sut.adminUrl as string);
    assert.equal(delta(before, after, 'proxymity_proxy_errors_total', { error: 'connection_read_timeout' }), 0);
  });

  it('closes a client that takes none of the response for sendTimeout, and does not blame the backend', async () => {
    const before = await scrape(sut.adminUrl as string);
    // Paused well past sendTimeout: the proxy closes the connection meanwhile, so the rest of
    // the 256 MiB never comes once the client reads again.
    const got = await pausedDownload(`/bytes/${256 * MiB}?stuck`, MiB, 2500);
    assert.equal(got.complete, false, `the connection was closed before the body was whole (${got.bytes} bytes)`);
    const line = await logLine(`/bytes/${256 * MiB}?stuck`);
    assert.equal(line.status, 200);
    assert.equal(line.termination, 'client_send_timeout');
    assert.equal(line.error, 'client_timeout');
    assert.ok((line.duration_ms as number) >= 1400, `closed after sendTimeout (1500ms), not the backend's 300ms idle timeout: ${line.duration_ms}ms`);
    const after = await scrape(sut.adminUrl as string);
    assert.equal(delta(before, after, 'proxymity_proxy_errors_total', { error: 'client_timeout' }), 1);
    assert.equal(delta(before, after, 'proxymity_proxy_errors_total', { error: 'connection_read_timeout' }), 0);
    // The upstream request was cancelled; the backend stays healthy with no failure held against it.
    await pollUntil(() => engine.inFlight, (n) => n === 0, { timeoutMs: 3000, what: 'nothing in flight' });
    for (const b of registry.all) {
      assert.equal(b.inFlight, 0, `${b.id} in flight`);
      assert.equal(b.healthy, true, `${b.id} healthy`);
      assert.equal(b.passiveFailures, 0, `${b.id} passive failures`);
    }
  });

  it('still times out a backend that goes silent after the client caught up from a pause', { timeout: 20_000 }, async () => {
    // The backend sends 16 MiB and stops. The client pauses past the idle timeout, reads what
    // was sent, and then only the backend is silent: the idle timeout must apply again.
    const got = await pausedDownload('/silent/after-pause', 64 * 1024, 800);
    assert.equal(got.complete, false);
    assert.equal(got.bytes, 16 * MiB, 'everything the backend sent arrived before the cut');
    const line = await logLine('/silent/after-pause');
    assert.equal(line.termination, 'upstream_timeout');
    assert.equal(line.error, 'connection_read_timeout');
  });

  it('restarts the backend idle timeout when a stalled client catches up with nothing more read from the backend', { timeout: 20_000 }, async () => {
    // An HTTP/2 client with a stream window of 0 gets the headers and none of the body: the proxy
    // has read all 20 KiB the backend sent and holds them for the client. The idle timeout runs
    // out meanwhile (ignored: the client's doing). When the window opens the client takes them,
    // and no more ever comes from the backend: only a timer restarted at that point can cut it.
    const client = http2.connect(sut.listeners.tls as string, { ca: readFileSync(ca.caCert), servername: 'a.test', settings: { initialWindowSize: 0 } });
    client.on('error', () => undefined);
    try {
      const req = client.request({ ':path': '/silent/20k', ':method': 'GET', ':authority': 'a.test' });
      req.on('error', () => undefined);
      req.end();
      const status = await new Promise<number>((resolve) => req.once('response', (h) => resolve(Number(h[':status']))));
      assert.equal(status, 200);
      let bytes = 0;
      req.on('data', (c: Buffer) => (bytes += c.length));
      await new Promise((resolve) => setTimeout(resolve, 800)); // past upstream.timeout (300ms)
      client.settings({ initialWindowSize: 65_535 });
      await new Promise((resolve) => req.once('close', resolve));
      assert.equal(bytes, 20 * 1024, 'the client got all the backend sent');
      assert.equal(req.rstCode, http2.constants.NGHTTP2_INTERNAL_ERROR, 'then the stream was cut as failed');
    } finally {
      client.close();
    }
    const line = await logLine('/silent/20k');
    assert.equal(line.termination, 'upstream_timeout');
    assert.equal(line.error, 'connection_read_timeout');
  });

  it('closes a client that takes none of a response the proxy has ended, relayed or from the cache', { timeout: 20_000 }, async () => {
    assert.equal((await request(`${sut.url}/silent/cacheable`)).body, 'hello'); // now stored
    // Window 0: both answers are written and ended at once, and sit in the proxy unsent.
    const client = http2.connect(sut.listeners.tls as string, { ca: readFileSync(ca.caCert), servername: 'a.test', settings: { initialWindowSize: 0 } });
    client.on('error', () => undefined);
    try {
      const get = (path: string) => {
        const req = client.request({ ':path': path, ':method': 'GET', ':authority': 'a.test' });
        req.on('error', () => undefined);
        req.end();
        return new Promise<number | undefined>((resolve) => req.once('close', () => resolve(req.rstCode)));
      };
      const codes = await Promise.all([get('/silent/cacheable'), get('/bytes/2000')]);
      assert.deepEqual(codes, [http2.constants.NGHTTP2_INTERNAL_ERROR, http2.constants.NGHTTP2_INTERNAL_ERROR]);
    } finally {
      client.close();
    }
    for (const path of ['/silent/cacheable', '/bytes/2000']) {
      const line = await pollUntil(
        () => readFileSync(logFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.path === path && l.protocol !== 'HTTP/1.1'),
        (l) => l !== undefined,
        { timeoutMs: 3000, what: `the HTTP/2 access-log line of ${path}` },
      );
      assert.equal(line?.termination, 'client_send_timeout', path);
      assert.ok((line?.duration_ms as number) >= 1400, `${path} closed after sendTimeout: ${line?.duration_ms}ms`);
    }
  });

  it('keeps a client that takes a large stored response slowly but steadily', { timeout: 30_000 }, async () => {
    const path = '/silent/big-cacheable';
    assert.equal((await request(`${sut.url}${path}`)).body.length, 24 * MiB); // now stored
    // 24 MiB written at once from the cache: more than the socket buffers hold, so the rest
    // waits in the proxy. The client reads in bursts with pauses shorter than sendTimeout, and
    // takes several sendTimeouts in all: it is never silent long enough to be cut.
    const t0 = Date.now();
    const got = await new Promise<{ bytes: number; complete: boolean }>((resolve) => {
      http.get(`${sut.url}${path}`, { agent: false }, (res) => {
        let bytes = 0;
        let nextPause = 4 * MiB;
        res.on('data', (c: Buffer) => {
          bytes += c.length;
          if (bytes < nextPause) return;
          nextPause += 4 * MiB; // a 700 ms pause after every 4 MiB
          res.pause();
          setTimeout(() => res.resume(), 700);
        });
        res.on('end', () => resolve({ bytes, complete: true }));
        res.on('error', () => resolve({ bytes, complete: false }));
      });
    });
    assert.deepEqual(got, { bytes: 24 * MiB, complete: true });
    assert.ok(Date.now() - t0 > 3000, 'the download outlasted twice sendTimeout, so the slow path was exercised');
  });

  it('keeps an HTTP/2 client that takes a response slowly but steadily, relayed or from the cache', { timeout: 30_000 }, async () => {
    assert.equal((await request(`${sut.url}/silent/cacheable-384k`)).body.length, 384 * 1024); // now stored
    // A 16 KiB stream window and a 50 ms pause after each chunk taken: about 160 KiB/s. Each of
    // the proxy's writes (at most 64 KiB) completes well within sendTimeout, and 384 KiB take
    // longer than sendTimeout in all.
    const slowly = async (path: string) => {
      const client = http2.connect(sut.listeners.tls as string, { ca: readFileSync(ca.caCert), servername: 'a.test', settings: { initialWindowSize: 16 * 1024 } });
      client.on('error', () => undefined);
      try {
        const req = client.request({ ':path': path, ':method': 'GET', ':authority': 'a.test' });
        req.on('error', () => undefined);
        req.end();
        let bytes = 0;
        req.on('data', (c: Buffer) => {
          bytes += c.length;
          req.pause();
          setTimeout(() => req.resume(), 50);
        });
        await new Promise((resolve) => req.once('close', resolve));
        return { bytes, rstCode: req.rstCode };
      } finally {
        client.close();
      }
    };
    const t0 = Date.now();
    const got = await Promise.all([slowly(`/bytes/${384 * 1024}`), slowly('/silent/cacheable-384k')]);
    assert.deepEqual(got, [{ bytes: 384 * 1024, rstCode: 0 }, { bytes: 384 * 1024, rstCode: 0 }]);
    assert.ok(Date.now() - t0 > 1500, 'the downloads outlasted sendTimeout, so the slow path was exercised');
  });

  it('does not time out a pipelined response queued behind a slow one', { timeout: 20_000 }, async () => {
    // The first answer drips for 2 s (the backend's pace, past sendTimeout, each drip within the
    // backend idle timeout); the second, 1 MiB, waits in the proxy behind it, unable to go out:
    // not its client stalling.
    const data = await new Promise<Buffer>((resolve, reject) => {
      const chunks: Buffer[] = [];
      const s = net.connect(sut.port, '127.0.0.1', () => {
        s.write('GET /drip/10/200 HTTP/1.1\r\nhost: x\r\n\r\nGET /bytes/1048576?pipelined HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n');
      });
      s.on('data', (c: Buffer) => chunks.push(c));
      s.on('close', () => resolve(Buffer.concat(chunks)));
      s.on('error', reject);
    });
    const text = data.toString('latin1');
    assert.equal(text.match(/HTTP\/1\.1 200 OK\r\n/g)?.length, 2, 'two answers');
    const second = text.lastIndexOf('\r\n\r\n') + 4;
    assert.equal(data.length - second, 1048576, 'the second body arrived whole');
    const line = await logLine('/bytes/1048576?pipelined');
    assert.equal(line.termination, null);
  });

  it('ends the exchange of a pipelined connection when its client goes away, and never forwards the request queued behind it', { timeout: 20_000 }, async () => {
    // Pipelined requests are forwarded one at a time: the second waits for the first's answer
    // to be sent, which a client that reads nothing never lets happen.
    const base = engine.inFlight;
    const s = net.connect(sut.port, '127.0.0.1', () => {
      s.write(`GET /bytes/${64 * MiB}?queued-a HTTP/1.1\r\nhost: x\r\n\r\nGET /bytes/${MiB}?queued-b HTTP/1.1\r\nhost: x\r\n\r\n`);
    });
    s.on('error', () => undefined);
    s.pause(); // reads nothing
    await pollUntil(() => engine.inFlight, (n) => n === base + 1, { timeoutMs: 3000, what: 'the first exchange started' });
    s.destroy();
    await pollUntil(() => engine.inFlight, (n) => n === base, { timeoutMs: 3000, what: 'the exchange ended' });
    for (const b of registry.all) assert.equal(b.inFlight, 0, `${b.id} in flight`);
    assert.equal((await logLine(`/bytes/${64 * MiB}?queued-a`)).status, 499);
    for (const b of backends) assert.equal(b.seen.some((line) => line.includes('queued-b')), false, 'the queued request never reached a backend');
  });

  /**
   * An HTTP/2 upload that sends 10 bytes and never ends. Resolves once the stream has closed and
   * the exchange has ended with the session still open, with the status and the reset code.
   */
  async function stalledH2Upload(path: string, settings: http2.Settings = {}): Promise<{ status: number; rstCode: number | undefined }> {
    const base = engine.inFlight;
    const client = http2.connect(sut.listeners.tls as string, { ca: readFileSync(ca.caCert), servername: 'a.test', settings });
    client.on('error', () => undefined);
    try {
      const req = client.request({ ':path': path, ':method': 'POST', ':authority': 'a.test', 'content-type': 'text/plain' });
      req.on('error', () => undefined);
      req.write('x'.repeat(10)); // and never ends
      const status = await new Promise<number>((resolve) => req.once('response', (h) => resolve(Number(h[':status']))));
      req.resume();
      await new Promise((resolve) => req.once('close', resolve));
      await pollUntil(() => engine.inFlight, (n) => n === base, { timeoutMs: 3000, what: 'the exchange to end with the session still open' });
      return { status, rstCode: req.rstCode };
    } finally {
      client.close();
    }
  }

  it('bounds the proxy\'s own answer by sendTimeout when the client cannot take it (HTTP/2 window 0, stalled upload)', { timeout: 20_000 }, async () => {
    // The 408's headers go out; its body cannot, and the stream is cut after sendTimeout.
    assert.deepEqual(await stalledH2Upload('/h2-upload-stalls-window-0', { initialWindowSize: 0 }), { status: 408, rstCode: http2.constants.NGHTTP2_INTERNAL_ERROR });
  });

  it('answers 408 to an HTTP/2 upload the client stops sending, and ends the stream so nothing stays in flight', { timeout: 20_000 }, async () => {
    // Ended without error once the answer is complete (RFC 9113 §8.1).
    assert.deepEqual(await stalledH2Upload('/h2-upload-stalls'), { status: 408, rstCode: http2.constants.NGHTTP2_NO_ERROR });
    const line = await logLine('/h2-upload-stalls');
    assert.equal(line.status, 408);
    assert.equal(line.termination, 'client_body_timeout');
  });

  it('answers 408 to an upload the client stops sending, without retrying or blaming the backend', async () => {
    const before = await scrape(sut.adminUrl as string);
    const seenBefore = backends.map((b) => b.proxied);
    const answer = await new Promise<string>((resolve, reject) => {
      const s = net.connect(sut.port, '127.0.0.1', () => {
        s.write('POST /upload-stalls HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ncontent-length: 1000\r\n\r\n' + 'x'.repeat(10));
      });
      let text = '';
      s.on('data', (c) => (text += c));
      s.on('close', () => resolve(text));
      s.on('error', reject);
      s.setTimeout(5000, () => s.destroy(new Error('no answer within 5 s')));
    });
    assert.match(answer, /^HTTP\/1\.1 408 Request Timeout\r\n/);
    assert.match(answer, /\r\nproxy-status: proxymity; error=client_timeout\r\n/i);
    assert.match(answer, /\r\nconnection: close\r\n/i);
    const seen = backends.map((b, i) => b.proxied - seenBefore[i]!);
    assert.equal(seen.reduce((a, n) => a + n, 0), 1, `one backend saw the request, no retry: ${seen}`);
    const line = await logLine('/upload-stalls');
    assert.equal(line.status, 408);
    assert.equal(line.termination, 'client_body_timeout');
    const after = await scrape(sut.adminUrl as string);
    assert.equal(delta(before, after, 'proxymity_proxy_errors_total', { error: 'client_timeout' }), 1);
    assert.equal(delta(before, after, 'proxymity_retries_total', { reason: 'timeout' }), 0);
    for (const b of registry.all) assert.equal(b.passiveFailures, 0, `${b.id} passive failures`);
  });
});
