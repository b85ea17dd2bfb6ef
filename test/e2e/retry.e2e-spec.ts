/**
 * The retry policy (`retry:`) through the real proxy and real backends.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { afterEach, describe, it } from 'node:test';
import type { RunningProxymity } from '../../src/proxymity.js';
import { closeAll, type DummyBackend, startBackends } from '../fixtures/backend-server.js';
import { request } from '../helpers/http-client.js';
import { startProxy } from '../helpers/proxy.js';

let open: { sut: RunningProxymity; backends: DummyBackend[] }[] = [];
afterEach(async () => {
  for (const o of open) {
    await o.sut.close();
    await closeAll(o.backends);
  }
  open = [];
});

async function setup(extra: string) {
  const backends = await startBackends(2);
  const sut = await startProxy(backends, `healthCheck: {interval: 1h}\noutlierDetection: {consecutiveFailures: 100}\n${extra}`);
  open.push({ sut, backends });
  return { sut, backends };
}

describe('retry policy', () => {
  it('retries a GET answered 503 on the other backend when 5xx is in retry.on', async () => {
    const { sut, backends } = await setup('retry: {on: [connect-failure, reset, 5xx]}');
    backends[0].forcedStatus = 503;
    for (let i = 0; i < 4; i++) {
      const res = await request(`${sut.url}/r${i}`);
      assert.equal(res.status, 200);
      assert.equal(res.json().backend, 'b2');
    }
  });

  it('relays a 503 as it is when 5xx is not in retry.on (the default)', async () => {
    const { sut, backends } = await setup('');
    backends[0].forcedStatus = 503;
    const statuses = [];
    for (let i = 0; i < 4; i++) statuses.push((await request(`${sut.url}/r${i}`)).status);
    assert.deepEqual(statuses.sort(), [200, 200, 503, 503]);
  });

  it('never retries a method outside retry.methods after the request reached a backend', async () => {
    const { sut, backends } = await setup('retry: {on: [5xx]}');
    backends.forEach((b) => (b.forcedStatus = 503));
    backends[1].forcedStatus = undefined;
    const statuses = [];
    for (let i = 0; i < 4; i++) statuses.push((await request(`${sut.url}/p${i}`, { method: 'POST' })).status);
    assert.deepEqual(statuses.sort(), [200, 200, 503, 503]);
  });

  it('retries a GET that timed out when timeout is in retry.on', async () => {
    const { sut, backends } = await setup('retry: {on: [timeout]}\nupstream: {timeout: 200ms}');
    backends[0].failAlways('hang');
    for (let i = 0; i < 2; i++) {
      const res = await request(`${sut.url}/t${i}`);
      assert.equal(res.status, 200);
      assert.equal(res.json().backend, 'b2');
    }
  });

  it('stops at retry.attempts', async () => {
    const { sut, backends } = await setup('retry: {attempts: 1, on: [5xx]}');
    backends[0].forcedStatus = 503;
    const statuses = [];
    for (let i = 0; i < 4; i++) statuses.push((await request(`${sut.url}/a${i}`)).status);
    assert.ok(statuses.includes(503), 'one attempt only: the 503 is relayed');
  });

  it('does not retry once the retry budget is spent', async () => {
    const { sut, backends } = await setup('retry: {on: [5xx], budget: {percent: 0, minRetries: 0}}');
    backends[0].forcedStatus = 503;
    const statuses = [];
    for (let i = 0; i < 4; i++) statuses.push((await request(`${sut.url}/b${i}`)).status);
    assert.ok(statuses.includes(503));
  });

  it('waits a backoff between tries and still succeeds', async () => {
    const { sut, backends } = await setup('retry: {on: [5xx], backoff: {base: 50ms, max: 100ms}}');
    backends[0].forcedStatus = 502;
    for (let i = 0; i < 2; i++) assert.equal((await request(`${sut.url}/k${i}`)).status, 200);
  });
  it('replays a PUT body kept under retry.bufferBody on the other backend after a reset', async () => {
    const { sut, backends } = await setup('');
    backends[0].failAlways('reset');
    for (let i = 0; i < 4; i++) {
      const body = randomBytes(10 * 1024 + i);
      const res = await request(`${sut.url}/put${i}`, { method: 'PUT', body });
      assert.equal(res.status, 200, res.body);
      assert.equal(res.json().backend, 'b2');
      assert.equal(res.json().bodyBytes, body.length);
      assert.equal(res.json().bodySha256, createHash('sha256').update(body).digest('hex'));
    }
    assert.ok(backends[0].proxied >= 2, 'b1 was tried and reset');
  });

  it('replays a chunked PUT body too, and not a body larger than retry.bufferBody', async () => {
    const { sut, backends } = await setup('retry: {bufferBody: 8KiB}');
    backends[0].failAlways('reset');
    const small = randomBytes(4096);
    const big = randomBytes(64 * 1024);
    const chunked = await request(`${sut.url}/chunked`, { method: 'PUT', body: small, headers: { 'transfer-encoding': 'chunked' } });
    assert.equal(chunked.status, 200);
    assert.equal(chunked.json().bodySha256, createHash('sha256').update(small).digest('hex'));
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push((await request(`${sut.url}/big${i}`, { method: 'PUT', body: big })).status);
    assert.deepEqual(statuses.sort(), [200, 200, 502, 502]);
  });

  it('never replays the body of a method outside retry.methods', async () => {
    const { sut, backends } = await setup('');
    backends[0].failAlways('reset');
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push((await request(`${sut.url}/post${i}`, { method: 'POST', body: randomBytes(1024) })).status);
    assert.deepEqual(statuses.sort(), [200, 200, 502, 502]);
  });
});

describe('a pooled connection the backend closed as it was reused', () => {
  it('replays an idempotent request on a new connection, not on another pooled one', async () => {
    // Answers the first request on each connection (the first two after 50 ms, so both
    // connections are open at once) and drops the connection on any later one: every pooled
    // connection is stale.
    let connections = 0;
    const origin = net.createServer((socket) => {
      connections++;
      let served = 0;
      socket.on('error', () => undefined);
      socket.on('data', () => {
        if (served++ > 0) return void socket.destroy();
        const delay = connections <= 2 ? 50 : 0;
        setTimeout(() => socket.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nkeep-alive: timeout=60\r\n\r\nok'), delay);
      });
    });
    await new Promise<void>((r) => origin.listen(0, '127.0.0.1', r));
    const sut = await startProxy([`http://127.0.0.1:${(origin.address() as net.AddressInfo).port}`], 'healthCheck: {enabled: false}\nretry: {attempts: 1}');
    try {
      const warm = await Promise.all([request(`${sut.url}/a`), request(`${sut.url}/b`)]);
      assert.deepEqual(warm.map((r) => r.status), [200, 200]);
      assert.equal(connections, 2);
      const replayed = await request(`${sut.url}/c`);
      assert.equal(replayed.status, 200, 'replayed on a new connection');
      assert.equal(connections, 3);
    } finally {
      await sut.close();
      origin.close();
    }
  });
});
