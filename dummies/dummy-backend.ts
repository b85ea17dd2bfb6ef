/**
 * A test backend: answers every path with JSON naming itself and echoing the request, plus a
 * few endpoints and live switches to misbehave on purpose. Used by `npm run dummies`, the demo,
 * the end-to-end tests (test/fixtures/backend-server.ts) and the benchmark.
 *
 *   GET  /health                 200 {"status":"ok"} (503 after POST /_dummy/unhealthy)
 *   ANY  /delay/{ms}             answers after ms milliseconds
 *   ANY  /status/{code}          answers with that status
 *   GET  /bytes/{n}              n bytes of body (streamed, chunked 64 KiB)
 *   GET  /trailers               a chunked body followed by an `x-checksum` trailer
 *   GET  /drip/{n}/{ms}          n chunks of "drip\n", one every ms milliseconds
 *   POST /_dummy/unhealthy       /health answers 503 from now on
 *   POST /_dummy/healthy         /health answers 200 again
 *   ANY  anything else           200 JSON: backend, method, path, headers, bodyBytes, bodySha256
 *   WS   /ws (any path under it) WebSocket echo: every message comes back as sent (text or
 *                                binary); the first offered subprotocol is accepted;
 *                                permessage-deflate is offered; the handshake answer carries
 *                                `x-backend: NAME`
 */
import { createHash } from 'node:crypto';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer } from 'ws';

/** How the next WebSocket handshake misbehaves: reset the connection, or refuse with 403. */
export type UpgradeFault = 'reset' | 'refuse';

export interface DummyBackendOptions {
  name: string;
  port?: number;
  host?: string;
}

export type Misbehaviour = 'reset' | 'hang' | 'drop-mid-body' | 'garbage' | 'answer-early' | 'switch-protocols' | 'switch-no-upgrade';

const CHUNK = Buffer.alloc(64 * 1024, 'x');

export class DummyBackend {
  readonly name: string;
  readonly server: http.Server;
  /** Requests received (all paths, health probes included). */
  requests = 0;
  /** Requests received, health probes excluded. */
  proxied = 0;
  /** "METHOD path" of every non-health request, in order (for framing tests). */
  readonly seen: string[] = [];
  healthy = true;
  /** Method and headers of the last /health request (what the proxy's probes send). */
  lastHealthRequest: { method: string; headers: IncomingMessage['headers'] } | undefined = undefined;
  /** Latency of /health answers (ms), to make probes time out. */
  healthDelayMs = 0;
  /** Extra latency for every non-health request (ms). */
  delayMs = 0;
  /** Status for every non-health request, when set. */
  forcedStatus: number | undefined = undefined;
  private nextFaults: Misbehaviour[] = [];
  private alwaysFault: Misbehaviour | undefined = undefined;
  private readonly sockets = new Set<Socket>();
  /** The WebSocket echo server (`/ws`); its `clients` are the open WebSockets. */
  readonly wss: WebSocketServer;
  private nextUpgradeFaults: UpgradeFault[] = [];

