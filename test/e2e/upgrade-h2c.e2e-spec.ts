/**
 * Upgrade requests that are not plain WebSocket handshakes, through the real proxy, with raw `net`
 * clients (so the test controls every byte) and a real backend that WOULD switch to h2c when
 * asked (as many Go, Java and nghttpx servers do):
 * - h2c smuggling (Bishop Fox, 2020): `Upgrade: h2c` is never tunnelled, so the client cannot
 *   speak HTTP/2 straight to the backend past routing, header rules and rate limits;
 * - an Upgrade request's Content-Length body reaches the backend whole (it used to be dropped,
 *   and the client hung until upstream.timeout); a chunked one gets 400.
 * Nothing is faked: proxy, backend and clients are real sockets on 127.0.0.1.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import http, { type IncomingHttpHeaders, type Server } from 'node:http';
import http2 from 'node:http2';
import net, { type AddressInfo, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { UpgradeProxy } from '../../src/proxy/index.js';
import type { RunningProxymity } from '../../src/proxymity.js';
import { pollUntil } from '../helpers/poll-until.js';
import { startProxy } from '../helpers/proxy.js';

interface Seen {
  via: 'h1' | 'upgrade' | 'h2';
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

/** Reads exactly `n` body bytes from `head`, then from the socket; resolves with them and what followed. */
function readExactly(socket: Socket, head: Buffer, n: number): Promise<{ body: Buffer; rest: Buffer }> {
  return new Promise((resolve) => {
    let got = head;
    const check = () => {
      if (got.length < n) return false;
      socket.removeListener('data', onData);
      socket.pause();
      resolve({ body: got.subarray(0, n), rest: got.subarray(n) });
      return true;
    };
    const onData = (c: Buffer) => {
      got = Buffer.concat([got, c]);
      check();
    };
    if (!check()) socket.on('data', onData);
  });
}

/**
 * An HTTP/1.1 backend that switches to h2c when asked (RFC 7540 §3.2) and then serves HTTP/2 on
 * the same connection, and that switches to a toy "echo" protocol after reading the request's
 * body. Records every request it serves, by any of the three ways.
 */
class H2cBackend {
  readonly seen: Seen[] = [];
  private readonly sockets = new Set<Socket>();
  private readonly h2 = http2.createServer();
  readonly server: Server;

