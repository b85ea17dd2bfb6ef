/**
 * A reference point, not a baseline the targets are measured against: the same ten-line proxy
 * as bare-http-proxy.ts, with undici's Pool as the upstream client in place of http-proxy and
 * Node's http client. Node's http server on the client side, round-robin, no health checks, no
 * header policy beyond dropping the hop-by-hop fields undici refuses to send. It shows what the
 * upstream client alone costs (docs/benchmarks.md, "The upstream client"). `npm run bench --
 * --undici` adds it.
 *
 *   node build/test/bench/bare-undici.js --port 0 --targets http://127.0.0.1:1,http://127.0.0.1:2
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool, type Dispatcher } from 'undici';

const arg = (name: string) => process.argv[process.argv.indexOf(name) + 1];
const pools = arg('--targets')
  .split(',')
  .map((t) => new Pool(t, { connections: 512, keepAliveTimeout: 60_000 }));
// undici throws on these in a request; as hop-by-hop fields they are not forwarded anyway.
const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'expect']);
let next = 0;

const server = http.createServer((req, res) => {
  const headers: string[] = [];
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) if (!HOP.has(raw[i].toLowerCase())) headers.push(raw[i], raw[i + 1]);
  const body = req.headers['content-length'] === undefined && req.headers['transfer-encoding'] === undefined ? null : req;
  let resume: (() => void) | undefined;
  let abort: ((err?: Error) => void) | undefined;
  // A client that leaves mid-response: the upstream request is aborted, not left paused.
  res.on('close', () => {
    if (!res.writableFinished) abort?.();
  });
  // undici's dispatch handler, which its client calls directly (undici 6, which keeps the
  // project's Node range): raw header names and values as Buffers.
  const handler = {
    onConnect(abortFn: (err?: Error) => void) {
      abort = abortFn;
    },
    onHeaders(status: number, raw: Buffer[], resumeFn: () => void, statusText: string) {
      const out: string[] = [];
      for (let i = 0; i < raw.length; i += 2) {
        const name = raw[i].toString('latin1');
        if (!HOP.has(name.toLowerCase())) out.push(name, raw[i + 1].toString('latin1'));
      }
      res.writeHead(status, statusText, out);
      resume = resumeFn;
      return true;
    },
    onData(chunk: Buffer) {
      if (res.write(chunk)) return true;
      res.once('drain', resume as () => void);
      return false;
    },
    onComplete() {
      res.end();
    },
    onError(err: Error) {
      if (!res.headersSent) res.writeHead(502).end(`502 ${err.message}\n`);
      else res.destroy();
    },
  } as unknown as Dispatcher.DispatchHandlers;
  pools[next++ % pools.length].dispatch({ path: req.url as string, method: req.method as Dispatcher.HttpMethod, headers, body }, handler);
});
server.keepAliveTimeout = 75_000;
server.listen(Number(arg('--port') ?? 0), '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${(server.address() as AddressInfo).port}`);
});
process.on('SIGTERM', () => process.exit(0));
