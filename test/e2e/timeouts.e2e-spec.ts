/**
 * Each upstream timeout with its own error, through the real proxy and real backends.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import type { RunningProxymity } from '../../src/proxymity.js';
import { closeAll, type DummyBackend, startBackends } from '../fixtures/backend-server.js';
import { startStalledListener, type StalledListener } from '../fixtures/stalled-listener.js';
import { request } from '../helpers/http-client.js';
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