  constructor() {
    this.h2.on('stream', (stream, headers) => {
      this.seen.push({ via: 'h2', method: String(headers[':method']), path: String(headers[':path']), headers: headers as IncomingHttpHeaders, body: Buffer.alloc(0) });
      stream.respond({ ':status': 200 });
      stream.end(`h2 served ${headers[':path']}\n`);
    });
    this.server = http.createServer((req, res) => {
      const parts: Buffer[] = [];
      req.on('data', (c: Buffer) => parts.push(c));
      req.on('end', () => {
        const body = Buffer.concat(parts);
        this.seen.push({ via: 'h1', method: req.method as string, path: req.url as string, headers: req.headers, body });
        res.end(`h1 served ${req.method} ${req.url} body=${body.length}\n`);
      });
    });
    this.server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    this.server.on('upgrade', (req, socket: Socket, head: Buffer) => {
      socket.on('error', () => undefined);
      const tokens = String(req.headers.upgrade).toLowerCase().split(/\s*,\s*/);
      const n = Number(req.headers['content-length'] ?? 0);
      void readExactly(socket, head, n).then(({ body, rest }) => {
        this.seen.push({ via: 'upgrade', method: req.method as string, path: req.url as string, headers: req.headers, body });
        if (tokens.includes('h2c')) {
          socket.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n');
          if (rest.length > 0) socket.unshift(rest);
          socket.resume();
          this.h2.emit('connection', socket);
        } else if (tokens.includes('echo')) {
          socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\nx-body-sha: ${sha(body)}\r\n\r\n`);
          if (rest.length > 0) socket.write(rest);
          socket.on('data', (c: Buffer) => socket.write(c));
          socket.on('end', () => socket.end());
          socket.resume();
        } else socket.end('HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
      });
    });
  }

  async listen(): Promise<this> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    return this;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((r) => this.server.close(r));
  }
}

interface Answer {
  status: number;
  head: string;
  headers: Record<string, string>;
  body: Buffer;
}

function parseAnswer(all: Buffer): Answer {
  const end = all.indexOf('\r\n\r\n');
  assert.ok(end > 0, `no complete response head in ${JSON.stringify(all.toString('latin1').slice(0, 200))}`);
  const head = all.subarray(0, end).toString('latin1');
  const headers: Record<string, string> = {};
  for (const line of head.split('\r\n').slice(1)) {
    const i = line.indexOf(':');
    headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
  }
  return { status: Number(head.split(' ')[1]), head, headers, body: all.subarray(end + 4) };
}

/**
 * Writes `bytes` on a new connection and reads until the proxy ends it (then closes too), or
 * until a 101 head arrives (a tunnel, which these tests never expect to stay open).
 */
function exchange(port: number, bytes: string | Buffer, afterFirstByte?: string | Buffer): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    const s = net.connect(port, '127.0.0.1', () => s.write(bytes));
    s.on('data', (c: Buffer) => {
      if (parts.length === 0 && afterFirstByte !== undefined && s.writable) s.write(afterFirstByte);
      parts.push(c);
      const all = Buffer.concat(parts);
      if (all.toString('latin1', 0, 12) === 'HTTP/1.1 101' && all.includes('\r\n\r\n')) {
        s.destroy();
        resolve(parseAnswer(all));
      }
    });
    s.on('error', reject);
    s.on('end', () => {
      s.end();
      try {
        resolve(parseAnswer(Buffer.concat(parts)));
      } catch (err) {
        reject(err);
      }
    });
  });
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

const H2C_UPGRADE = 'Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n';

describe(`${UpgradeProxy.name} (h2c and Upgrade bodies)`, () => {
  let backend: H2cBackend;
  let sut: RunningProxymity;
  let port: number;
  let baseline: number;

  const connections = () => new Promise<number>((resolve) => (sut.server as Server).getConnections((_e, n) => resolve(n)));
  /** After a test: no tunnel, no backend slot and no client connection left behind. */
  const backToBaseline = async () => {
    const upgrades = sut.app.get(UpgradeProxy);
    await pollUntil(() => upgrades.tunnels.size, (n) => n === 0, { what: 'tunnels closed' });
    await pollUntil(connections, (n) => n <= baseline, { what: `proxy connections back to ${baseline}` });
    for (const b of upgrades.registry.all) assert.equal(b.inFlight, 0, `${b.id} still holds a slot`);
  };
  const fresh = () => backend.seen.splice(0);

  before(async () => {
    backend = await new H2cBackend().listen();
    // Only /public/ is routed and the cookie is removed there: what an h2c tunnel used to get past.
    // upstream.timeout is short so that a request the proxy fails to complete shows as 504, fast.
    sut = await startProxy([backend.url], [
      'healthCheck: {enabled: false}',
      'upstream: {timeout: 5s}',
      'routes:',
      '  - match: {path: /public/}',
      '    pool: default',
      '    requestHeaders: {remove: [cookie]}',
      '    maxBodySize: 4MiB',
    ].join('\n'));
    port = Number(new URL(sut.url).port);
    baseline = await connections();
  });
  after(async () => {
    await sut.close();
    await backend.close();
  });

  it('h2c-smuggling: forwards an Upgrade: h2c request as an ordinary one, so HTTP/2 never reaches the backend', async () => {
    fresh();
    // The attacker's client (as in the Bishop Fox tool): upgrade on a routed path, then, if it
    // gets a 101, HTTP/2 requests to paths the proxy does not route.
    const s = net.connect(port, '127.0.0.1', () => s.write(`GET /public/x HTTP/1.1\r\nHost: x\r\nCookie: session=secret\r\n${H2C_UPGRADE}\r\n`));
    s.on('error', () => undefined);
    const parts: Buffer[] = [];
    const smuggled: string[] = [];
    const answered = new Promise<Answer>((resolve) => {
      const onData = (c: Buffer) => {
        parts.push(c);
        const all = Buffer.concat(parts);
        const end = all.indexOf('\r\n\r\n');
        if (end < 0 || !all.subarray(0, 12).equals(Buffer.from('HTTP/1.1 101'))) return;
        s.removeListener('data', onData);
        if (all.length > end + 4) s.unshift(all.subarray(end + 4));
        const session = http2.connect('http://x', { createConnection: () => s });
        session.on('error', () => undefined);
        const r = session.request({ ':path': '/admin/secret', cookie: 'session=secret' });
        r.on('data', (d: Buffer) => smuggled.push(d.toString()));
        r.on('error', () => undefined);
        r.on('close', () => {
          session.destroy();
          resolve(parseAnswer(all.subarray(0, end + 4)));
        });
        r.end();
      };
      s.on('data', onData);
      s.on('end', () => {
        s.end();
        resolve(parseAnswer(Buffer.concat(parts)));
      });
    });
    const answer = await answered;
    assert.deepEqual(smuggled, [], 'an HTTP/2 request reached the backend through the proxy');
    assert.equal(answer.status, 200, answer.head);
    assert.equal(answer.body.toString(), 'h1 served GET /public/x body=0\n');
    assert.equal(answer.headers.connection, 'close');
    const seen = fresh();
    assert.deepEqual(seen.map((x) => `${x.via} ${x.method} ${x.path}`), ['h1 GET /public/x']);
    const h = seen[0].headers;
    assert.equal(h.upgrade, undefined);
    assert.equal(h['http2-settings'], undefined);
    assert.doesNotMatch(String(h.connection), /upgrade|http2-settings/i);
    assert.equal(h.cookie, undefined, 'the route\'s header rules applied');
    assert.equal(h['x-forwarded-for'], '127.0.0.1');
    await backToBaseline();
  });

  it('h2c-smuggling: never forwards what the client writes after an h2c upgrade request', async () => {
    for (const upgrade of ['h2c', ' H2C ', 'h2c, h2', 'H2C/1.0,h2c']) {
      fresh();
      const req = `GET /public/y HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: ${upgrade}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n`;
      // A second request pipelined right behind it, and another sent once the answer starts.
      const pipelined = 'GET /admin/secret HTTP/1.1\r\nHost: x\r\n\r\n';
      const answer = await exchange(port, req + pipelined, 'GET /admin/other HTTP/1.1\r\nHost: x\r\n\r\n');
      assert.equal(answer.status, 200, `${upgrade}: ${answer.head}`);
      assert.equal(answer.body.toString(), 'h1 served GET /public/y body=0\n');
      const seen = fresh();
      assert.deepEqual(seen.map((x) => `${x.via} ${x.method} ${x.path}`), ['h1 GET /public/y'], upgrade);
      assert.equal(seen[0].headers.upgrade, undefined);
      assert.equal(seen[0].headers['http2-settings'], undefined);
    }
    await backToBaseline();
  });

  it('keeps the other Upgrade tokens and drops only h2c', async () => {
    fresh();
    const answer = await exchange(port, `GET /public/z HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: foo/2, h2c\r\nHTTP2-Settings: AAMA\r\n\r\n`);
    assert.equal(answer.status, 426, answer.head);
    const seen = fresh();
    assert.deepEqual(seen.map((x) => `${x.via} ${x.path}`), ['upgrade /public/z']);
    assert.equal(seen[0].headers.upgrade, 'foo/2');
    assert.equal(seen[0].headers.connection, 'upgrade');
    assert.equal(seen[0].headers['http2-settings'], undefined);
    await backToBaseline();
  });

  it('forwards the Content-Length body of an h2c upgrade request whole, and relays the answer at once', async () => {
    // What `curl --http2 -d hello-body` sends: the body arrives with the headers.
    fresh();
    const small = await exchange(port, `POST /public/form HTTP/1.1\r\nHost: x\r\n${H2C_UPGRADE}Content-Length: 10\r\n\r\nhello-body`);
    assert.equal(small.status, 200, small.head);
    assert.equal(small.body.toString(), 'h1 served POST /public/form body=10\n');
    assert.equal(fresh()[0].body.toString(), 'hello-body');
    // 1 MiB: most of it comes after the headers, in many reads, with backpressure; a request
    // pipelined after the body is not forwarded.
    const big = randomBytes(1024 * 1024);
    const answer = await exchange(port, Buffer.concat([Buffer.from(`POST /public/upload HTTP/1.1\r\nHost: x\r\n${H2C_UPGRADE}Content-Length: ${big.length}\r\n\r\n`), big, Buffer.from('GET /admin/secret HTTP/1.1\r\nHost: x\r\n\r\n')]));
    assert.equal(answer.status, 200, answer.head);
    assert.equal(answer.body.toString(), `h1 served POST /public/upload body=${big.length}\n`);
    const seen = fresh();
    assert.deepEqual(seen.map((x) => `${x.via} ${x.method} ${x.path}`), ['h1 POST /public/upload']);
    assert.equal(sha(seen[0].body), sha(big));
    // A client that waits for 100 Continue before its body gets the backend's.
    const parts: Buffer[] = [];
    const s = net.connect(port, '127.0.0.1', () => s.write(`POST /public/expect HTTP/1.1\r\nHost: x\r\n${H2C_UPGRADE}Expect: 100-continue\r\nContent-Length: 5\r\n\r\n`));
    s.on('data', (c: Buffer) => parts.push(c));
    const ended = new Promise((r) => s.on('end', r));
    await pollUntil(() => Buffer.concat(parts).toString('latin1'), (t) => t.startsWith('HTTP/1.1 100 Continue\r\n\r\n'), { what: '100 Continue' });
    s.end('12345');
    await ended;
    const final = parseAnswer(Buffer.concat(parts).subarray('HTTP/1.1 100 Continue\r\n\r\n'.length));
    assert.equal(final.status, 200, final.head);
    assert.equal(fresh()[0].body.toString(), '12345');
    await backToBaseline();
  });

  it('forwards an Upgrade request\'s body before the tunnel opens, and the bytes after it through the tunnel', async () => {
    fresh();
    const body = randomBytes(200_000);
    const parts: Buffer[] = [];
    const s = net.connect(port, '127.0.0.1', () =>
      s.write(Buffer.concat([Buffer.from(`POST /public/echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\nContent-Length: ${body.length}\r\n\r\n`), body, Buffer.from('first bytes')])),
    );
    s.on('data', (c: Buffer) => parts.push(c));
    const tail = ' of the new protocol';
    await pollUntil(() => Buffer.concat(parts).toString('latin1'), (t) => t.includes('\r\n\r\nfirst bytes'), { what: '101 and the first echoed bytes' });
    s.write(tail); // written once the tunnel is open
    const all = await pollUntil(() => Buffer.concat(parts), (b) => b.toString('latin1').endsWith(tail), { what: 'the echo through the tunnel' });
    s.destroy();
    const answer = parseAnswer(all);
    assert.equal(answer.status, 101, answer.head);
    assert.equal(answer.headers['x-body-sha'], sha(body), 'the backend got the body whole');
    assert.equal(answer.body.toString(), `first bytes${tail}`);
    assert.equal(sha(fresh()[0].body), sha(body));
    await backToBaseline();
  });

  it('answers 400 to an Upgrade request with a chunked body, and forwards nothing', async () => {
    for (const upgrade of ['h2c', 'websocket']) {
      fresh();
      const answer = await exchange(port, `POST /public/chunked HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: ${upgrade}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`);
      assert.equal(answer.status, 400, `${upgrade}: ${answer.head}`);
      assert.equal(answer.headers['proxy-status'], 'proxymity; error=upgrade_body_not_supported');
      assert.deepEqual(fresh(), []);
    }
    await backToBaseline();
  });

  it('answers 413 to an Upgrade request whose Content-Length passes the route\'s maxBodySize', async () => {
    fresh();
    const answer = await exchange(port, `POST /public/huge HTTP/1.1\r\nHost: x\r\n${H2C_UPGRADE}Content-Length: ${5 * 1024 * 1024}\r\n\r\n`);
    assert.equal(answer.status, 413, answer.head);
    assert.deepEqual(fresh(), []);
    await backToBaseline();
  });
});

describe(`${UpgradeProxy.name} (backends that switch unasked)`, () => {
  it('answers 502 when a backend switches protocols without being asked, or to h2c', async () => {
    // Answers 101 to h2c to anything it gets.
    const rogue = net.createServer((s) => {
      s.on('error', () => undefined);
      s.once('data', () => s.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n'));
    });
    await new Promise<void>((r) => rogue.listen(0, '127.0.0.1', () => r()));
    const sut = await startProxy([`http://127.0.0.1:${(rogue.address() as AddressInfo).port}`], 'healthCheck: {enabled: false}\n');
    const port = Number(new URL(sut.url).port);
    try {
      for (const upgrade of ['h2c', 'websocket']) {
        const answer = await exchange(port, `GET /x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: ${upgrade}\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`);
        assert.equal(answer.status, 502, `${upgrade}: ${answer.head}`);
        assert.equal(answer.headers['proxy-status'], 'proxymity; error=http_protocol_error');
      }
      await pollUntil(() => sut.app.get(UpgradeProxy).tunnels.size, (n) => n === 0, { what: 'tunnels closed' });
    } finally {
      await sut.close();
      await new Promise((r) => rogue.close(r));
    }
  });
});
