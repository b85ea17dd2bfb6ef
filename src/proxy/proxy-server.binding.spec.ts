/**
 * answerClientError on real servers and sockets: what a client whose request cannot be parsed
 * gets, and what it must not get (a status line inside another response's body, a socket that
 * stays open, a TLS handshake that never times out).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net, { type AddressInfo, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { makeTestCa } from '../../test/helpers/certs.js';
import { pollUntil } from '../../test/helpers/poll-until.js';
import { answerClientError, applyClientTimeouts } from './proxy-server.binding.js';

/**
 * Connects and writes `bytes` (then `more` once `waitFor` has arrived), and keeps its own side
 * open; resolves with what arrived once the server ended its side (FIN), and when that was. The
 * client then closes, unless `hold` (the caller destroys it).
 */
function exchange(port: number, bytes: string, opts: { waitFor?: string; more?: string; hold?: boolean } = {}): Promise<{ text: string; endedAfterMs: number; client: Socket }> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    // allowHalfOpen: only the server's FIN (or reset) ends the exchange.
    const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true }, () => {
      if (bytes !== '') s.write(bytes);
    });
    let text = '';
    let sentMore = false;
    const done = () => {
      resolve({ text, endedAfterMs: Date.now() - started, client: s });
      if (opts.hold !== true) s.destroy();
    };
    s.on('data', (d) => {
      text += d.toString('latin1');
      if (!sentMore && opts.waitFor !== undefined && opts.more !== undefined && text.includes(opts.waitFor)) {
        sentMore = true;
        s.write(opts.more);
      }
    });
    s.on('error', (e: NodeJS.ErrnoException) => (e.code === 'ECONNRESET' ? done() : reject(e)));
    s.on('end', done);
    s.on('close', done);
    setTimeout(done, 5000).unref();
  });
}

/** Starts `server` with the handler under test, tracking its sockets; `stop` closes it. */
async function start(server: http.Server, headersTimeout = 1000): Promise<{ port: number; sockets: Set<Socket>; stop: () => void }> {
  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.on('clientError', answerClientError);
  applyClientTimeouts(server, { keepAliveTimeout: 5000, headersTimeout });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const stop = () => {
    server.closeAllConnections();
    server.close();
  };
  return { port: (server.address() as AddressInfo).port, sockets, stop };
}

type Started = Awaited<ReturnType<typeof start>>;

describe('answerClientError', () => {
  // `/slow` sends half of a 20-byte body, the rest after 1.5 s; a POST is answered once read.
  const server = http.createServer((req, res) => {
    if (req.method === 'POST') {
      req.on('end', () => res.end('ok'));
      req.resume();
    } else if (req.url === '/slow') {
      res.writeHead(200, { 'content-length': '20' });
      res.write('0123456789');
      setTimeout(() => res.end('abcdefghij'), 1500).unref();
    } else res.end('ok');
  });
  let srv: Started;
  let port = 0;
  before(async () => {
    srv = await start(server);
    port = srv.port;
  });
  after(() => srv.stop());

  it('answers 400, 431, 413 and 408 naming the parser\'s error, well framed, and closes the connection', async () => {
    const cases: [string, number, string][] = [
      ['GET / HTTP/1.1\r\nBad Header: x\r\n\r\n', 400, 'HPE_INVALID_HEADER_TOKEN'],
      [`GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`, 431, 'HPE_HEADER_OVERFLOW'],
      [`POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;${'e'.repeat(20_000)}\r\n`, 413, 'HPE_CHUNK_EXTENSIONS_OVERFLOW'],
      ['GET / HTTP/1.1\r\nHost: x\r\n', 408, 'ERR_HTTP_REQUEST_TIMEOUT'],
    ];
    for (const [bytes, status, code] of cases) {
      const { text } = await exchange(port, bytes);
      const [head, body] = text.split('\r\n\r\n');
      assert.match(head, new RegExp(`^HTTP/1\\.1 ${status} `), code);
      assert.equal(body, `${head.slice(9, head.indexOf('\r\n'))}: ${code}\n`, code);
      assert.equal(Number(/content-length: (\d+)/.exec(head)?.[1]), Buffer.byteLength(body), `${code}: content-length`);
      assert.match(head, /\r\nconnection: close$/, code);
    }
  });

  it('lets go of a connection whose client keeps its side open after the grace period', async () => {
    // Its own server, with a headers timeout far beyond the grace period (which would end it too).
    const patient = await start(http.createServer((_req, res) => res.end('ok')), 60_000);
    try {
      const { text, client } = await exchange(patient.port, 'GET / HTTP/1.1\r\nBad Header: x\r\n\r\n', { hold: true });
      try {
        assert.match(text, /^HTTP\/1\.1 400 /);
        await pollUntil(() => patient.sockets.size, (n) => n === 0, { timeoutMs: 3500, what: 'the server lets go of the socket' });
      } finally {
        client.destroy();
      }
    } finally {
      patient.stop();
    }
  });

  it('writes nothing into a response already under way: a pipelined bad request only ends the connection', async () => {
    const { text } = await exchange(port, 'GET /slow HTTP/1.1\r\nHost: x\r\n\r\n', { waitFor: '0123456789', more: 'GARBAGE\r\n\r\n' });
    const head = text.slice(0, text.indexOf('\r\n\r\n'));
    assert.match(head, /^HTTP\/1\.1 200 /);
    const body = text.slice(head.length + 4);
    // The body may be cut short (the client can tell: content-length is 20), never continued by another answer.
    assert.ok('0123456789abcdefghij'.startsWith(body), `body continued with ${JSON.stringify(body)}`);
    assert.doesNotMatch(text.slice(4), /HTTP\/1\.1 \d{3}/);
  });
});

describe('answerClientError on a TLS listener', () => {
  const ca = makeTestCa();
  const files = ca.issue('tls', ['a.test']);
  const server = https.createServer({ cert: readFileSync(files.cert), key: readFileSync(files.key), handshakeTimeout: 300 }, (_req, res) => res.end('ok'));
  let srv: Started;
  before(async () => {
    srv = await start(server);
  });
  after(() => srv.stop());

  it('closes a connection whose TLS handshake never completes, writing nothing (no descriptor left behind)', async () => {
    const { text, endedAfterMs } = await exchange(srv.port, '');
    assert.equal(text, '');
    assert.ok(endedAfterMs < 2000, `ended after ${endedAfterMs} ms, handshakeTimeout is 300 ms`);
    await pollUntil(() => srv.sockets.size, (n) => n === 0, { timeoutMs: 1000, what: 'the server lets go of the socket' });
  });
});
