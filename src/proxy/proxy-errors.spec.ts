/**
 * answerInternalError on real servers and clients, over HTTP/1.1, HTTPS with HSTS, and HTTP/2:
 * what a client gets when a bug escapes the request path, and that a response already under way
 * is cut, never finished as if it were whole.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { LoggerService } from '@nestjs/common';
import { makeTestCa } from '../../test/helpers/certs.js';
import { request } from '../../test/helpers/http-client.js';
import { kHsts, type HstsServer } from './hsts.js';
import { answerInternalError } from './proxy-errors.js';

const HSTS = 'max-age=63072000; includeSubDomains';

/** Records what is logged: the function under test must name the error. */
function recordingLogger(): LoggerService & { errors: string[] } {
  const errors: string[] = [];
  return { errors, error: (m: unknown) => void errors.push(String(m)), log: () => undefined, warn: () => undefined };
}

/** The handler under test: sets headers for an answer (and writes `partial`) when asked, then hits a bug. */
function failing(logger: LoggerService, partial?: string, preset = false) {
  return (req: IncomingMessage, res: ServerResponse) => {
    if (preset) {
      res.setHeader('content-length', '999');
      res.setHeader('x-half-built', 'yes');
    }
    if (partial !== undefined) {
      res.writeHead(200, { 'content-length': '1000' });
      res.write(partial);
    }
    answerInternalError(req, res, new Error('boom in the request path'), logger);
  };
}

async function listen(server: http.Server | https.Server | http2.Http2SecureServer): Promise<number> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as AddressInfo).port;
}

describe('answerInternalError', () => {
  const ca = makeTestCa();
  const pair = ca.issue('localhost', ['localhost', '127.0.0.1']);
  const tls = { cert: readFileSync(pair.cert), key: readFileSync(pair.key) };
  const servers: { close(): void }[] = [];
  after(() => servers.forEach((s) => s.close()));

  it('answers 500 with Connection: close over HTTP/1.1, no HSTS on plain HTTP, and logs the stack', async () => {
    const logger = recordingLogger();
    const server = http.createServer(failing(logger, undefined, true));
    servers.push(server);
    const res = await request(`http://127.0.0.1:${await listen(server)}/x?y=1`);
    assert.equal(res.status, 500);
    assert.equal(res.headers.connection, 'close');
    assert.equal(res.headers['x-half-built'], undefined, 'headers set for the failed answer are dropped');
    assert.equal(res.headers['content-length'], String(res.body.length));
    assert.equal(res.headers['strict-transport-security'], undefined);
    assert.equal(res.body, '500 Internal Server Error: proxy_internal_error\n');
    assert.equal(logger.errors.length, 1);
    assert.match(logger.errors[0], /^unexpected error handling GET \/x\?y=1: Error: boom in the request path\n\s+at /);
  });

  describe('on TLS listeners with hsts', () => {
    let port1: number;
    let port2: number;
    let port3: number;
    before(async () => {
      const s1 = https.createServer(tls, failing(recordingLogger()));
      const s2 = http2.createSecureServer({ ...tls, allowHTTP1: true }, failing(recordingLogger()) as never);
      const s3 = http2.createSecureServer({ ...tls, allowHTTP1: true }, failing(recordingLogger(), 'partial body') as never);
      (s1 as HstsServer)[kHsts] = HSTS;
      (s2 as HstsServer)[kHsts] = HSTS;
      servers.push(s1, s2, s3);
      port1 = await listen(s1);
      port2 = await listen(s2);
      port3 = await listen(s3);
    });

    it('carries the listener’s Strict-Transport-Security over HTTPS', async () => {
      const res = await new Promise<IncomingMessage>((resolve, reject) => https.get({ port: port1, host: '127.0.0.1', ca: readFileSync(ca.caCert), servername: 'localhost' }, resolve).on('error', reject));
      res.resume();
      assert.equal(res.statusCode, 500);
      assert.equal(res.headers['strict-transport-security'], HSTS);
      assert.equal(res.headers.connection, 'close');
    });

    it('answers over HTTP/2 without connection-specific fields, with HSTS', async () => {
      const client = http2.connect(`https://127.0.0.1:${port2}`, { ca: readFileSync(ca.caCert), servername: 'localhost' });
      // Node drops a Connection field on HTTP/2 with a process warning: none may be given.
      const warnings: string[] = [];
      const onWarning = (w: Error) => void warnings.push(`${w.name}: ${w.message}`);
      process.on('warning', onWarning);
      try {
        const { headers, body } = await new Promise<{ headers: http2.IncomingHttpHeaders; body: string }>((resolve, reject) => {
          const req = client.request({ ':path': '/' });
          let h: http2.IncomingHttpHeaders = {};
          let b = '';
          req.on('response', (x) => (h = x));
          req.on('data', (d: Buffer) => (b += d));
          req.on('end', () => resolve({ headers: h, body: b }));
          req.on('error', reject);
        });
        assert.equal(headers[':status'], 500);
        assert.equal(headers['strict-transport-security'], HSTS);
        assert.equal(headers.connection, undefined);
        assert.equal(body, '500 Internal Server Error: proxy_internal_error\n');
        await new Promise((r) => setImmediate(r)); // warnings are emitted on the next tick
        assert.deepEqual(warnings, []);
      } finally {
        process.removeListener('warning', onWarning);
        client.close();
      }
    });

    it('resets an HTTP/2 stream whose response began with INTERNAL_ERROR, never a normal end', async () => {
      const client = http2.connect(`https://127.0.0.1:${port3}`, { ca: readFileSync(ca.caCert), servername: 'localhost' });
      try {
        const outcome = await new Promise<string>((resolve) => {
          const req = client.request({ ':path': '/' });
          req.on('data', () => undefined);
          req.on('end', () => resolve('ended'));
          req.on('error', () => undefined);
          req.on('close', () => resolve(`closed with code ${req.rstCode}`));
        });
        assert.equal(outcome, `closed with code ${http2.constants.NGHTTP2_INTERNAL_ERROR}`);
      } finally {
        client.close();
      }
    });
  });

  it('cuts a response whose headers went out, so the client sees it incomplete', async () => {
    const logger = recordingLogger();
    const server = http.createServer(failing(logger, 'partial body'));
    servers.push(server);
    const port = await listen(server);
    const outcome = await new Promise<string>((resolve) => {
      http.get({ port, host: '127.0.0.1', agent: false }, (res) => {
        let got = '';
        res.on('data', (d: Buffer) => (got += d));
        res.on('end', () => resolve(`ended whole with "${got}"`));
        res.on('aborted', () => resolve(`aborted after "${got}"`));
        res.on('error', () => resolve(`aborted after "${got}"`));
      }).on('error', (e) => resolve(`request error ${e.message}`));
    });
    // Cut before or after the head reached the client: either way never a response that ends.
    assert.match(outcome, /^(aborted after "(partial body)?"|request error socket hang up)$/);
    assert.equal(logger.errors.length, 1);
  });
});
