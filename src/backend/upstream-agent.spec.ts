/**
 * The backend agents' three socket timeouts (connect, read, idle in the pool) and keep-alive
 * reuse, against real servers on loopback.
 */
import assert from 'node:assert/strict';
import { AsyncLocalStorage, createHook } from 'node:async_hooks';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { startStalledListener, type StalledListener } from '../../test/fixtures/stalled-listener.js';
import { pollUntil } from '../../test/helpers/poll-until.js';
import { createUpstreamAgent, type UpstreamAgentOptions } from './upstream-agent.js';

// The read timeout is long, so a pooled connection that closes was closed by the idle sweep.
const OPTS: UpstreamAgentOptions = { connectTimeoutMs: 300, readTimeoutMs: 60_000, idleTimeoutMs: 400, maxSockets: 8, maxFreeSockets: 8 };

/** An origin that counts connections, holds `/silent` forever and can announce a Keep-Alive hint. */
class Origin {
  readonly server: http.Server;
  readonly open = new Set<Socket>();
  connections = 0;
  hint: string | undefined;
  /** Answers to `/held`, sent when the test calls them. */
  held: (() => void)[] = [];
  constructor() {
    this.server = http.createServer((req, res) => {
      if (req.url === '/silent') return; // never answers
      if (req.url === '/held') return void this.held.push(() => res.end(String(req.socket.remotePort)));
      if (this.hint !== undefined) res.setHeader('keep-alive', this.hint);
      if (req.url === '/slow') return void setTimeout(() => res.end(String(req.socket.remotePort)), 50);
      req.resume(); // a body, if any, is read before the answer
      req.on('end', () => res.end(String(req.socket.remotePort)));
    });
    this.server.keepAliveTimeout = 60_000; // the origin would keep them: any close is the agent's
    this.server.on('connection', (s: Socket) => {
      this.connections++;
      this.open.add(s);
      s.on('close', () => this.open.delete(s));
    });
  }
  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }
}

function get(agent: http.Agent, port: number, path = '/'): Promise<{ status: number; body: string; reused: boolean }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, reused: req.reusedSocket }));
    });
    req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT', connecting: req.socket?.connecting, reused: req.reusedSocket })));
    req.on('error', reject);
  });
}

function freeCount(agent: http.Agent): number {
  return Object.values(agent.freeSockets).reduce((n, l) => n + (l?.length ?? 0), 0);
}

/** Node's count of the agent's open connections (busy and pooled). */
function socketCount(agent: http.Agent): number {
  return (agent as unknown as { totalSocketCount: number }).totalSocketCount;
}

function pooledSockets(agent: http.Agent): Socket[] {
  return Object.values(agent.freeSockets).flatMap((l) => l ?? []);
}

