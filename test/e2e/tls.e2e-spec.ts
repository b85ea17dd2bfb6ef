/**
 * HTTPS listeners with certificates from a test CA (openssl): SNI selection, HTTP/2 and
 * HTTP/1.1 proxied (Node's https and http2 clients, and curl --http2), the redirect listener,
 * HSTS, certificate hot swap with a keep-alive connection open, a bad key refused on reload,
 * certificate files watched on disk (a log beside them ignored; a Secret volume's ..data swap),
 * and start-up refusing a bad pair.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { X509Certificate } from 'node:crypto';
import { appendFileSync, copyFileSync, linkSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';
import { parseConfig } from '../../src/config/index.js';
import { ProxyEngine, UpgradeProxy } from '../../src/proxy/index.js';
import { startProxymity, type RunningProxymity } from '../../src/proxymity.js';
import { closeAll, startBackends, type DummyBackend } from '../fixtures/backend-server.js';
import { makeTestCa, type TestCa } from '../helpers/certs.js';
import { h2Request } from '../helpers/http-client.js';
import { sample, scrape } from '../helpers/metrics.js';
import { pollUntil } from '../helpers/poll-until.js';
import { withAdminPortZero } from '../helpers/processes.js';

const execFileAsync = promisify(execFile);

/** Sends raw bytes over TLS (HTTP/1.1 by ALPN), returns everything answered until the close (or 2 s). */
function rawTls(port: number, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: 'a.test', ALPNProtocols: ['http/1.1'], rejectUnauthorized: false }, () => s.write(bytes));
    let out = '';
    s.on('data', (d) => (out += d));
    s.on('close', () => resolve(out));
    s.on('error', (e: NodeJS.ErrnoException) => (e.code === 'ECONNRESET' ? resolve(out) : reject(e)));
    s.setTimeout(2000, () => s.destroy());
  });
}

/** The certificate a TLS client gets for `servername` (subject CN and serial). */
function peerCert(port: number, servername: string | undefined, ca: string): Promise<{ cn: string; serial: string }> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername, ca: readFileSync(ca), rejectUnauthorized: false }, () => {
      const c = s.getPeerCertificate();
      s.destroy();
      resolve({ cn: String(c.subject.CN), serial: c.serialNumber });
    });
    s.on('error', reject);
  });
}

