/**
 * The bench's two bare proxies, run as the bench runs them, against a real origin on loopback:
 * a baseline that stopped forwarding (or forwarded wrongly) would turn every ratio in the bench
 * into nonsense without failing it.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { request } from '../helpers/http-client.js';
import { pollUntil } from '../helpers/poll-until.js';
import { listenUrl, spawnNode, type Spawned } from '../helpers/processes.js';
import { START_FLAGS } from '../../src/heap-tuning.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const K16 = 'k'.repeat(16 * 1024);

for (const script of ['bare-http-proxy.js', 'bare-undici.js']) {
  describe(`bench baseline ${script}`, () => {
    let origins: http.Server[] = [];
    let proxy: Spawned;
    let url: string;

    before(async () => {
      origins = [1, 2].map((n) =>
        http.createServer((req, res) => {
          let got = 0;
          req.on('data', (c: Buffer) => (got += c.length));
          req.on('end', () => {
            const body = req.url === '/16k' ? K16 : `origin ${n} ${req.method} ${req.url} body=${got}\n`;
            res.writeHead(201, { 'x-origin': String(n), 'content-length': String(Buffer.byteLength(body)) });
            res.end(body);
          });
        }),
      );
      await Promise.all(origins.map((o) => new Promise<void>((r) => o.listen(0, '127.0.0.1', r))));
      const targets = origins.map((o) => `http://127.0.0.1:${(o.address() as AddressInfo).port}`).join(',');
      proxy = spawnNode(join(HERE, script), ['--port', '0', '--targets', targets], {}, undefined, START_FLAGS);
      url = await pollUntil(() => listenUrl(proxy.stdout()), (u) => u !== undefined, { what: `${script} listening` }) as string;
    });

    after(async () => {
      proxy.child.kill('SIGTERM');
      await proxy.exited;
      await Promise.all(origins.map((o) => new Promise((r) => o.close(r))));
    });

    it('forwards GETs round-robin with the status, headers and body the origin sent', async () => {
      const a = await request(`${url}/a?q=1`);
      const b = await request(`${url}/a?q=1`);
      assert.deepEqual([a.status, b.status], [201, 201]);
      assert.deepEqual([a.headers['x-origin'], b.headers['x-origin']].sort(), ['1', '2']);
      assert.match(a.body, /^origin \d GET \/a\?q=1 body=0\n$/);
    });

    it('forwards a request body, and a 16 KiB response whole', async () => {
      const post = await request(`${url}/upload`, { method: 'POST', body: 'x'.repeat(100_000) });
      assert.equal(post.status, 201);
      assert.match(post.body, /POST \/upload body=100000\n$/);
      const big = await request(`${url}/16k`);
      assert.equal(big.body, K16);
    });
  });
}
