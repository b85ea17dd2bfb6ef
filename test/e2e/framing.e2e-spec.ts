/**
 * HTTP framing and header policy over raw TCP where it matters: request smuggling attempts
 * never reach a backend, limits answer 413/414, HTTP/1.0, Expect: 100-continue, trailers,
 * trusted proxies. Real: app, sockets, backends.
 */
import assert from 'node:assert/strict';
import http, { type IncomingMessage } from 'node:http';
import net from 'node:net';
import { beforeEach, describe, it } from 'node:test';
import { BackendRegistry } from '../../src/backend/index.js';
import { closeAll, startBackends } from '../fixtures/backend-server.js';
import { request } from '../helpers/http-client.js';
import { pollUntil } from '../helpers/poll-until.js';
import { proxyFixture, startProxy } from '../helpers/proxy.js';

/** Sends raw bytes, returns everything the proxy answered until it closed (or 2 s passed). */
function raw(port: number, bytes: string, opts: { halfClose?: boolean; timeoutMs?: number } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => {
      s.write(bytes);
      if (opts.halfClose) s.end();
    });
    let out = '';
    s.on('data', (d) => (out += d));
    s.on('close', () => resolve(out));
    s.on('error', (e: NodeJS.ErrnoException) => (e.code === 'ECONNRESET' ? resolve(out) : reject(e)));
    s.setTimeout(opts.timeoutMs ?? 2000, () => s.destroy());
  });
}

/** Status lines of every response in the stream (a body need not end in CRLF, so search, not split). */
const statusLines = (text: string) => text.match(/HTTP\/1\.[01] \d{3} [^\r]*/g) ?? [];