describe('HTTPS listeners', () => {
  let ca: TestCa;
  let backends: DummyBackend[];
  let sut: RunningProxymity;
  let httpsUrl: string;
  let port: number;
  let logFile: string;
  let files: { a: { cert: string; key: string }; b: { cert: string; key: string }; wild: { cert: string; key: string } };

  before(async () => {
    ca = makeTestCa();
    files = { a: ca.issue('a', ['a.test']), b: ca.issue('b', ['b.test']), wild: ca.issue('wild', ['*.wild.test']) };
    backends = await startBackends(1);
    logFile = join(ca.dir, 'access.log');
    const yaml = `proxy: {host: 127.0.0.1, port: 0}
backend:
  - url: "${backends[0].url}"
healthCheck: {interval: 1h}
accessLog: {enabled: true, output: "${logFile}"}
listeners:
  - name: tls
    host: 127.0.0.1
    port: 0
    protocol: https
    hsts: "max-age=31536000"
    certificates:
      - {cert: "${files.a.cert}", key: "${files.a.key}"}
      - {cert: "${files.b.cert}", key: "${files.b.key}"}
      - {cert: "${files.wild.cert}", key: "${files.wild.key}"}
  - name: redirect
    host: 127.0.0.1
    port: 0
    protocol: redirect
    redirectPort: 8443
  - name: tls-short
    host: 127.0.0.1
    port: 0
    protocol: https
    hsts: "max-age=300; includeSubDomains"
    certificates:
      - {cert: "${files.a.cert}", key: "${files.a.key}"}
  - name: tls-none
    host: 127.0.0.1
    port: 0
    protocol: https
    certificates:
      - {cert: "${files.a.cert}", key: "${files.a.key}"}
`;
    sut = await startProxymity(parseConfig(withAdminPortZero(yaml), 'tls.yaml'), { logger: false });
    httpsUrl = sut.listeners.tls;
    port = Number(new URL(httpsUrl).port);
  });
  after(async () => {
    await sut.close();
    await closeAll(backends);
  });

  it('selects the certificate by SNI: exact name, then wildcard, then the first one', async () => {
    assert.equal((await peerCert(port, 'a.test', ca.caCert)).cn, 'a.test');
    assert.equal((await peerCert(port, 'b.test', ca.caCert)).cn, 'b.test');
    assert.equal((await peerCert(port, 'shop.wild.test', ca.caCert)).cn, '*.wild.test');
    assert.equal((await peerCert(port, 'unknown.test', ca.caCert)).cn, 'a.test');
    assert.equal((await peerCert(port, undefined, ca.caCert)).cn, 'a.test');
  });

  it('proxies HTTP/1.1 over TLS with X-Forwarded-Proto https and HSTS', async () => {
    const res = await new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }>((resolve, reject) => {
      https
        .get({ host: '127.0.0.1', port, path: '/h1', servername: 'b.test', headers: { host: 'b.test' }, ca: readFileSync(ca.caCert) }, (r) => {
          let body = '';
          r.on('data', (c) => (body += c));
          r.on('end', () => resolve({ status: r.statusCode ?? 0, headers: r.headers, body }));
        })
        .on('error', reject);
    });
    assert.equal(res.status, 200);
    const echo = JSON.parse(res.body);
    assert.equal(echo.path, '/h1');
    assert.equal(echo.headers['x-forwarded-proto'], 'https');
    assert.equal(res.headers['strict-transport-security'], 'max-age=31536000');
  });

  it('sends each listener its own HSTS value, over HTTP/1.1 and HTTP/2, and none where the listener has none; on the proxy\'s own answers too (errors, /health, a malformed request, a refused upgrade)', async () => {
    const h1 = (url: string, path = '/hsts') =>
      new Promise<http.IncomingHttpHeaders>((resolve, reject) => {
        const u = new URL(url);
        https
          .get({ host: '127.0.0.1', port: Number(u.port), path, servername: 'a.test', headers: { host: 'a.test' }, ca: readFileSync(ca.caCert) }, (r) => {
            r.resume();
            r.on('end', () => resolve({ ...r.headers, ':status': String(r.statusCode) }));
          })
          .on('error', reject);
      });
    const h2 = async (url: string) => {
      const client = http2.connect(url, { ca: readFileSync(ca.caCert), servername: 'a.test' });
      client.on('error', () => undefined); // reported through the request
      try {
        return (await h2Request(client, { ':path': '/hsts', ':method': 'GET', ':authority': 'a.test' })).headers;
      } finally {
        client.close();
      }
    };
    for (const [name, want] of [['tls', 'max-age=31536000'], ['tls-short', 'max-age=300; includeSubDomains'], ['tls-none', undefined]] as const) {
      assert.equal((await h1(sut.listeners[name]))['strict-transport-security'], want, `${name} over HTTP/1.1`);
      const headers = await h2(sut.listeners[name]);
      assert.equal(headers[':status'], 200, name);
      assert.equal(headers['strict-transport-security'], want, `${name} over HTTP/2`);
      // An answer the proxy makes itself: 414 for a request target over proxy.maxUrlLength.
      const tooLong = await h1(sut.listeners[name], `/${'a'.repeat(9000)}`);
      assert.equal(tooLong[':status'], '414', name);
      assert.equal(tooLong['strict-transport-security'], want, `${name}: the proxy's 414`);
      // The proxy's own health endpoint.
      const health = await h1(sut.listeners[name], '/health');
      assert.equal(health[':status'], '200', name);
      assert.equal(health['strict-transport-security'], want, `${name}: /health`);
      // A request Node cannot parse: the same 400 as on the main listener, naming the error.
      const bad = await rawTls(Number(new URL(sut.listeners[name]).port), 'GET / HTTP/1.1\r\nHost: a.test\r\nBad Header: x\r\n\r\n');
      assert.match(bad, /^HTTP\/1\.1 400 Bad Request\r\n/, name);
      assert.match(bad, /\r\n\r\n400 Bad Request: HPE_INVALID_HEADER_TOKEN\n$/, name);
      assert.equal(/^strict-transport-security: (.*)\r$/m.exec(bad)?.[1], want, `${name}: the 400 for a malformed request`);
      // The proxy's own refusal of a WebSocket upgrade (414: the target is over proxy.maxUrlLength).
      const upgrade = await rawTls(
        Number(new URL(sut.listeners[name]).port),
        `GET /${'a'.repeat(9000)} HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
      assert.match(upgrade, /^HTTP\/1\.1 414 /, name);
      assert.equal(/^strict-transport-security: (.*)\r$/m.exec(upgrade)?.[1], want, `${name}: the proxy's 414 to an upgrade`);
    }
  });

  it('proxies HTTP/2 to the HTTP/1.1 backend: Host from :authority, no connection headers back', async () => {
    const client = http2.connect(`https://127.0.0.1:${port}`, { ca: readFileSync(ca.caCert), servername: 'a.test' });
    client.on('error', () => undefined); // reported through the request
    try {
      const { headers, body } = await h2Request(client, { ':path': '/h2?x=1', ':method': 'GET', ':authority': `a.test:${port}` });
      assert.equal(headers[':status'], 200);
      assert.equal(headers.connection, undefined);
      assert.equal(headers['keep-alive'], undefined);
      const echo = JSON.parse(body);
      assert.equal(echo.path, '/h2?x=1');
      assert.equal(echo.headers.host, `a.test:${port}`);
      assert.ok(!Object.keys(echo.headers).some((k) => k.startsWith(':')), 'no pseudo-header upstream');
      // At most 128 streams at once per connection (Node's own default is 2^32-1).
      assert.equal(client.remoteSettings.maxConcurrentStreams, 128);
      // CONNECT: a reverse proxy opens no tunnels (a 2xx here would mean one was opened).
      const connect = client.request({ ':method': 'CONNECT', ':authority': 'example.com:443' });
      const status = await new Promise<number>((resolve, reject) => connect.once('response', (h) => resolve(Number(h[':status']))).once('error', reject));
      assert.equal(status, 405);
      connect.close();
    } finally {
      client.close();
    }
  });

  it('answers /health over HTTP/2 itself, without a reason phrase (no Node warning)', async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.message);
    process.on('warning', onWarning);
    const client = http2.connect(`https://127.0.0.1:${port}`, { ca: readFileSync(ca.caCert), servername: 'a.test' });
    client.on('error', () => undefined); // reported through the request
    try {
      const { headers, body } = await h2Request(client, { ':path': '/health', ':method': 'GET', ':authority': `a.test:${port}` });
      assert.equal(headers[':status'], 200);
      assert.equal(headers['cache-control'], 'no-store');
      assert.equal(JSON.parse(body).status, 'ok');
      await new Promise((resolve) => setImmediate(resolve));
      assert.deepEqual(warnings.filter((m) => /status message/i.test(m)), []);
    } finally {
      process.off('warning', onWarning);
      client.close();
    }
  });

  it('proxies WebSockets over TLS (wss)', async () => {
    // The chain is verified against the test CA; the name check is skipped (the URL is an IP address).
    const ws = new WebSocket(`wss://127.0.0.1:${port}/ws`, { ca: readFileSync(ca.caCert), checkServerIdentity: (() => undefined) as never });
    const echoed = await new Promise<string>((resolve, reject) => {
      ws.once('open', () => ws.send('over tls'));
      ws.once('message', (m) => resolve(String(m)));
      ws.once('error', reject);
    });
    assert.equal(echoed, 'over tls');
    ws.close();
  });

  /** One HTTP/2 request on a fresh session; resolves with status, headers and body. */
  const h2 = (path: string, opts: { method?: string; body?: Buffer; cancelAfterFirstChunk?: boolean } = {}) =>
    new Promise<{ status: number; headers: http2.IncomingHttpHeaders; body: string }>((resolve, reject) => {
      const client = http2.connect(`https://127.0.0.1:${port}`, { ca: readFileSync(ca.caCert), servername: 'a.test' });
      client.on('error', () => undefined);
      const req = client.request({ ':path': path, ':method': opts.method ?? 'GET', ':authority': `a.test:${port}` });
      let headers: http2.IncomingHttpHeaders = {};
      let body = '';
      req.on('response', (h) => (headers = h));
      req.on('data', (c) => {
        body += c;
        if (opts.cancelAfterFirstChunk) {
          req.close(http2.constants.NGHTTP2_CANCEL);
          client.close();
          resolve({ status: Number(headers[':status']), headers, body });
        }
      });
      req.on('end', () => {
        client.close();
        resolve({ status: Number(headers[':status']), headers, body });
      });
      req.on('error', reject);
      if (opts.body !== undefined) {
        // Written in pieces, without Content-Length: HTTP/2 frames the body itself.
        req.write(opts.body.subarray(0, 1000));
        setTimeout(() => req.end(opts.body!.subarray(1000)), 20);
      } else req.end();
    });

  it('streams an HTTP/2 request body that has no Content-Length', async () => {
    const body = Buffer.alloc(200_000, 'b');
    const res = await h2('/upload', { method: 'POST', body });
    assert.equal(res.status, 200);
    assert.equal(JSON.parse(res.body).bodyBytes, body.length);
  });

  it('sends a backend answer with a repeated single-value header over HTTP/2 without failing', async () => {
    const dup = http.createServer((_req, res) => {
      res.setHeader('x-content-type-options', ['nosniff', 'nosniff']);
      res.setHeader('keep-alive', 'timeout=5');
      res.end('ok');
    });
    await new Promise<void>((r) => dup.listen(0, '127.0.0.1', () => r()));
    const yaml = `proxy: {host: 127.0.0.1, port: 0}\nbackend: [{url: "http://127.0.0.1:${(dup.address() as import('node:net').AddressInfo).port}"}]\nhealthCheck: {enabled: false}\nlisteners:\n  - {name: tls, host: 127.0.0.1, port: 0, protocol: https, certificates: [{cert: "${files.b.cert}", key: "${files.b.key}"}]}\n`;
    const px = await startProxymity(parseConfig(withAdminPortZero(yaml), 'dup.yaml'), { logger: false });
    try {
      const p = Number(new URL(px.listeners.tls).port);
      const res = await new Promise<{ status: number; headers: http2.IncomingHttpHeaders }>((resolve, reject) => {
        const client = http2.connect(`https://127.0.0.1:${p}`, { ca: readFileSync(ca.caCert), servername: 'b.test' });
        client.on('error', () => undefined);
        const req = client.request({ ':path': '/', ':authority': 'b.test' });
        req.on('response', (h) => {
          req.resume();
          req.on('end', () => (client.close(), resolve({ status: Number(h[':status']), headers: h })));
        });
        req.on('error', reject);
        req.end();
      });
      assert.equal(res.status, 200);
      assert.equal(res.headers['x-content-type-options'], 'nosniff');
      assert.equal(res.headers['keep-alive'], undefined);
    } finally {
      await px.close();
      dup.close();
    }
  });

  it('cancels the upstream request when an HTTP/2 client resets its stream', async () => {
    const agent = sut.app.get(UpgradeProxy).registry.all[0].agent;
    const busy = () => Object.values(agent.sockets).reduce((n, list) => n + (list?.length ?? 0), 0);
    const res = await h2('/drip/100/50', { cancelAfterFirstChunk: true });
    assert.equal(res.status, 200);
    // The drip would keep its upstream connection busy for 5 s; the cancelled stream ends it at once.
    await pollUntil(busy, (n) => n === 0, { timeoutMs: 1500, what: 'upstream request cancelled after the client reset its stream' });
  });

  it('cancels the upstream request when an HTTP/2 client resets a download mid-body with NO_ERROR', async () => {
    // RST_STREAM(NO_ERROR) is a graceful close to Node: it never destroys a stream with writes
    // still queued, so the response's 'close' never came and the exchange stayed in flight.
    const engine = sut.app.get(ProxyEngine);
    const agent = sut.app.get(UpgradeProxy).registry.all[0].agent;
    const busy = () => Object.values(agent.sockets).reduce((n, list) => n + (list?.length ?? 0), 0);
    const client = http2.connect(`https://127.0.0.1:${port}`, { ca: readFileSync(ca.caCert), servername: 'a.test' });
    client.on('error', () => undefined);
    try {
      const req = client.request({ ':path': `/bytes/${512 * 1024 * 1024}?rst=no-error`, ':method': 'GET', ':authority': 'a.test' });
      req.on('error', () => undefined);
      req.end();
      await new Promise<void>((resolve) => {
        let got = 0;
        req.on('data', (c: Buffer) => {
          got += c.length;
          if (got > 1024 * 1024) resolve();
        });
      });
      req.close(http2.constants.NGHTTP2_NO_ERROR);
      await pollUntil(() => engine.inFlight, (n) => n === 0, { timeoutMs: 3000, what: 'the exchange to end after the reset' });
      await pollUntil(busy, (n) => n === 0, { timeoutMs: 3000, what: 'upstream request cancelled' });
    } finally {
      client.close();
    }
    const line = await pollUntil(
      () => readFileSync(logFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => String(l.path).includes('rst=no-error')),
      (l) => l !== undefined,
      { timeoutMs: 3000, what: 'access-log line of the reset download' },
    );
    assert.equal(line!.status, 499);
  });

  it('ends the exchange when an HTTP/2 client resets with NO_ERROR a response that is complete but not yet sent', async () => {
    // A stream window of 0: the proxy can send the response's headers but none of its body, so
    // the whole answer sits queued in the proxy, ended, when the client resets the stream.
    const engine = sut.app.get(ProxyEngine);
    const client = http2.connect(`https://127.0.0.1:${port}`, { ca: readFileSync(ca.caCert), servername: 'a.test', settings: { initialWindowSize: 0 } });
    client.on('error', () => undefined);
    try {
      const base = engine.inFlight;
      const req = client.request({ ':path': '/queued', ':method': 'GET', ':authority': 'a.test' });
      req.on('error', () => undefined);
      req.end();
      const status = await new Promise((resolve) => req.on('response', (h) => resolve(h[':status'])));
      assert.equal(status, 200);
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(engine.inFlight, base + 1);
      req.close(http2.constants.NGHTTP2_NO_ERROR);
      await pollUntil(() => engine.inFlight, (n) => n === base, { timeoutMs: 3000, what: 'the reset exchange to end' });
    } finally {
      client.close();
    }
  });

  it('works with curl --http2', async () => {
    // Asynchronously: the proxy runs in this process and must keep serving while curl waits.
    const { stdout: out } = await execFileAsync('curl', ['-sS', '--http2', '--cacert', ca.caCert, '--resolve', `b.test:${port}:127.0.0.1`, `https://b.test:${port}/curl`, '-o', '/dev/null', '-w', '%{http_version} %{http_code}'], { encoding: 'utf8' });
    assert.equal(out, '2 200');
  });

  it('redirects plain HTTP with 308 to https, keeping path and query', async () => {
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => http.get(`${sut.listeners.redirect}/a/b?c=d`, { headers: { host: 'shop.example' } }, resolve).on('error', reject));
    res.resume();
    assert.equal(res.statusCode, 308);
    assert.equal(res.headers.location, 'https://shop.example:8443/a/b?c=d');
  });

  it('swaps a certificate on SIGHUP while a keep-alive connection stays open, and refuses a bad key', async () => {
    const agent = new https.Agent({ keepAlive: true, maxSockets: 1, ca: readFileSync(ca.caCert) });
    const get = () =>
      new Promise<{ status: number; serial: string }>((resolve, reject) => {
        https
          .get({ host: '127.0.0.1', port, path: '/ka', servername: 'a.test', headers: { host: 'a.test' }, agent }, (r) => {
            const serial = (r.socket as tls.TLSSocket).getPeerCertificate().serialNumber;
            r.resume();
            r.on('end', () => resolve({ status: r.statusCode ?? 0, serial }));
          })
          .on('error', reject);
      });
    try {
      const first = await get();
      const fresh = ca.issue('a2', ['a.test']);
      copyFileSync(fresh.cert, files.a.cert);
      copyFileSync(fresh.key, files.a.key);
      process.emit('SIGHUP', 'SIGHUP');
      const newSerial = (await pollUntil(() => peerCert(port, 'a.test', ca.caCert), (c) => c.serial !== first.serial, { what: 'new certificate served' })).serial;
      const again = await get();
      assert.equal(again.status, 200);
      assert.equal(again.serial, first.serial, 'the open keep-alive connection keeps its certificate');

      // A key that does not match is refused; the certificate in use stays.
      copyFileSync(files.b.key, files.a.key);
      process.emit('SIGHUP', 'SIGHUP');
      assert.equal((await peerCert(port, 'a.test', ca.caCert)).serial, newSerial);
      copyFileSync(fresh.key, files.a.key);
    } finally {
      agent.destroy();
    }
  });

  it('logs the TLS version and cipher of each request', async () => {
    const line = await pollUntil(
      () => readFileSync(logFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.path === '/h1'),
      (l) => l !== undefined,
      { timeoutMs: 3000, what: 'access-log line of /h1' },
    );
    assert.equal(line!.tls_version, 'TLSv1.3');
    assert.match(String(line!.tls_cipher), /^TLS_/);
    assert.equal(line!.protocol, 'HTTP/1.1');
  });

  it('reports seconds until each certificate expires', async () => {
    const m = await scrape(sut.adminUrl!);
    const left = sample(m, 'proxymity_tls_certificate_expiry_seconds', { name: 'b.test' });
    assert.ok(left > 3600 && left <= 86_400 + 60, `b.test expires in ${left}s`);
  });
});

