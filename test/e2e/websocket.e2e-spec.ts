/**
 * WebSocket proxying end to end with the `ws` client and server (the dummies' /ws echo) through
 * the real proxy: messages of every shape, many tunnels, negotiation, faults on both sides,
 * shutdown, and the socket count back at its baseline after each.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import type { Server } from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import WebSocket from 'ws';
import { UpgradeProxy } from '../../src/proxy/index.js';
import type { RunningProxymity } from '../../src/proxymity.js';
import { closeAll, startBackends, type DummyBackend } from '../fixtures/backend-server.js';
import { delta, sample, scrape } from '../helpers/metrics.js';
import { pollUntil } from '../helpers/poll-until.js';
import { startProxy } from '../helpers/proxy.js';

interface Opened {
  ws: WebSocket;
  backend: string;
  res: IncomingMessage;
}

/** Opens a WebSocket through the proxy; resolves once open, with the backend that answered. */
function open(base: string, path = '/ws', protocols?: string[], options: WebSocket.ClientOptions = {}): Promise<Opened> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(base.replace(/^http/, 'ws') + path, protocols, { perMessageDeflate: false, maxPayload: 64 * 1024 * 1024, ...options });
    let res: IncomingMessage | undefined;
    ws.once('upgrade', (r) => (res = r));
    ws.once('open', () => resolve({ ws, backend: String(res?.headers['x-backend']), res: res as IncomingMessage }));
    ws.once('unexpected-response', (_req, r) => {
      let body = '';
      r.on('data', (c: Buffer) => (body += c));
      r.on('end', () => reject(Object.assign(new Error(`unexpected response ${r.statusCode}`), { status: r.statusCode, headers: r.headers, body })));
    });
    ws.once('error', reject);
  });
}

/** Sends one message and resolves with the next message received. */
function echo(ws: WebSocket, data: string | Buffer, options: { binary?: boolean; compress?: boolean } = {}): Promise<{ data: Buffer; isBinary: boolean }> {
  return new Promise((resolve, reject) => {
    ws.once('message', (d, isBinary) => resolve({ data: d as Buffer, isBinary }));
    ws.once('close', (code) => reject(new Error(`closed (${code}) before the echo`)));
    ws.send(data, options);
  });
}

