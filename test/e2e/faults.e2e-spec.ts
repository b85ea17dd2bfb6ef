/**
 * Fault injection, one fault at a time, through the real proxy and real backends on loopback:
 * the exact status the client sees, whether the backend is ejected, that the next request is
 * served, and that no request, connection or socket handle is left behind.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import { BackendRegistry } from '../../src/backend/index.js';
import { ProxyEngine } from '../../src/proxy/index.js';
import type { RunningProxymity } from '../../src/proxymity.js';
import { closeAll, DummyBackend, type Misbehaviour, startBackends } from '../fixtures/backend-server.js';
import { pollUntil } from '../helpers/poll-until.js';
import { startProxy } from '../helpers/proxy.js';

type Outcome = { status: number; complete: boolean };

function fetchOnce(url: string, method = 'POST'): Promise<Outcome> {
  // POST with a body: never retried once streamed, so each fault shows its own status.
  return new Promise((resolve) => {
    const req = http.request(url, { method, agent: false }, (res) => {
      res.on('data', () => undefined);
      res.on('end', () => resolve({ status: res.statusCode ?? 0, complete: true }));
      res.on('error', () => resolve({ status: res.statusCode ?? 0, complete: false }));
    });
    req.on('error', () => resolve({ status: 0, complete: false }));
    req.end(method === 'POST' ? 'payload' : undefined);
  });
}

const tcpHandles = () => process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap').length;

interface Case {
  fault: Misbehaviour | 'refuse' | 'slow' | 'hang-mid-body' | 'close-after-response';
  path?: string;
  expect: number | 'cut';
  ejected: boolean;
  /** Meet the fault on a pooled keep-alive connection instead of a fresh one. */
  reused?: boolean;
}

const CASES: Case[] = [
  { fault: 'refuse', expect: 502, ejected: true },
  { fault: 'reset', expect: 502, ejected: true },
  // Indistinguishable from the backend closing an idle pooled connection as it was reused:
  // answered 502 (a streamed POST cannot be replayed) but not held against the backend.
  { fault: 'reset', expect: 502, ejected: false, reused: true },
  { fault: 'drop-mid-body', expect: 'cut', ejected: true },
  { fault: 'hang', expect: 504, ejected: false },
  { fault: 'hang-mid-body', path: '/drip/3/700', expect: 'cut', ejected: false },
  { fault: 'garbage', expect: 502, ejected: true },
  // A 101 to a request that asked for no upgrade: Node's client hands such a socket only to an
  // 'upgrade' listener and otherwise closes it, telling the request nothing but 'close'.
  { fault: 'switch-protocols', expect: 502, ejected: true },
  { fault: 'switch-no-upgrade', expect: 502, ejected: true },
  { fault: 'slow', path: '/delay/150', expect: 200, ejected: false },
  { fault: 'close-after-response', expect: 200, ejected: false },
];

describe('fault injection', () => {
  let backends: DummyBackend[];
  let sut: RunningProxymity;
  let engine: ProxyEngine;
  let registry: BackendRegistry;

  before(async () => {
    backends = await startBackends(1);
    sut = await startProxy(backends, 'healthCheck: {enabled: false}\noutlierDetection: {baseEjectionTime: 100ms}\nupstream: {timeout: 400ms, retries: 0}');
    engine = sut.app.get(ProxyEngine);
    registry = sut.app.get(BackendRegistry);
  });
  after(async () => {
    await sut.close();
    await closeAll(backends);
  });

  for (const c of CASES) {
    it(`${c.fault}${c.reused ? ' on a reused connection' : ''}: the client gets ${c.expect}, the backend is ${c.ejected ? '' : 'not '}ejected, nothing leaks`, async () => {
      const b = backends[0];
      // Start from an empty upstream pool (or a warm one) so the fault meets the connection intended.
      registry.all[0].agent.destroy();
      if (c.reused) await fetchOnce(`${sut.url}/warm`, 'GET');
      const handlesBefore = tcpHandles();
      let port = 0;
      if (c.fault === 'refuse') {
        port = b.port;
        await b.close();
      } else if (c.fault === 'close-after-response') b.server.keepAliveTimeout = 1;
      else if (c.fault !== 'slow' && c.fault !== 'hang-mid-body') b.failNext(c.fault);

      const got = await fetchOnce(`${sut.url}${c.path ?? '/fault'}`);
      if (c.expect === 'cut') assert.equal(got.complete, false, `expected a cut response, got ${JSON.stringify(got)}`);
      else assert.deepEqual(got, { status: c.expect, complete: true });
      assert.equal(registry.all[0].healthy, !c.ejected, 'ejection as configured');

      if (c.fault === 'close-after-response') {
        // The pooled connection the backend closed must not fail the next requests.
        for (let i = 0; i < 5; i++) assert.equal((await fetchOnce(`${sut.url}/again`, 'GET')).status, 200);
        b.server.keepAliveTimeout = 5000;
      }
      if (c.fault === 'refuse') backends[0] = await new DummyBackend({ name: 'b1' }).listen(port);
      backends[0].behave();
      await pollUntil(() => registry.all[0].healthy, (h) => h, { timeoutMs: 3000, what: 'ejection over' });
      assert.equal((await fetchOnce(`${sut.url}/next`, 'GET')).status, 200, 'the next request is served');

      await pollUntil(() => engine.inFlight, (n) => n === 0, { timeoutMs: 3000, what: 'nothing in flight' });
      assert.equal(registry.all[0].inFlight, 0);
      const open = () => new Promise<number>((resolve) => sut.server.getConnections((_e, n) => resolve(n)));
      await pollUntil(open, (n) => n === 0, { timeoutMs: 3000, what: 'client connections closed' });
      // Pooled keep-alive sockets may stay (one per side); anything beyond that is a leak.
      await pollUntil(tcpHandles, (n) => n <= handlesBefore + 2, { timeoutMs: 3000, what: `socket handles back near ${handlesBefore}` });
    });
  }
});