  constructor(opts: DummyBackendOptions) {
    this.name = opts.name;
    this.server = http.createServer((req, res) => this.handle(req, res));
    this.wss = new WebSocketServer({ noServer: true, perMessageDeflate: true, maxPayload: 64 * 1024 * 1024, handleProtocols: (protocols) => protocols.values().next().value ?? false });
    this.wss.on('headers', (headers) => headers.push(`x-backend: ${this.name}`));
    this.wss.on('connection', (ws) => {
      ws.on('error', () => ws.terminate());
      ws.on('message', (data, isBinary) => ws.send(data as Buffer, { binary: isBinary }));
    });
    this.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.handleUpgrade(req, socket, head));
    this.server.keepAliveTimeout = 5000;
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
  }

  async listen(port = 0, host = '127.0.0.1'): Promise<this> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    return this;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  get url(): string {
    const a = this.server.address() as AddressInfo;
    return a.family === 'IPv6' ? `http://[${a.address}]:${a.port}` : `http://${a.address}:${a.port}`;
  }

  /** The next non-health request misbehaves this way (queued, one each). */
  failNext(kind: Misbehaviour): void {
    this.nextFaults.push(kind);
  }

  /** The next WebSocket handshake misbehaves this way (queued, one each). */
  failNextUpgrade(kind: UpgradeFault): void {
    this.nextUpgradeFaults.push(kind);
  }

  private handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => socket.destroy());
    this.requests++;
    const path = (req.url ?? '/').split('?')[0];
    const fault = this.nextUpgradeFaults.shift();
    if (fault === 'reset') return void (socket as Socket).resetAndDestroy();
    if (fault === 'refuse' || !(path === '/ws' || path.startsWith('/ws/'))) {
      socket.end(`HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 10\r\nx-backend: ${this.name}\r\nconnection: close\r\n\r\nforbidden\n`);
      return;
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this.wss.emit('connection', ws, req));
  }

  /** Every non-health request misbehaves this way until `behave()`. */
  failAlways(kind: Misbehaviour): void {
    this.alwaysFault = kind;
  }

  behave(): void {
    this.alwaysFault = undefined;
    this.nextFaults = [];
    this.delayMs = 0;
    this.healthDelayMs = 0;
    this.forcedStatus = undefined;
    this.healthy = true;
    this.nextUpgradeFaults = [];
  }

  /** Number of open client connections (to check for leaks). */
  get openConnections(): number {
    return this.sockets.size;
  }

  async close(): Promise<void> {
    for (const ws of this.wss.clients) ws.terminate();
    this.server.closeAllConnections();
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    this.requests++;
    const url = req.url ?? '/';
    const path = url.split('?')[0];
    if (path === '/health') {
      this.lastHealthRequest = { method: req.method ?? '', headers: req.headers };
      req.resume();
      const answer = () => this.json(res, this.healthy ? 200 : 503, { status: this.healthy ? 'ok' : 'unhealthy', backend: this.name });
      if (this.healthDelayMs > 0) setTimeout(answer, this.healthDelayMs);
      else answer();
      return;
    }
    if (req.method === 'POST' && (path === '/_dummy/unhealthy' || path === '/_dummy/healthy')) {
      this.healthy = path === '/_dummy/healthy';
      req.resume();
      return this.json(res, 200, { backend: this.name, healthy: this.healthy });
    }
    this.proxied++;
    this.seen.push(`${req.method} ${url}`);
    const fault = this.nextFaults.shift() ?? this.alwaysFault;
    if (fault === 'reset') {
      req.socket.resetAndDestroy();
      return;
    }
    if (fault === 'hang') {
      req.resume();
      return; // never answers
    }
    if (fault === 'answer-early') {
      // Like a server refusing an upload: answers at once, before reading the body, then
      // reads and discards the rest.
      res.writeHead(413, { 'content-type': 'text/plain', 'content-length': '9' });
      res.end('too big\r\n');
      req.resume();
      return;
    }
    if (fault === 'garbage') {
      req.resume();
      req.socket.end('this is not HTTP\r\n\r\n');
      return;
    }
    if (fault === 'switch-protocols' || fault === 'switch-no-upgrade') {
      // 101 to a request that asked for no upgrade, and the connection kept open.
      req.resume();
      req.socket.write(fault === 'switch-protocols' ? 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n' : 'HTTP/1.1 101 Switching Protocols\r\n\r\n');
      return;
    }
    const delay = this.delayMatch(path) ?? this.delayMs;
    const respond = () => {
      if (fault === 'drop-mid-body') return this.dropMidBody(res);
      const statusMatch = /^\/status\/(\d{3})$/.exec(path);
      const bytesMatch = /^\/bytes\/(\d+)$/.exec(path);
      if (bytesMatch) return this.bytes(req, res, Number(bytesMatch[1]));
      if (path === '/trailers') return this.trailers(req, res);
      const drip = /^\/drip\/(\d+)\/(\d+)$/.exec(path);
      if (drip) return this.drip(req, res, Number(drip[1]), Number(drip[2]));
      this.echo(req, res, statusMatch ? Number(statusMatch[1]) : (this.forcedStatus ?? 200));
    };
    if (delay > 0) setTimeout(respond, delay);
    else respond();
  }

  private delayMatch(path: string): number | undefined {
    const m = /^\/delay\/(\d+)$/.exec(path);
    return m ? Number(m[1]) : undefined;
  }

  private echo(req: IncomingMessage, res: ServerResponse, status: number): void {
    const hash = createHash('sha256');
    let bytes = 0;
    req.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      hash.update(chunk);
    });
    req.on('end', () => {
      this.json(res, status, {
        backend: this.name,
        method: req.method,
        path: req.url,
        httpVersion: req.httpVersion,
        headers: req.headers,
        bodyBytes: bytes,
        bodySha256: hash.digest('hex'),
        trailers: req.trailers,
      });
    });
  }

  private bytes(req: IncomingMessage, res: ServerResponse, n: number): void {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(n), 'x-backend': this.name });
    let left = n;
    const pump = () => {
      while (left > 0) {
        const chunk = left >= CHUNK.length ? CHUNK : CHUNK.subarray(0, left);
        left -= chunk.length;
        if (!res.write(chunk)) {
          res.once('drain', pump);
          return;
        }
      }
      res.end();
    };
    pump();
  }

  private drip(req: IncomingMessage, res: ServerResponse, n: number, everyMs: number): void {
    req.resume();
    res.writeHead(200, { 'content-type': 'text/plain', 'x-backend': this.name });
    res.flushHeaders(); // headers now, body later
    let sent = 0;
    const timer = setInterval(() => {
      if (res.destroyed) return clearInterval(timer);
      res.write('drip\n');
      if (++sent >= n) {
        clearInterval(timer);
        res.end();
      }
    }, everyMs);
  }

  private trailers(req: IncomingMessage, res: ServerResponse): void {
    req.resume();
    res.writeHead(200, { 'content-type': 'text/plain', trailer: 'x-checksum', 'x-backend': this.name });
    res.write('part one, ');
    res.write('part two');
    res.addTrailers({ 'x-checksum': 'abc123' });
    res.end();
  }

  private dropMidBody(res: ServerResponse): void {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(CHUNK.length * 4), 'x-backend': this.name });
    res.write(CHUNK, () => setTimeout(() => res.socket?.destroy(), 20));
  }

  private json(res: ServerResponse, status: number, body: unknown): void {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'x-backend': this.name });
    res.end(text);
  }
}