function closed(ws: WebSocket): Promise<{ code: number; reason: string }> {
  return new Promise((resolve) => {
    if (ws.readyState === WebSocket.CLOSED) return resolve({ code: 1006, reason: '' });
    ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() }));
  });
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('WebSocket proxying', () => {
  let backends: DummyBackend[];
  let sut: RunningProxymity;
  let logFile: string;
  let baseline: number;

  const connections = () => new Promise<number>((resolve) => (sut.server as Server).getConnections((_e, n) => resolve(n)));
  const tunnels = () => sut.app.get(UpgradeProxy).tunnels.size;
  /** After a test: no tunnel, no backend slot and no client connection left behind. */
  const backToBaseline = async () => {
    await pollUntil(tunnels, (n) => n === 0, { what: 'tunnels closed' });
    await pollUntil(connections, (n) => n <= baseline, { what: `proxy connections back to ${baseline}` });
    for (const b of sut.app.get(UpgradeProxy).registry.all) assert.equal(b.inFlight, 0, `${b.id} still holds a slot`);
  };

  before(async () => {
    backends = await startBackends(3);
    logFile = join(mkdtempSync(join(tmpdir(), 'proxymity-ws-')), 'access.log');
    sut = await startProxy(backends, `healthCheck: {interval: 1h}\noutlierDetection: {consecutiveFailures: 100}\naccessLog: {enabled: true, output: "${logFile}"}\n`);
    baseline = await connections();
  });
  after(async () => {
    await sut.close();
    await closeAll(backends);
  });

  it('echoes text and binary messages, a 16 MiB message and a fragmented one', async () => {
    const { ws } = await open(sut.url);
    const text = await echo(ws, 'hello through the proxy');
    assert.equal(text.isBinary, false);
    assert.equal(text.data.toString(), 'hello through the proxy');
    const small = randomBytes(1024);
    const bin = await echo(ws, small, { binary: true });
    assert.equal(bin.isBinary, true);
    assert.deepEqual(bin.data, small);
    const big = randomBytes(16 * 1024 * 1024);
    assert.equal(sha((await echo(ws, big, { binary: true })).data), sha(big));
    // One message in three frames (FIN only on the last): the backend sees one message.
    const parts = [randomBytes(1000), randomBytes(70_000), randomBytes(10)];
    const got = new Promise<Buffer>((resolve) => ws.once('message', (d) => resolve(d as Buffer)));
    ws.send(parts[0], { binary: true, fin: false });
    ws.send(parts[1], { binary: true, fin: false });
    ws.send(parts[2], { binary: true, fin: true });
    assert.deepEqual(await got, Buffer.concat(parts));
    ws.close(1000, 'done');
    assert.equal((await closed(ws)).code, 1000);
    await backToBaseline();
  });

  it('spreads 500 concurrent tunnels over the backends per the strategy, each counted in flight', async () => {
    const before = await scrape(sut.adminUrl!);
    const all = await Promise.all(Array.from({ length: 500 }, () => open(sut.url)));
    const per = new Map<string, number>();
    for (const o of all) per.set(o.backend, (per.get(o.backend) ?? 0) + 1);
    assert.deepEqual([...per.values()].sort(), [166, 167, 167], JSON.stringify([...per]));
    const during = await scrape(sut.adminUrl!);
    assert.equal(sample(during, 'proxymity_websocket_tunnels_open'), 500);
    for (const b of backends) assert.equal(sample(during, 'proxymity_backend_active_requests', { backend: b.name }), per.get(b.name));
    // Every tunnel still carries its own messages.
    const replies = await Promise.all(all.map((o, i) => echo(o.ws, `m${i}`)));
    replies.forEach((r, i) => assert.equal(r.data.toString(), `m${i}`));
    await Promise.all(all.map((o) => (o.ws.close(1000), closed(o.ws))));
    await backToBaseline();
    const after = await scrape(sut.adminUrl!);
    assert.equal(delta(before, after, 'proxymity_websocket_upgrades_total', { result: 'success' }), 500);
    assert.ok(delta(before, after, 'proxymity_websocket_bytes_total', { direction: 'client_to_backend' }) > 500 * 4);
    assert.ok(delta(before, after, 'proxymity_websocket_bytes_total', { direction: 'backend_to_client' }) > 500 * 4);
  });

  it('negotiates the subprotocol and permessage-deflate end to end', async () => {
    const { ws } = await open(sut.url, '/ws/chat', ['chat.v2', 'chat.v1'], { perMessageDeflate: true });
    assert.equal(ws.protocol, 'chat.v2');
    assert.match(ws.extensions, /permessage-deflate/);
    const payload = 'compressible '.repeat(10_000);
    assert.equal((await echo(ws, payload, { compress: true })).data.toString(), payload);
    ws.close();
    await closed(ws);
    await backToBaseline();
  });

  it('relays a backend\'s refusal as it is, and answers 502 when the backend resets the handshake', async () => {
    for (const b of backends) b.failNextUpgrade('refuse');
    const refused = await open(sut.url).then(
      () => assert.fail('expected a refusal'),
      (err: { status: number; body: string }) => err,
    );
    assert.equal(refused.status, 403);
    assert.equal(refused.body, 'forbidden\n');
    for (const b of backends) b.behave();
    for (const b of backends) b.failNextUpgrade('reset');
    const reset = await open(sut.url).then(
      () => assert.fail('expected a 502'),
      (err: { status: number; headers: Record<string, string> }) => err,
    );
    assert.equal(reset.status, 502);
    assert.equal(reset.headers['proxy-status'], 'proxymity; error=connection_terminated');
    for (const b of backends) b.behave();
    await backToBaseline();
    // The proxy still serves.
    const { ws } = await open(sut.url);
    assert.equal((await echo(ws, 'still here')).data.toString(), 'still here');
    ws.close();
    await closed(ws);
    await backToBaseline();
  });

  it('closes the client side when the backend resets mid-stream, leaving other tunnels alone', async () => {
    const a = await open(sut.url);
    const b = await open(sut.url);
    assert.notEqual(a.backend, b.backend);
    const victim = backends.find((x) => x.name === a.backend)!;
    for (const client of victim.wss.clients) client.terminate();
    const seen = await closed(a.ws);
    assert.equal(seen.code, 1006, 'an abrupt close, as the backend gave');
    assert.equal((await echo(b.ws, 'unaffected')).data.toString(), 'unaffected');
    b.ws.close();
    await closed(b.ws);
    await backToBaseline();
  });

  it('frees everything when a client vanishes without a close frame', async () => {
    const a = await open(sut.url);
    const owner = backends.find((x) => x.name === a.backend)!;
    const before = owner.wss.clients.size;
    (a.ws as unknown as { _socket: import('node:net').Socket })._socket.destroy();
    await pollUntil(() => owner.wss.clients.size, (n) => n === before - 1, { what: 'backend side closed' });
    await backToBaseline();
  });

  it('survives a backend killed with tunnels open: its clients see a close, the others keep going', async () => {
    const opened = await Promise.all(Array.from({ length: 6 }, () => open(sut.url)));
    const killed = backends[2];
    const port = killed.port;
    await killed.close();
    const onKilled = opened.filter((o) => o.backend === killed.name);
    assert.equal(onKilled.length, 2);
    for (const o of onKilled) assert.equal((await closed(o.ws)).code, 1006);
    for (const o of opened.filter((x) => x.backend !== killed.name)) assert.equal((await echo(o.ws, 'alive')).data.toString(), 'alive');
    for (const o of opened) o.ws.close();
    await Promise.all(opened.map((o) => closed(o.ws)));
    await killed.listen(port);
    await backToBaseline();
  });

  it('writes one access-log line per tunnel, with status 101, its duration and close reason', async () => {
    const { ws } = await open(sut.url, '/ws/logged?x=1');
    await echo(ws, 'log me');
    ws.close(1000);
    await closed(ws);
    await backToBaseline();
    // The log is flushed at least once a second.
    const line = await pollUntil(
      () => readFileSync(logFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.path === '/ws/logged?x=1'),
      (l) => l !== undefined,
      { timeoutMs: 3000, what: 'access-log line of the tunnel' },
    );
    assert.equal(line!.status, 101);
    assert.ok((line!.duration_ms as number) > 0);
    assert.match(String(line!.close_reason), /^(client_closed|backend_closed)$/);
    assert.ok((line!.bytes_in as number) > 0 && (line!.bytes_out as number) > 0);
  });
});