describe('certificate files watched on disk', () => {
  /** A test CA with two certificates for a.test (the one served first, and its renewal), and an empty directory. */
  function renewal(prefix: string) {
    const ca = makeTestCa();
    return { ca, first: ca.issue('first', ['a.test']), renewed: ca.issue('renewed', ['a.test']), dir: mkdtempSync(join(tmpdir(), prefix)) };
  }

  /** A proxy with one https listener serving `cert` and `key`, the serial it serves for a.test, and its shutdown. */
  async function serving(cert: string, key: string, ca: TestCa) {
    const backends = await startBackends(1);
    const yaml = `proxy: {host: 127.0.0.1, port: 0}\nbackend: [{url: "${backends[0].url}"}]\nhealthCheck: {enabled: false}\nlisteners:\n  - {name: tls, port: 0, host: 127.0.0.1, protocol: https, certificates: [{cert: "${cert}", key: "${key}"}]}\n`;
    const sut = await startProxymity(parseConfig(withAdminPortZero(yaml), 't.yaml'), { logger: false });
    const port = Number(new URL(sut.listeners.tls).port);
    return {
      served: async () => (await peerCert(port, 'a.test', ca.caCert)).serial,
      close: async () => {
        await sut.close();
        await closeAll(backends);
      },
    };
  }

  const serialOf = (cert: string) => new X509Certificate(readFileSync(cert)).serialNumber;

  it('reads a renewed certificate when its file changes; a log written beside it neither re-reads the certificates nor, written every 50 ms, holds the renewal back', async () => {
    const { ca, first, renewed, dir } = renewal('proxymity-cert-watch-');
    const cert = join(dir, 'tls.crt');
    const key = join(dir, 'tls.key');
    copyFileSync(first.cert, cert);
    copyFileSync(first.key, key);
    // Second names for the same files outside the watched directory: a write through them
    // changes the files without any event in the directory, so a re-read shows as a new serial.
    const other = mkdtempSync(join(tmpdir(), 'proxymity-cert-watch-link-'));
    linkSync(cert, join(other, 'tls.crt'));
    linkSync(key, join(other, 'tls.key'));
    const proxy = await serving(cert, key, ca);
    const log = join(dir, 'app.log');
    let writer: NodeJS.Timeout | undefined;
    try {
      const firstSerial = await proxy.served();
      assert.equal(firstSerial, serialOf(first.cert));
      writeFileSync(join(other, 'tls.crt'), readFileSync(renewed.cert));
      writeFileSync(join(other, 'tls.key'), readFileSync(renewed.key));
      appendFileSync(log, 'a line\n');
      await sleep(800); // four debounce periods
      assert.equal(await proxy.served(), firstSerial, 'a write to another file in the directory re-read the certificates');
      // Faster than the 200 ms debounce: every write would restart it, and the renewal would wait for good.
      writer = setInterval(() => appendFileSync(log, 'a line\n'), 50);
      await sleep(200);
      writeFileSync(cert, readFileSync(renewed.cert)); // the certificate's own name: an event that counts
      const now = await pollUntil(proxy.served, (serial) => serial !== firstSerial, { timeoutMs: 3000, what: 'the renewed certificate served while a log is written beside it' });
      assert.equal(now, serialOf(renewed.cert));
    } finally {
      clearInterval(writer);
      await proxy.close();
      for (const d of [dir, other]) rmSync(d, { recursive: true, force: true });
    }
  });

  it('reads the renewed pair when a Kubernetes Secret volume swaps its `..data` link', async () => {
    const { ca, first, renewed, dir } = renewal('proxymity-cert-secret-');
    // As the kubelet lays a Secret out: tls.crt -> ..data/tls.crt, ..data -> ..<timestamp>/.
    const version = (name: string, pair: { cert: string; key: string }) => {
      mkdirSync(join(dir, name));
      copyFileSync(pair.cert, join(dir, name, 'tls.crt'));
      copyFileSync(pair.key, join(dir, name, 'tls.key'));
    };
    version('..2026_12_02_05_00_00.1', first);
    symlinkSync('..2026_12_02_05_00_00.1', join(dir, '..data'));
    for (const f of ['tls.crt', 'tls.key']) symlinkSync(join('..data', f), join(dir, f));
    const proxy = await serving(join(dir, 'tls.crt'), join(dir, 'tls.key'), ca);
    try {
      const firstSerial = await proxy.served();
      assert.equal(firstSerial, serialOf(first.cert));
      version('..2026_12_02_06_00_00.2', renewed);
      symlinkSync('..2026_12_02_06_00_00.2', join(dir, '..data_tmp'));
      renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
      const now = await pollUntil(proxy.served, (serial) => serial !== firstSerial, { timeoutMs: 3000, what: 'the renewed certificate served after the ..data swap' });
      assert.equal(now, serialOf(renewed.cert));
    } finally {
      await proxy.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('HTTPS listener start-up', () => {
  it('refuses a key that does not belong to the certificate, naming the file', async () => {
    const ca = makeTestCa();
    const a = ca.issue('a', ['a.test']);
    const b = ca.issue('b', ['b.test']);
    const yaml = `proxy: {host: 127.0.0.1, port: 0}\nbackend: [{url: "http://127.0.0.1:1"}]\nhealthCheck: {enabled: false}\nlisteners:\n  - {name: tls, port: 0, host: 127.0.0.1, protocol: https, certificates: [{cert: "${a.cert}", key: "${b.key}"}]}\n`;
    await assert.rejects(
      startProxymity(parseConfig(withAdminPortZero(yaml), 't.yaml'), { logger: false }),
      (err: Error) => err.message === `listener tls: ${join(ca.dir, 'b.key')}: this key does not belong to the certificate ${join(ca.dir, 'a.crt')}`,
    );
  });
});

/**
 * Sends a request line and one header, then nothing: resolves with the milliseconds until the
 * listener closed the connection and what it answered (the client gives up after `giveUpMs`).
 */
function slowHeaders(connect: () => net.Socket, giveUpMs: number): Promise<{ ms: number; answer: string }> {
  return new Promise((resolve) => {
    const started = performance.now();
    let answer = '';
    const s = connect();
    const giveUp = setTimeout(() => s.destroy(), giveUpMs);
    s.on('data', (d) => (answer += d));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(giveUp);
      resolve({ ms: performance.now() - started, answer });
    });
  });
}

describe('client timeouts on every listener (proxy.headersTimeout, proxy.keepAliveTimeout)', () => {
  let sut: RunningProxymity;
  let backends: DummyBackend[];

  before(async () => {
    const ca = makeTestCa();
    const a = ca.issue('a', ['a.test']);
    backends = await startBackends(1);
    const cert = `certificates: [{cert: "${a.cert}", key: "${a.key}"}]`;
    const yaml = `proxy: {host: 127.0.0.1, port: 0, headersTimeout: 1s, keepAliveTimeout: 2s, maxHeaderSize: 4KiB}\nbackend: [{url: "${backends[0].url}"}]\nhealthCheck: {interval: 1h}\nlisteners:\n  - {name: h2, port: 0, host: 127.0.0.1, protocol: https, ${cert}}\n  - {name: h1, port: 0, host: 127.0.0.1, protocol: https, http2: false, ${cert}}\n`;
    sut = await startProxymity(parseConfig(withAdminPortZero(yaml), 'headers-timeout.yaml'), { logger: false });
  });
  after(async () => {
    await sut.close();
    await closeAll(backends);
  });

  it('answers 408 to a client that stalls in its headers: plain, https, and HTTP/1.1 on an HTTP/2 listener', async () => {
    const partial = 'GET / HTTP/1.1\r\nHost: a.test\r\n';
    const at = (url: string) => ({ host: '127.0.0.1', port: Number(new URL(url).port) });
    const cases: [string, () => net.Socket][] = [
      ['plain', () => net.connect(at(sut.url), function (this: net.Socket) { this.write(partial); })],
      ['https', () => tls.connect({ ...at(sut.listeners.h1), servername: 'a.test', rejectUnauthorized: false }, function (this: tls.TLSSocket) { this.write(partial); })],
      ['http/1.1 on the h2 listener', () => tls.connect({ ...at(sut.listeners.h2), servername: 'a.test', rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] }, function (this: tls.TLSSocket) { this.write(partial); })],
    ];
    // Node checks these deadlines on a timer (every 30 s by its default); the proxy checks every tenth of headersTimeout.
    const results = await Promise.all(cases.map(([, connect]) => slowHeaders(connect, 8_000)));
    cases.forEach(([name], i) => {
      const { ms, answer } = results[i]!;
      assert.match(answer, /^HTTP\/1\.1 408 /, `${name}: ${JSON.stringify(answer.slice(0, 60))} after ${ms.toFixed(0)} ms`);
      assert.ok(ms >= 990 && ms < 2_500, `${name}: closed after ${ms.toFixed(0)} ms for a headersTimeout of 1 s`);
    });
  });

  it('applies proxy.maxHeaderSize on every listener: 431 above it, served below it (plain, https, HTTP/1.1 on an HTTP/2 listener)', async () => {
    const request = (size: number) => `GET /size HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\nX-Big: ${'a'.repeat(size)}\r\n\r\n`;
    const plain = (bytes: string) =>
      new Promise<string>((resolve, reject) => {
        const s = net.connect(Number(new URL(sut.url).port), '127.0.0.1', () => s.write(bytes));
        let out = '';
        s.on('data', (d) => (out += d));
        s.on('close', () => resolve(out));
        s.on('error', reject);
      });
    const send: [string, (bytes: string) => Promise<string>][] = [
      ['plain', plain],
      ['https', (bytes) => rawTls(Number(new URL(sut.listeners.h1).port), bytes)],
      ['http/1.1 on the h2 listener', (bytes) => rawTls(Number(new URL(sut.listeners.h2).port), bytes)],
    ];
    for (const [name, over] of send) {
      assert.match(await over(request(6000)), /^HTTP\/1\.1 431 /, `${name}: 6 KB of headers`);
      assert.match(await over(request(3000)), /^HTTP\/1\.1 200 /, `${name}: 3 KB of headers`);
    }
  });

  it('answers 408 on the admin listener after its fixed 10 s, checked every second', async () => {
    const { port } = new URL(sut.adminUrl!);
    const { ms, answer } = await slowHeaders(() => net.connect({ host: '127.0.0.1', port: Number(port) }, function (this: net.Socket) { this.write('GET /health HTTP/1.1\r\nHost: a\r\n'); }), 20_000);
    assert.match(answer, /^HTTP\/1\.1 408 /, `${JSON.stringify(answer.slice(0, 60))} after ${ms.toFixed(0)} ms`);
    assert.ok(ms >= 9_990 && ms < 12_500, `closed after ${ms.toFixed(0)} ms for a headers limit of 10 s`);
  });

  it('keeps an HTTP/1.1 request on an HTTP/2 listener open past keepAliveTimeout while its backend works', async () => {
    // Node's https client offers no ALPN, so the HTTP/2 listener answers it in HTTP/1.1.
    const { port } = new URL(sut.listeners.h2);
    const res = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      https
        .get({ host: '127.0.0.1', port: Number(port), path: '/delay/3000', servername: 'a.test', headers: { host: 'a.test' }, rejectUnauthorized: false, agent: false }, (r) => {
          let body = '';
          r.on('data', (c) => (body += c));
          r.on('end', () => resolve({ status: r.statusCode ?? 0, body }));
        })
        .on('error', reject);
    });
    assert.equal(res.status, 200, res.body);
  });

  it('closes an HTTP/2 session that stays idle for keepAliveTimeout', async () => {
    const client = http2.connect(sut.listeners.h2, { servername: 'a.test', rejectUnauthorized: false });
    client.on('error', () => undefined);
    try {
      assert.equal((await h2Request(client, { ':path': '/', ':method': 'GET', ':authority': 'a.test' })).headers[':status'], 200);
      const idleFrom = performance.now();
      const closed = await new Promise<boolean>((resolve) => {
        const giveUp = setTimeout(() => resolve(false), 8_000);
        client.once('close', () => (clearTimeout(giveUp), resolve(true)));
      });
      const ms = performance.now() - idleFrom;
      assert.ok(closed, 'the session was still open after 8 s idle');
      assert.ok(ms >= 1_900, `closed after ${ms.toFixed(0)} ms idle, before keepAliveTimeout (2 s)`);
    } finally {
      client.close();
    }
  });
});