describe('framing and smuggling defences', () => {
  const fx = proxyFixture(1, 'healthCheck: {interval: 1h}', '  maxUrlLength: 1024\n  maxBodySize: 1KiB');
  beforeEach(() => {
    fx.backends[0].seen.length = 0;
  });

  const smuggling: [string, string][] = [
    ['Content-Length together with Transfer-Encoding', 'POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n'],
    ['two different Content-Length values', 'POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcdGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n'],
    ['an invalid Content-Length', 'POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd'],
    ['an obfuscated Transfer-Encoding', 'POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n'],
    ['Transfer-Encoding not ending in chunked', 'POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n'],
    ['a space before the colon', 'POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n'],
  ];
  for (const [what, bytes] of smuggling) {
    it(`rejects a request with ${what} with 400 before any backend sees it`, async () => {
      const answer = await raw(fx.sut.port, bytes);
      assert.deepEqual(statusLines(answer).map((l) => l.slice(0, 12)), ['HTTP/1.1 400']);
      assert.deepEqual(fx.backends[0].seen, []);
    });
  }

  it('forwards a DELETE with a body with its framing intact (no deleteLength rewrite)', async () => {
    const answer = await raw(fx.sut.port, 'DELETE /item HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.deepEqual(statusLines(answer).map((l) => l.slice(0, 12)), ['HTTP/1.1 200', 'HTTP/1.1 200']);
    assert.deepEqual(fx.backends[0].seen, ['DELETE /item', 'GET /next']);
    assert.match(answer, /"bodyBytes":5/);
  });

  it('answers 414 for a request target over maxUrlLength', async () => {
    const res = await request(`${fx.sut.url}/${'a'.repeat(1100)}`);
    assert.equal(res.status, 414);
    assert.equal(res.headers['proxy-status'], 'proxymity; error=uri_too_long');
    assert.deepEqual(fx.backends[0].seen, []);
  });

  it('answers 413 for a Content-Length over maxBodySize', async () => {
    const res = await request(`${fx.sut.url}/big`, { method: 'POST', body: 'x'.repeat(2000) });
    assert.equal(res.status, 413);
    assert.equal(res.headers.connection, 'close');
    assert.deepEqual(fx.backends[0].seen, []);
  });

  it('answers 413 when a chunked upload passes maxBodySize', async () => {
    const res = await new Promise<number>((resolve, reject) => {
      const req = http.request(`${fx.sut.url}/chunked-big`, { method: 'POST', agent: false }, (r) => {
        r.resume();
        resolve(r.statusCode ?? 0);
      });
      req.on('error', reject);
      req.write('x'.repeat(600));
      setTimeout(() => req.write('y'.repeat(600)), 20);
    });
    assert.equal(res, 413);
  });

  it('serves an HTTP/1.0 client and closes the connection after the answer', async () => {
    const answer = await raw(fx.sut.port, 'GET /old HTTP/1.0\r\nHost: x\r\n\r\n');
    assert.match(answer, /^HTTP\/1\.1 200 /);
    assert.match(answer, /"via":"1\.0 proxymity"/);
  });

  it('adds what Node would for a header object: Host for an HTTP/1.0 client without one, Content-Length: 0 on a bodyless POST', async () => {
    const body = (answer: string) => JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4));
    const old = body(await raw(fx.sut.port, 'GET /no-host HTTP/1.0\r\n\r\n'));
    assert.equal(old.headers.host, new URL(fx.backends[0].url).host);
    const post = body(await raw(fx.sut.port, 'POST /empty HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'));
    assert.equal(post.headers['content-length'], '0');
    assert.equal(post.headers['transfer-encoding'], undefined);
    const get = body(await raw(fx.sut.port, 'GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'));
    assert.equal(get.headers['content-length'], undefined, 'a bodyless GET gets no framing header');
  });

  it('answers Expect: 100-continue and forwards the body that follows', async () => {
    const answer = await new Promise<string>((resolve, reject) => {
      const s = net.connect(fx.sut.port, '127.0.0.1', () => s.write('PUT /expect HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n'));
      let out = '';
      s.on('data', (d) => {
        out += d;
        if (out.startsWith('HTTP/1.1 100') && !out.includes('\r\n\r\nHTTP')) s.write('hello');
      });
      s.on('close', () => resolve(out));
      s.on('error', reject);
    });
    assert.match(answer, /^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 /);
    assert.match(answer, /"bodyBytes":5/);
  });

  it('answers Expect: 100-continue with 413 and no 100 when the announced body is over maxBodySize', async () => {
    const answer = await raw(fx.sut.port, 'PUT /expect-big HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\nExpect: 100-continue\r\n\r\n');
    assert.match(answer, /^HTTP\/1\.1 413 /, 'refused before the client sends the body');
    assert.doesNotMatch(answer, /100 Continue/);
    assert.deepEqual(fx.backends[0].seen, []);
  });

  it('forwards response trailers', async () => {
    const trailers = await new Promise<NodeJS.Dict<string>>((resolve, reject) => {
      http.get(`${fx.sut.url}/trailers`, { agent: false, headers: { te: 'trailers' } }, (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => (body === 'part one, part two' ? resolve(res.trailers) : reject(new Error(body))));
      }).on('error', reject);
    });
    assert.equal(trailers['x-checksum'], 'abc123');
  });

  it('sends a response with announced trailers to an HTTP/1.0 client without them, and does not blame the backend', async () => {
    // HTTP/1.0 has no chunked coding, so no trailers; Node refuses a Trailer field there.
    for (let i = 0; i < 3; i++) {
      const answer = await raw(fx.sut.port, 'GET /trailers HTTP/1.0\r\nHost: x\r\n\r\n');
      assert.match(answer, /^HTTP\/1\.1 200 OK\r\n/);
      const head = answer.slice(0, answer.indexOf('\r\n\r\n')).toLowerCase();
      assert.doesNotMatch(head, /\r\ntrailer:/, 'no Trailer field the response cannot honour');
      assert.equal(answer.slice(answer.indexOf('\r\n\r\n') + 4), 'part one, part two', 'the body, close-delimited, without trailers');
    }
    assert.equal(fx.sut.app.get(BackendRegistry).all[0]!.healthy, true, 'not a backend failure');
  });

  it('forwards request trailers', async () => {
    const echo = await new Promise<any>((resolve, reject) => {
      const req = http.request(`${fx.sut.url}/upload-with-trailer`, { method: 'POST', agent: false, headers: { trailer: 'x-digest', 'transfer-encoding': 'chunked' } }, (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve(JSON.parse(body)));
      });
      req.on('error', reject);
      req.write('abc');
      req.addTrailers({ 'x-digest': 'sha-256=xyz' });
      req.end();
    });
    assert.equal(echo.bodyBytes, 3);
    assert.deepEqual(echo.trailers, { 'x-digest': 'sha-256=xyz' });
  });
});

