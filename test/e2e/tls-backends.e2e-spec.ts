/**
 * HTTPS backends through the real proxy, with certificates from a test CA made by openssl:
 * verification with a custom CA, a wrong servername (502), insecureSkipVerify, keep-alive.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import net, { type AddressInfo } from 'node:net';
import WebSocket from 'ws';
import { after, before, describe, it } from 'node:test';
import { makeTestCa, type TestCa } from '../helpers/certs.js';
import { request } from '../helpers/http-client.js';
import { parseConfig } from '../../src/config/index.js';
import { startProxymity } from '../../src/proxymity.js';
import { withAdminPortZero } from '../helpers/processes.js';

describe('HTTPS backends', () => {
  let ca: TestCa;
  let server: https.Server;
  let url: string;
  let connections = 0;

  before(async () => {
    ca = makeTestCa();
    const { cert, key } = ca.issue('backend', ['backend.test', '127.0.0.1']);
    server = https.createServer({ cert: readFileSync(cert), key: readFileSync(key) }, (req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ backend: 'tls', path: req.url, servername: (req.socket as import('node:tls').TLSSocket).servername ?? null }));
    });
    server.on('secureConnection', () => connections++);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => new Promise<void>((r) => server.close(() => r())));

  /** The real app in front of the HTTPS backend, with `tls` as its backend's tls block. */
  const proxyTo = (tls: string) =>
    startProxymity(parseConfig(withAdminPortZero(`proxy: {host: 127.0.0.1, port: 0}\nbackend:\n  - name: tls\n    url: "${url}"\n    tls: ${tls}\nhealthCheck: {enabled: false}\n`), 'tls.yaml'), { logger: false });

  it('verifies the backend with a custom CA and keeps connections alive', async () => {
    const px = await proxyTo(`{ca: "${ca.caCert}", servername: backend.test}`);
    try {
      const before = connections;
      for (let i = 0; i < 5; i++) {
        const res = await request(`${px.url}/hello/${i}`);
        assert.equal(res.status, 200, res.body);
        assert.equal(res.json().servername, 'backend.test');
      }
      assert.equal(connections - before, 1, 'one TLS connection, kept alive');
    } finally {
      await px.close();
    }
  });

  it('sends the backend URL\'s host name as SNI by default, never the client\'s Host', async () => {
    const { cert, key } = ca.issue('named', ['localhost']);
    const named = https.createServer({ cert: readFileSync(cert), key: readFileSync(key) }, (req, res) => {
      res.end(JSON.stringify({ servername: (req.socket as import('node:tls').TLSSocket).servername ?? null }));
    });
    await new Promise<void>((r) => named.listen(0, '127.0.0.1', () => r()));
    const namedUrl = `https://localhost:${(named.address() as AddressInfo).port}`;
    const px = await startProxymity(parseConfig(withAdminPortZero(`proxy: {host: 127.0.0.1, port: 0}\nbackend:\n  - name: named\n    url: "${namedUrl}"\n    tls: {ca: "${ca.caCert}"}\n  - name: ip\n    url: "${url}"\n    tls: {ca: "${ca.caCert}"}\nhealthCheck: {enabled: false}\n`), 'sni.yaml'), { logger: false });
    try {
      const seen = new Set<string>();
      for (let i = 0; i < 4; i++) {
        const res = await request(`${px.url}/sni`, { headers: { host: 'shop.example' } });
        assert.equal(res.status, 200, res.body);
        seen.add(String(res.json().servername));
      }
      // By name: SNI and the certificate check use "localhost"; by IP address: no SNI, and the
      // certificate is checked against 127.0.0.1.
      assert.deepEqual([...seen].sort(), ['false', 'localhost']); // Node reports "no SNI" as false
    } finally {
      await px.close();
      await new Promise<void>((r) => named.close(() => r()));
    }
  });

  it('counts a TLS handshake the backend never answers as a connect timeout: 504, or another backend', async () => {
    const silent = net.createServer((sock) => sock.on('error', () => undefined)); // accepts TCP, never speaks TLS
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    const silentUrl = `https://127.0.0.1:${(silent.address() as AddressInfo).port}`;
    const start = (urls: string[], connectTimeoutMs = 300) =>
      startProxymity(parseConfig(withAdminPortZero(`proxy: {host: 127.0.0.1, port: 0}\nbackend:\n${urls.map((u, i) => `  - name: b${i}\n    url: "${u}"\n    tls: {ca: "${ca.caCert}"}\n`).join('')}healthCheck: {enabled: false}\nupstream: {connectTimeout: ${connectTimeoutMs}ms, timeout: 60s}\n`), 'stall.yaml'), { logger: false });
    // Through Node's https agent the socket's own timer let such a handshake run twice as long.
    const aloneConnectMs = 500;
    const alone = await start([silentUrl], aloneConnectMs);
    const pair = await start([silentUrl, url]);
    // Its own proxy: the failed attempt above takes the lone backend out for a while (passive health).
    const forWs = await start([silentUrl], aloneConnectMs);
    try {
      const sent = performance.now();
      const res = await request(`${alone.url}/stall`);
      const tookMs = performance.now() - sent;
      assert.equal(res.status, 504);
      assert.ok(tookMs >= aloneConnectMs - 5 && tookMs < aloneConnectMs * 1.6, `504 after ${tookMs.toFixed(0)} ms with connectTimeout ${aloneConnectMs} ms`);
      assert.equal(res.headers['proxy-status'], 'proxymity; error=connection_timeout');
      for (let i = 0; i < 4; i++) assert.equal((await request(`${pair.url}/failover/${i}`)).status, 200, `request ${i + 1}`);
      const wsSent = performance.now();
      const ws = await new Promise<{ status: number; proxyStatus: unknown }>((resolve, reject) => {
        const client = new WebSocket(`${forWs.url.replace(/^http/, 'ws')}/ws`);
        client.once('unexpected-response', (_req, r) => (r.resume(), resolve({ status: r.statusCode ?? 0, proxyStatus: r.headers['proxy-status'] })));
        client.once('open', () => reject(new Error('opened')));
        client.once('error', reject);
      });
      const wsMs = performance.now() - wsSent;
      assert.deepEqual(ws, { status: 504, proxyStatus: 'proxymity; error=connection_timeout' });
      assert.ok(wsMs >= aloneConnectMs - 5 && wsMs < aloneConnectMs * 1.6, `WebSocket 504 after ${wsMs.toFixed(0)} ms with connectTimeout ${aloneConnectMs} ms`);
    } finally {
      await alone.close();
      await pair.close();
      await forWs.close();
      silent.close();
    }
  });

  it('answers 502 tls_certificate_error for an unknown CA and for a wrong servername', async () => {
    for (const tls of [`{servername: backend.test}`, `{ca: "${ca.caCert}", servername: other.test}`]) {
      const px = await proxyTo(tls);
      try {
        const res = await request(`${px.url}/x`);
        assert.equal(res.status, 502, tls);
        assert.equal(res.headers['proxy-status'], 'proxymity; error=tls_certificate_error');
      } finally {
        await px.close();
      }
    }
  });

  it('accepts any certificate with insecureSkipVerify', async () => {
    const px = await proxyTo('{insecureSkipVerify: true}');
    try {
      assert.equal((await request(`${px.url}/x`)).status, 200);
    } finally {
      await px.close();
    }
  });

  it('refuses a config whose CA file cannot be read', async () => {
    await assert.rejects(async () => proxyTo('{ca: /nonexistent/ca.pem}'), /backend\[0\]\.tls\.ca: cannot read file "\/nonexistent\/ca\.pem"/);
  });
});
