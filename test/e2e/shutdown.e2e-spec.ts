/**
 * The built app as a process: SIGTERM drains (in-flight completes, new connections refused,
 * exit 0); a second signal exits at once. Real: process, signals, sockets, backends.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, afterEach, before, describe, it } from 'node:test';
import { closeAll, type DummyBackend, startBackends } from '../fixtures/backend-server.js';
import { request } from '../helpers/http-client.js';
import { pollUntil } from '../helpers/poll-until.js';
import { listenUrl, MAIN, spawnNode, writeTempConfig, type Spawned } from '../helpers/processes.js';

const started: Spawned[] = [];

async function startProcess(backends: DummyBackend[], extra = ''): Promise<{ proc: Spawned; url: string }> {
  const file = writeTempConfig(`proxy:\n  host: 127.0.0.1\n  port: 0\n${extra}\nbackend:\n${backends.map((b) => `  - url: ${b.url}`).join('\n')}\n`);
  const proc = spawnNode(MAIN, ['--config', file]);
  started.push(proc);
  const url = await pollUntil(() => listenUrl(proc.stdout()), (u) => u !== undefined, { timeoutMs: 10_000, what: `proxy start (stderr: ${proc.stderr()})` });
  return { proc, url: url as string };
}

function connectRefused(url: string): Promise<boolean> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const s = net.connect(Number(port), hostname);
    s.on('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ECONNREFUSED'));
  });
}

describe('graceful shutdown', () => {
  let backends: DummyBackend[];
  before(async () => {
    backends = await startBackends(1);
  });
  after(() => closeAll(backends));
  afterEach(() => {
    for (const p of started.splice(0)) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  });

  it('lets an in-flight request finish, refuses new connections, and exits 0 on SIGTERM', async () => {
    const { proc, url } = await startProcess(backends);
    const before = backends[0].proxied;
    const slow = request(`${url}/delay/1500`);
    await pollUntil(() => backends[0].proxied, (n) => n > before, { what: 'slow request reached the backend' });
    proc.child.kill('SIGTERM');
    await pollUntil(() => connectRefused(url), (refused) => refused, { timeoutMs: 1000, what: 'listener closed' });
    const res = await slow;
    assert.equal(res.status, 200);
    assert.equal(res.json().path, '/delay/1500');
    assert.equal(res.headers.connection, 'close');
    const exit = await proc.exited;
    assert.deepEqual(exit, { code: 0, signal: null });
    assert.match(proc.stdout(), /shutting down on SIGTERM: 1 request\(s\) in flight/);
  });

  it('reports 503 on /health while draining during shutdownDelay', async () => {
    const { proc, url } = await startProcess(backends, '  shutdownDelay: 1s');
    assert.equal((await request(`${url}/health`)).status, 200);
    proc.child.kill('SIGTERM');
    const res = await pollUntil(() => request(`${url}/health`), (r) => r.status === 503, { timeoutMs: 900, what: '/health 503' });
    assert.equal(res.json().error.backends.message, 'shutting down');
    assert.deepEqual(await proc.exited, { code: 0, signal: null });
  });

  it('cuts requests still running at shutdownTimeout and still exits 0', async () => {
    const { proc, url } = await startProcess(backends, '  shutdownTimeout: 300ms');
    const before = backends[0].proxied;
    const slow = request(`${url}/delay/5000`).then(
      (r) => `status ${r.status}`,
      (e: NodeJS.ErrnoException) => `error ${e.code}`,
    );
    await pollUntil(() => backends[0].proxied, (n) => n > before, { what: 'slow request reached the backend' });
    const t0 = Date.now();
    proc.child.kill('SIGTERM');
    assert.deepEqual(await proc.exited, { code: 0, signal: null });
    assert.ok(Date.now() - t0 < 3000, 'exited long before the request would have finished');
    assert.match(await slow, /^error /);
  });

  it('exits at once on a second signal', async () => {
    const { proc, url } = await startProcess(backends);
    const before = backends[0].proxied;
    const slow = request(`${url}/delay/5000`).catch(() => undefined);
    await pollUntil(() => backends[0].proxied, (n) => n > before, { what: 'slow request reached the backend' });
    proc.child.kill('SIGTERM');
    await pollUntil(() => proc.stdout(), (o) => o.includes('shutting down'), { what: 'drain started' });
    proc.child.kill('SIGINT');
    const exit = await proc.exited;
    assert.equal(exit.code, 1);
    assert.match(proc.stdout() + proc.stderr(), /SIGINT again: exiting now/);
    await slow;
  });
});
