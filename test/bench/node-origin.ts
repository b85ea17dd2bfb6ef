/**
 * Fallback benchmark origin when nginx is not installed: the cheapest Node server that answers
 * the benchmark's paths. `node build/test/bench/node-origin.js --ports 0,0,0`
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';

const OK = Buffer.from('ok\n');
const K16 = Buffer.alloc(16 * 1024, 'k');
const BLOCK = Buffer.alloc(1024 * 1024, 'b');

function handler(req: http.IncomingMessage, res: http.ServerResponse): void {
  const url = req.url ?? '/';
  if (url.startsWith('/200m')) {
    res.writeHead(200, { 'content-length': String(200 * BLOCK.length), 'content-type': 'application/octet-stream' });
    let left = 200;
    const pump = () => {
      while (left > 0) {
        left--;
        if (!res.write(BLOCK)) return void res.once('drain', pump);
      }
      res.end();
    };
    return pump();
  }
  req.resume();
  req.on('end', () => {
    const body = url.startsWith('/16k') || url.startsWith('/c/16k') ? K16 : OK;
    // /c/...: the same bodies, cacheable (the --cache scenarios).
    if (url.startsWith('/c/')) res.writeHead(200, { 'content-length': String(body.length), 'content-type': 'text/plain', 'cache-control': 'max-age=3600' });
    else res.writeHead(200, { 'content-length': String(body.length), 'content-type': 'text/plain' });
    res.end(body);
  });
}

const ports = (process.argv[process.argv.indexOf('--ports') + 1] ?? '0,0,0').split(',').map(Number);
for (const port of ports) {
  const server = http.createServer(handler);
  server.keepAliveTimeout = 75_000;
  server.listen(port, '127.0.0.1', () => console.log(`origin listening on http://127.0.0.1:${(server.address() as AddressInfo).port}`));
}
process.on('SIGTERM', () => process.exit(0));
