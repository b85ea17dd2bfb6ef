/**
 * The benchmark's baseline: the proxy a Node developer writes in ten lines with http-proxy and
 * a keep-alive agent per target (without an agent http-proxy sends `connection: close` and
 * throughput halves). Round-robin, no health checks, no header policy.
 *
 *   node build/test/bench/bare-http-proxy.js --port 0 --targets http://127.0.0.1:1,http://127.0.0.1:2
 *
 * The bench starts it with the same node flags as Proxymity (START_FLAGS).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import httpProxy from 'http-proxy';

const arg = (name: string) => process.argv[process.argv.indexOf(name) + 1];
const targets = arg('--targets').split(',');
const agents = targets.map(() => new http.Agent({ keepAlive: true, maxSockets: 512 }));
const proxy = httpProxy.createProxyServer({});
proxy.on('error', (_err, _req, res) => {
  const r = res as http.ServerResponse;
  if (!r.headersSent && typeof r.writeHead === 'function') r.writeHead(502).end();
  else r.destroy();
});
let next = 0;
const server = http.createServer((req, res) => {
  const i = next++ % targets.length;
  proxy.web(req, res, { target: targets[i], agent: agents[i] });
});
server.keepAliveTimeout = 75_000;
server.listen(Number(arg('--port') ?? 0), '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${(server.address() as AddressInfo).port}`);
});
process.on('SIGTERM', () => process.exit(0));