describe('WebSocket failover and shutdown', () => {
  it('fails over to another backend when one refuses the connection before the handshake', async () => {
    const live = await startBackends(1);
    const sut = await startProxy(['http://127.0.0.1:1', live[0].url], 'healthCheck: {interval: 1h}\noutlierDetection: {consecutiveFailures: 100}\n');
    try {
      for (let i = 0; i < 4; i++) {
        const { ws, backend } = await open(sut.url);
        assert.equal(backend, 'b1');
        ws.close();
        await closed(ws);
      }
    } finally {
      await sut.close();
      await closeAll(live);
    }
  });

  it('answers 504 when a backend accepts the connection but never answers the handshake', async () => {
    const silent = net.createServer((s) => s.on('error', () => undefined)); // accepts, says nothing
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    const sut = await startProxy([`http://127.0.0.1:${(silent.address() as net.AddressInfo).port}`], 'healthCheck: {enabled: false}\nupstream: {timeout: 300ms}\n');
    try {
      const err = await open(sut.url).then(
        () => assert.fail('expected a 504'),
        (e: { status: number; headers: Record<string, string> }) => e,
      );
      assert.equal(err.status, 504);
      assert.equal(err.headers['proxy-status'], 'proxymity; error=http_response_timeout');
      assert.equal(sut.app.get(UpgradeProxy).tunnels.size, 0);
    } finally {
      await sut.close();
      silent.close();
    }
  });

  it('applies the route\'s rate limit to upgrades', async () => {
    const backends = await startBackends(1);
    const sut = await startProxy(backends, 'healthCheck: {interval: 1h}\nrateLimit: {rate: 1, per: 1m, burst: 1, key: client-ip}\n');
    try {
      const first = await open(sut.url);
      const err = await open(sut.url).then(
        () => assert.fail('expected a 429'),
        (e: { status: number; headers: Record<string, string> }) => e,
      );
      assert.equal(err.status, 429);
      assert.match(err.headers['retry-after'], /^\d+$/);
      first.ws.close();
      await closed(first.ws);
    } finally {
      await sut.close();
      await closeAll(backends);
    }
  });

  it('sends 1001 Going Away to open tunnels on shutdown', async () => {
    const backends = await startBackends(2);
    const sut = await startProxy(backends, 'healthCheck: {interval: 1h}\n', '  shutdownTimeout: 5s');
    try {
      const opened = await Promise.all(Array.from({ length: 4 }, () => open(sut.url)));
      // A message in flight when the shutdown starts still arrives whole, before the close.
      const pending = echo(opened[0].ws, randomBytes(256 * 1024), { binary: true });
      const codes = Promise.all(opened.map((o) => closed(o.ws)));
      await pending;
      await sut.close('SIGTERM');
      assert.deepEqual((await codes).map((c) => c.code), [1001, 1001, 1001, 1001]);
      assert.equal(sut.app.get(UpgradeProxy).tunnels.size, 0);
    } finally {
      await closeAll(backends);
    }
  });
});