describe('upstream agent', () => {
  const origin = new Origin();
  let stalled: StalledListener;
  before(async () => {
    await new Promise<void>((r) => origin.server.listen(0, '127.0.0.1', r));
    stalled = await startStalledListener();
  });
  after(async () => {
    origin.server.closeAllConnections();
    await new Promise((r) => origin.server.close(r));
    await stalled.close();
  });

  it('reuses one connection for requests in sequence and closes it after keepAliveTimeout idle', async () => {
    const agent = createUpstreamAgent('http:', OPTS);
    const before = origin.connections;
    const a = await get(agent, origin.port);
    const b = await get(agent, origin.port);
    assert.equal(a.body, b.body, 'same client port: same connection');
    assert.equal(b.reused, true);
    assert.equal(origin.connections - before, 1);
    await pollUntil(() => freeCount(agent), (n) => n === 0, { what: 'the idle connection to be closed', timeoutMs: 3000 });
    await pollUntil(() => origin.open.size, (n) => n === 0, { what: 'the origin to see the close', timeoutMs: 3000 });
    agent.destroy();
  });

  it('keeps a connection that is used more often than keepAliveTimeout', async () => {
    const agent = createUpstreamAgent('http:', OPTS);
    const first = await get(agent, origin.port);
    for (let i = 0; i < 6; i++) {
      await new Promise((r) => setTimeout(r, 150)); // 900 ms in all, each gap well under 400 ms
      assert.equal((await get(agent, origin.port)).body, first.body, `request ${i + 2} on the first connection`);
    }
    agent.destroy();
  });

  it('honours the backend\'s Keep-Alive timeout hint, less a second', async () => {
    const agent = createUpstreamAgent('http:', { ...OPTS, idleTimeoutMs: 60_000 });
    try {
      origin.hint = 'timeout=1';
      const a = await get(agent, origin.port);
      const b = await get(agent, origin.port);
      assert.notEqual(a.body, b.body, 'timeout=1 leaves no safe idle time: the connection is not pooled');
      origin.hint = 'timeout=2';
      await get(agent, origin.port);
      assert.equal(freeCount(agent), 1);
      await pollUntil(() => freeCount(agent), (n) => n === 0, { what: 'the hinted idle limit (1 s) to close it, not the 60 s one', timeoutMs: 3000 });
    } finally {
      origin.hint = undefined;
      agent.destroy();
    }
  });

  it('times out a silent backend on a reused connection with the read timeout', async () => {
    const agent = createUpstreamAgent('http:', { ...OPTS, readTimeoutMs: 300 });
    await get(agent, origin.port);
    const err = await get(agent, origin.port, '/silent').then(() => undefined, (e: { code: string; connecting: boolean; reused: boolean }) => e);
    assert.deepEqual(err && { code: err.code, connecting: err.connecting, reused: err.reused }, { code: 'TIMEOUT', connecting: false, reused: true });
    agent.destroy();
  });

  it('gives a reused connection the whole read timeout, even when its first write comes late', async () => {
    // Regression: the read timer of a pooled connection last restarted when the previous
    // response ended; a request whose body (and so its headers) is written late must not
    // inherit what is left of it.
    const agent = createUpstreamAgent('http:', { ...OPTS, readTimeoutMs: 600, idleTimeoutMs: 10_000 });
    try {
      const first = await get(agent, origin.port);
      await new Promise((r) => setTimeout(r, 450));
      const res = await new Promise<{ status: number; body: string; reused: boolean }>((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port: origin.port, path: '/upload', method: 'POST', agent, headers: { 'content-length': '2' } }, (r) => {
          let body = '';
          r.on('data', (c) => (body += c));
          r.on('end', () => resolve({ status: r.statusCode ?? 0, body, reused: req.reusedSocket }));
        });
        req.on('timeout', () => req.destroy(new Error('read timeout fired early')));
        req.on('error', reject);
        setTimeout(() => req.end('ok'), 300); // 450 + 300 ms after the last activity: past 600 ms
      });
      assert.deepEqual(res, { status: 200, body: first.body, reused: true });
    } finally {
      agent.destroy();
    }
  });

  it('takes a swept connection out of the pool at once, so the next request never gets it', async () => {
    const agent = createUpstreamAgent('http:', { ...OPTS, idleTimeoutMs: 60_000 }) as http.Agent & { sweepIdle(): void; stopSweeping(): void };
    try {
      await Promise.all([get(agent, origin.port, '/slow'), get(agent, origin.port, '/slow')]);
      agent.stopSweeping(); // the test sweeps by hand
      const pool = Object.values(agent.freeSockets)[0] as (Socket & { freedAt?: number })[];
      assert.equal(pool.length, 2);
      pool[pool.length - 1]!.freedAt = -1e9; // the one LIFO would hand out next is due
      agent.sweepIdle();
      assert.equal(freeCount(agent), 1, 'out of the pool before its close event');
      const res = await get(agent, origin.port); // in the same tick as the sweep
      assert.equal(res.status, 200);
      assert.equal(res.reused, true, 'served by the remaining pooled connection');
    } finally {
      agent.destroy();
    }
  });

  it('times out a connect that never completes with the connect timeout', async () => {
    const agent = createUpstreamAgent('http:', OPTS);
    const err = await get(agent, stalled.port).then(() => undefined, (e: { code: string; connecting: boolean }) => e);
    assert.deepEqual(err && { code: err.code, connecting: err.connecting }, { code: 'TIMEOUT', connecting: true });
    agent.destroy();
  });

  it('stops sweeping when its pool is empty and when it is destroyed', async () => {
    const agent = createUpstreamAgent('http:', OPTS) as http.Agent & { sweeper?: NodeJS.Timeout };
    assert.equal(agent.sweeper, undefined, 'no timer before a socket is pooled');
    await get(agent, origin.port);
    assert.notEqual(agent.sweeper, undefined);
    await pollUntil(() => agent.sweeper, (t) => t === undefined, { what: 'the sweep to stop with the pool empty', timeoutMs: 3000 });
    await get(agent, origin.port);
    agent.destroy();
    assert.equal(agent.sweeper, undefined);
  });

  describe('taking and freeing a pooled socket as Node\'s agent does (the plain-HTTP fast path)', () => {
    /** The sequence run through Node's own keep-alive agent and through ours, compared. */
    async function trace(agent: http.Agent): Promise<{ ports: string[]; reused: boolean[]; reuseInits: number; stores: (string | undefined)[]; asyncIds: number[]; consistent: boolean[] }> {
      const reuses: object[] = [];
      // Node's agent tells async hooks about each reuse: an init for the socket's new async id.
      const hook = createHook({ init: (_id, type, _trigger, resource) => void (type === 'TCPWRAP' && 'handle' in (resource as object) && reuses.push(resource)) }).enable();
      const als = new AsyncLocalStorage<string>();
      const ports: string[] = [];
      const reused: boolean[] = [];
      const stores: (string | undefined)[] = [];
      const asyncIds: number[] = [];
      /** The socket's own record of its async id (Node's internal symbol) agrees with its handle's. */
      const consistent: boolean[] = [];
      try {
        for (const label of ['first', 'second', 'third']) {
          await als.run(label, () =>
            new Promise<void>((resolve, reject) => {
              const req = http.get({ host: '127.0.0.1', port: origin.port, path: '/', agent }, (res) => {
                stores.push(als.getStore());
                let body = '';
                res.on('data', (c: Buffer) => (body += c));
                res.on('end', () => {
                  ports.push(body);
                  reused.push(req.reusedSocket);
                  resolve();
                });
              });
              req.on('socket', (s: Socket) => {
                const id = (s as Socket & { _handle?: { getAsyncId(): number } })._handle?.getAsyncId() ?? -1;
                const symbol = Object.getOwnPropertySymbols(s).find((x) => x.description === 'async_id_symbol');
                asyncIds.push(id);
                consistent.push(symbol !== undefined && (s as unknown as Record<symbol, number>)[symbol] === id);
              });
              req.on('error', reject);
            }),
          );
        }
      } finally {
        hook.disable();
      }
      return { ports, reused, reuseInits: reuses.length, stores, asyncIds, consistent };
    }

    it('one connection, a new async id per request, each request\'s async context: the same as Node\'s agent', async () => {
      const node = new http.Agent({ keepAlive: true });
      const ours = createUpstreamAgent('http:', OPTS);
      try {
        const expected = await trace(node);
        const got = await trace(ours);
        assert.equal(new Set(got.ports).size, 1, 'one connection');
        assert.deepEqual(got.reused, expected.reused);
        assert.deepEqual(got.reused, [false, true, true]);
        assert.equal(got.reuseInits, expected.reuseInits);
        assert.equal(got.reuseInits, 2);
        assert.equal(new Set(got.asyncIds).size, 3, `a new async id on each reuse: ${got.asyncIds.join(', ')}`);
        assert.deepEqual(got.consistent, [true, true, true]);
        assert.deepEqual(got.consistent, expected.consistent);
        assert.deepEqual(got.stores, ['first', 'second', 'third']);
        assert.deepEqual(got.stores, expected.stores);
      } finally {
        node.destroy();
        ours.destroy();
      }
    });

    it('takes the most recently freed socket (LIFO), as Node does by default', async () => {
      const agent = createUpstreamAgent('http:', OPTS);
      try {
        // Two connections at once, freed in a known order: /held is answered once / has ended.
        const held = get(agent, origin.port, '/held');
        const fast = await get(agent, origin.port, '/');
        await pollUntil(() => origin.held.length, (n) => n === 1, { what: '/held to arrive' });
        origin.held.shift()!();
        const slow = await held;
        assert.notEqual(fast.body, slow.body);
        assert.equal(freeCount(agent), 2);
        const next = await get(agent, origin.port);
        assert.equal(next.reused, true);
        assert.equal(next.body, slow.body, 'the socket freed last');
      } finally {
        agent.destroy();
      }
    });

    it('keeps the busy count: with maxSockets 1, a second request waits for the reused socket instead of opening another', async () => {
      const agent = createUpstreamAgent('http:', { ...OPTS, maxSockets: 1, maxFreeSockets: 1 });
      try {
        const first = await get(agent, origin.port);
        const before = origin.connections;
        const a = get(agent, origin.port, '/held'); // takes the pooled socket (the fast path)
        await pollUntil(() => origin.held.length, (n) => n === 1, { what: '/held to arrive' });
        const b = get(agent, origin.port, '/');
        const key = Object.keys(agent.sockets)[0]!;
        assert.equal(agent.sockets[key]?.length, 1, 'the reused socket counts as busy');
        assert.equal(agent.requests[key]?.length, 1, 'the second request is queued, not sent on a new connection');
        origin.held.shift()!();
        const [ra, rb] = await Promise.all([a, b]);
        assert.deepEqual([ra.body, rb.body], [first.body, first.body]);
        assert.equal(origin.connections, before, 'no new connection');
      } finally {
        agent.destroy();
      }
    });

    /** What the agent holds once a response has ended: busy and pooled lists, and the pooled socket's async-id record. */
    async function afterFree(agent: http.Agent): Promise<{ busy: number[]; pooled: number[]; asyncIdRecord: number | undefined }> {
      await get(agent, origin.port);
      const pooled = Object.values(agent.freeSockets).map((l) => l?.length ?? 0);
      const socket = pooledSockets(agent)[0];
      const symbol = socket && Object.getOwnPropertySymbols(socket).find((x) => x.description === 'async_id_symbol');
      return {
        busy: Object.values(agent.sockets).map((l) => l?.length ?? 0),
        pooled,
        asyncIdRecord: symbol === undefined ? undefined : (socket as unknown as Record<symbol, number>)[symbol],
      };
    }

    it('puts a socket back in the pool as Node\'s agent does when its response ends, through its own free handler', async () => {
      const node = new http.Agent({ keepAlive: true });
      const ours = createUpstreamAgent('http:', OPTS);
      try {
        for (let i = 0; i < 3; i++) {
          const expected = await afterFree(node);
          const got = await afterFree(ours);
          assert.deepEqual(got, expected);
          assert.deepEqual(got, { busy: [], pooled: [1], asyncIdRecord: -1 });
        }
        // Node's handler would add a once() error listener to the pooled socket on each free
        // (next to the agent's own, set at connect); the agent's handler adds none.
        assert.equal(ours.listenerCount('free'), 1);
        const errorListeners = pooledSockets(ours)[0]!.rawListeners('error');
        assert.equal(errorListeners.length, 1, 'one error listener, set once per connection');
        assert.equal('listener' in errorListeners[0]!, false, 'not a once() wrapper');
      } finally {
        node.destroy();
        ours.destroy();
      }
    });

    it('closes a freed socket instead of pooling it beyond maxFreeSockets', async () => {
      // A long idle timeout: only maxFreeSockets can close a socket here.
      const agent = createUpstreamAgent('http:', { ...OPTS, idleTimeoutMs: 60_000, maxFreeSockets: 1 });
      try {
        const held = get(agent, origin.port, '/held');
        await pollUntil(() => origin.held.length, (n) => n === 1, { what: '/held to arrive' });
        const fast = await get(agent, origin.port, '/'); // a second connection, pooled
        assert.equal(socketCount(agent), 2);
        origin.held.shift()!();
        const slow = await held; // the pool is full: this one is closed
        assert.notEqual(fast.body, slow.body);
        assert.deepEqual(pooledSockets(agent).map((s) => String(s.localPort)), [fast.body], 'the socket pooled first stays');
        await pollUntil(() => socketCount(agent), (n) => n === 1, { what: 'the second connection to close' });
        await pollUntil(() => [...origin.open].some((s) => String(s.remotePort) === slow.body), (open) => !open, { what: 'the origin to see it closed' });
      } finally {
        agent.destroy();
      }
    });

    it('closes a pooled socket that fails, takes it out of the agent, and the next request opens a new connection', async () => {
      const agent = createUpstreamAgent('http:', OPTS);
      try {
        const first = await get(agent, origin.port);
        const pooled = pooledSockets(agent)[0]!;
        // Out of the agent as the error is emitted, as Node's listener does it (not later, on 'close').
        const atError = new Promise<{ free: number; sockets: number }>((resolve) => pooled.on('error', () => resolve({ free: freeCount(agent), sockets: socketCount(agent) })));
        // Listened for after the agent's own 'close' listener: it has run when this resolves.
        const closed = new Promise((resolve) => pooled.once('close', resolve));
        // With no listener for a pooled socket's error, this would be an uncaught exception.
        pooled.destroy(Object.assign(new Error('reset by peer'), { code: 'ECONNRESET' }));
        assert.deepEqual(await atError, { free: 0, sockets: 0 });
        await closed;
        assert.equal(socketCount(agent), 0, 'counted out once');
        const next = await get(agent, origin.port);
        assert.equal(next.reused, false);
        assert.notEqual(next.body, first.body);
      } finally {
        agent.destroy();
      }
    });

    it('leaves the error of a socket in use to its request, and counts the socket out once', async () => {
      const agent = createUpstreamAgent('http:', OPTS);
      try {
        await get(agent, origin.port); // pooled, so the next request reuses it (the fast path)
        const held = get(agent, origin.port, '/held');
        await pollUntil(() => origin.held.length, (n) => n === 1, { what: '/held to arrive' });
        const busy = Object.values(agent.sockets).flatMap((l) => l ?? []);
        assert.equal(busy.length, 1);
        const closed = new Promise((resolve) => busy[0]!.once('close', resolve)); // after the agent's 'close' listener
        busy[0]!.destroy(Object.assign(new Error('reset by peer'), { code: 'ECONNRESET' }));
        await assert.rejects(held, { code: 'ECONNRESET', message: 'reset by peer' });
        await closed;
        assert.equal(socketCount(agent), 0, 'counted out once');
        assert.equal(freeCount(agent), 0);
        origin.held.shift()!();
        assert.equal((await get(agent, origin.port)).status, 200);
      } finally {
        agent.destroy();
      }
    });

    it('skips a pooled socket that was destroyed, and opens a new connection when none is left', async () => {
      const agent = createUpstreamAgent('http:', OPTS);
      try {
        const first = await get(agent, origin.port);
        for (const list of Object.values(agent.freeSockets)) for (const s of list ?? []) s.destroy();
        const before = origin.connections;
        const next = await get(agent, origin.port);
        assert.equal(next.status, 200);
        assert.equal(next.reused, false);
        assert.notEqual(next.body, first.body);
        assert.equal(origin.connections - before, 1);
      } finally {
        agent.destroy();
      }
    });
  });
});