describe('trusted proxies', () => {
  const fx = proxyFixture(1, 'healthCheck: {interval: 1h}', '  trustedProxies: ["127.0.0.0/8"]\n  forwarded: true');

  it('keeps X-Forwarded-* from a trusted peer and appends the peer', async () => {
    const res = await request(`${fx.sut.url}/t`, { headers: { host: 'shop.example', 'x-forwarded-for': '198.51.100.7', 'x-forwarded-proto': 'https' } });
    const h = res.json().headers;
    assert.equal(h['x-forwarded-for'], '198.51.100.7, 127.0.0.1');
    assert.equal(h['x-forwarded-proto'], 'https');
    assert.equal(h.forwarded, 'for=127.0.0.1;proto=http;host=shop.example');
  });
});

describe('what one connection may ask for', () => {
  it('forwards pipelined requests one at a time, and answers them in order', async () => {
    let open = 0;
    let most = 0;
    const origin = http.createServer((req, res) => {
      open++;
      most = Math.max(most, open);
      setTimeout(() => {
        open--;
        res.end(req.url);
      }, 30);
    });
    await new Promise<void>((r) => origin.listen(0, '127.0.0.1', r));
    // maxConcurrent 1: each request is served only once the one before it released its slot.
    const sut = await startProxy([`http://127.0.0.1:${(origin.address() as net.AddressInfo).port}`], 'healthCheck: {enabled: false}\nrateLimit: {rate: 1000, maxConcurrent: 1}');
    try {
      const requests = Array.from({ length: 8 }, (_, i) => `GET /p${i} HTTP/1.1\r\nHost: x\r\n${i === 7 ? 'Connection: close\r\n' : ''}\r\n`).join('');
      const answer = await raw(sut.port, requests);
      assert.deepEqual(statusLines(answer), Array(8).fill('HTTP/1.1 200 OK'), 'none refused by maxConcurrent');
      assert.deepEqual(answer.match(/\/p\d/g), ['/p0', '/p1', '/p2', '/p3', '/p4', '/p5', '/p6', '/p7']);
      assert.equal(most, 1, 'one request of the connection at the backend at a time');
    } finally {
      await sut.close();
      origin.close();
    }
  });

  it('reads a connection no further while more than 32 pipelined requests wait, and serves them all once answers go out', { timeout: 20_000 }, async () => {
    let release: (() => void) | undefined;
    const origin = http.createServer((req, res) => {
      if (req.url === '/held') release = () => res.end('held');
      else res.end('x');
    });
    await new Promise<void>((r) => origin.listen(0, '127.0.0.1', r));
    const sut = await startProxy([`http://127.0.0.1:${(origin.address() as net.AddressInfo).port}`], 'healthCheck: {enabled: false}');
    const parsed: IncomingMessage[] = [];
    sut.server.prependListener('request', (req: IncomingMessage) => void parsed.push(req));
    try {
      const n = 3000; // about 100 KB: more than one 64 KiB read
      const requests = 'GET /held HTTP/1.1\r\nHost: x\r\n\r\n' + Array.from({ length: n - 1 }, (_, i) => `GET /q${i} HTTP/1.1\r\nHost: x\r\n${i === n - 2 ? 'Connection: close\r\n' : ''}\r\n`).join('');
      const answer = raw(sut.port, requests, { timeoutMs: 15_000 });
      await pollUntil(() => release, (r) => r !== undefined, { what: 'the first request at the backend' });
      await pollUntil(() => parsed.length, (count) => count > 33, { what: 'the queue to pass 32' });
      assert.equal(parsed[0]!.socket.isPaused(), true, 'the connection is read no further');
      assert.ok(parsed.length < n, `${parsed.length} of ${n} requests read while the first waits`);
      release!();
      const text = await answer;
      assert.equal(statusLines(text).length, n, 'every request answered once reading resumed');
    } finally {
      await sut.close();
      origin.close();
    }
  });

  it('answers 400 to a request with two Host fields or a Host with userinfo, before any backend sees it', async () => {
    const backends = await startBackends(1);
    const sut = await startProxy(backends, 'healthCheck: {enabled: false}');
    try {
      for (const head of ['Host: a\r\nHost: b', 'Host: user@x:80']) {
        const answer = await raw(sut.port, `GET /h HTTP/1.1\r\n${head}\r\n\r\n`);
        assert.match(answer, /^HTTP\/1\.1 400 Bad Request\r\n/, head);
        assert.match(answer, /proxy-status: proxymity; error=invalid_host/);
      }
      assert.deepEqual(backends[0].seen, []);
      assert.match(await raw(sut.port, 'GET /h HTTP/1.1\r\nHost: a:80\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 200 /);
    } finally {
      await sut.close();
      await closeAll(backends);
    }
  });

  it('answers 505 to an HTTP/2.0 request line on an HTTP/1 connection, and 405 to CONNECT', async () => {
    const backends = await startBackends(1);
    const sut = await startProxy(backends, 'healthCheck: {enabled: false}');
    try {
      const v2 = await raw(sut.port, 'GET /v2 HTTP/2.0\r\nHost: x\r\n\r\n');
      assert.match(v2, /^HTTP\/1\.1 505 HTTP Version Not Supported\r\n/);
      assert.match(v2, /proxy-status: proxymity; error=http_version_not_supported/);
      const connect = await raw(sut.port, 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n');
      assert.match(connect, /^HTTP\/1\.1 405 Method Not Allowed\r\n/);
      assert.deepEqual(backends[0].seen, []);
    } finally {
      await sut.close();
      await closeAll(backends);
    }
  });
});

describe('a stream without a length (server-sent events)', () => {
  it('sends the response headers before the first body byte comes', { timeout: 10_000 }, async () => {
    let release: (() => void) | undefined;
    const origin = http.createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.flushHeaders(); // the headers now, the first event when the test says
      release = () => res.end('data: one\n\n');
    });
    await new Promise<void>((r) => origin.listen(0, '127.0.0.1', r));
    const sut = await startProxy([`http://127.0.0.1:${(origin.address() as net.AddressInfo).port}`], 'healthCheck: {enabled: false}');
    try {
      // Resolves only once the headers reached the client: with them held back until the first
      // body byte, it never would (the backend sends none until then) and the test times out.
      const res = await new Promise<http.IncomingMessage>((resolve, reject) => http.get(`${sut.url}/events`, { agent: false }, resolve).on('error', reject));
      assert.equal(res.statusCode, 200);
      assert.equal(res.headers['content-type'], 'text/event-stream');
      release?.();
      let body = '';
      for await (const chunk of res) body += chunk;
      assert.equal(body, 'data: one\n\n');
    } finally {
      await sut.close();
      origin.close();
    }
  });
});

describe('invalid upstream framing and oversized headers', () => {
  it('answers 502 when a backend answers with both Content-Length and Transfer-Encoding', async () => {
    const evil = net.createServer((s) => {
      s.on('data', () => s.end('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'));
    });
    await new Promise<void>((r) => evil.listen(0, '127.0.0.1', r));
    const sut = await startProxy([`http://127.0.0.1:${(evil.address() as net.AddressInfo).port}`], 'healthCheck: {enabled: false}');
    try {
      const res = await request(`${sut.url}/framing`, { method: 'POST', body: 'x' });
      assert.equal(res.status, 502);
      assert.equal(res.headers['proxy-status'], 'proxymity; error=http_protocol_error');
    } finally {
      await sut.close();
      evil.close();
    }
  });

  it('answers 502 Bad Gateway, with its own reason phrase, for a status line or header Node refuses to send on', async () => {
    // Node's parser accepts a DEL in the reason phrase and a bad header value that writeHead then refuses.
    const answers = ['HTTP/1.1 200 O\x7fK\r\nContent-Length: 2\r\n\r\nok', 'HTTP/1.1 304 Not Modified\r\nX-Bad: a\x7fb\r\n\r\n'];
    for (const answer of answers) {
      const evil = net.createServer((s) => s.on('data', () => s.end(answer, 'latin1')));
      await new Promise<void>((r) => evil.listen(0, '127.0.0.1', r));
      const sut = await startProxy([`http://127.0.0.1:${(evil.address() as net.AddressInfo).port}`], 'healthCheck: {enabled: false}');
      try {
        const got = await raw(sut.port, 'GET /reason HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
        assert.match(got, /^HTTP\/1\.1 502 Bad Gateway\r\n/, JSON.stringify(answer));
        assert.match(got, /proxy-status: proxymity; error=http_protocol_error/);
      } finally {
        await sut.close();
        evil.close();
      }
    }
  });

  it('answers 431 above proxy.maxHeaderSize and serves headers below it', async () => {
    const backends = await startBackends(1);
    const sut = await startProxy(backends, 'healthCheck: {interval: 1h}', '  maxHeaderSize: 4KiB');
    try {
      assert.match(await raw(sut.port, `GET /big HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(6000)}\r\n\r\n`), /^HTTP\/1\.1 431 /);
      assert.match(await raw(sut.port, `GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: ${'a'.repeat(3000)}\r\n\r\n`), /^HTTP\/1\.1 200 /);
      assert.deepEqual(backends[0].seen, ['GET /ok']);
    } finally {
      await sut.close();
      await closeAll(backends);
    }
  });

  it('answers 431 for request headers over 16 KiB', async () => {
    const backends = await startBackends(1);
    const sut = await startProxy(backends, 'healthCheck: {interval: 1h}');
    try {
      const answer = await raw(sut.port, `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
      assert.match(answer, /^HTTP\/1\.1 431 /);
      assert.deepEqual(backends[0].seen, []);
    } finally {
      await sut.close();
      await closeAll(backends);
    }
  });
});

describe('response bodies, byte for byte', () => {
  /** Every byte value, over and over: no byte may be lost or re-encoded on the way. */
  const pattern = (n: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + 0x80) & 0xff));

  it('relays bodies of every byte value unchanged: small and large, Content-Length, chunked, and a small first chunk followed by more', async () => {
    const origin = http.createServer((req, res) => {
      const m = /^\/(cl|chunked|split)\/(\d+)$/.exec(req.url ?? '') ?? ['', 'cl', '0'];
      const body = pattern(Number(m[2]));
      if (m[1] === 'cl') {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
        res.end(body);
      } else if (m[1] === 'chunked') {
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        res.write(body);
        res.end();
      } else {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
        res.write(body.subarray(0, 10));
        setTimeout(() => res.end(body.subarray(10)), 20);
      }
    });
    await new Promise<void>((r) => origin.listen(0, '127.0.0.1', r));
    const sut = await startProxy([`http://127.0.0.1:${(origin.address() as net.AddressInfo).port}`], 'healthCheck: {enabled: false}');
    // One connection for all of them: every response must leave it fit for the next.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const cases: [string, number][] = [];
      for (const n of [1, 3, 255, 256, 2047, 2048, 2049, 16_384, 70_000]) cases.push(['cl', n], ['chunked', n]);
      cases.push(['split', 100], ['split', 70_000]);
      for (const [kind, n] of cases) {
        const got = await new Promise<{ status: number; body: Buffer; te?: string }>((resolve, reject) => {
          http.get(`${sut.url}/${kind}/${n}`, { agent }, (res) => {
            const parts: Buffer[] = [];
            res.on('data', (c: Buffer) => parts.push(c));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(parts), te: res.headers['transfer-encoding'] }));
          }).on('error', reject);
        });
        assert.equal(got.status, 200, `${kind}/${n}`);
        assert.equal(got.te, kind === 'chunked' ? 'chunked' : undefined, `${kind}/${n} framing`);
        assert.ok(got.body.equals(pattern(n)), `${kind}/${n}: the ${got.body.length} bytes relayed differ from the ${n} sent`);
      }
      // HTTP/1.0: no chunked framing; a chunked answer is delimited by the close.
      for (const kind of ['cl', 'chunked']) {
        const answer = await new Promise<Buffer>((resolve, reject) => {
          const s = net.connect(sut.port, '127.0.0.1', () => s.write(`GET /${kind}/300 HTTP/1.0\r\nHost: x\r\n\r\n`));
          const parts: Buffer[] = [];
          s.on('data', (d: Buffer) => parts.push(d));
          s.on('end', () => resolve(Buffer.concat(parts)));
          s.on('error', reject);
        });
        const split = answer.indexOf('\r\n\r\n');
        assert.match(answer.subarray(0, split).toString('latin1'), /^HTTP\/1\.1 200 /);
        assert.ok(answer.subarray(split + 4).equals(pattern(300)), `HTTP/1.0 ${kind}: body differs`);
      }
    } finally {
      agent.destroy();
      await sut.close();
      origin.close();
    }
  });
});
