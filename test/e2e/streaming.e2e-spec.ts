/**
 * 1 GiB up and 1 GiB down through the proxy process, checked end to end by SHA-256, while the
 * proxy's resident memory is sampled: a buffering proxy would grow by the body size.
 * Real: proxy process, backend, sockets.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import { closeAll, type DummyBackend, startBackends } from '../fixtures/backend-server.js';
import { pollUntil } from '../helpers/poll-until.js';
import { listenUrl, MAIN, memoryMiB, spawnNode, writeTempConfig, type Spawned } from '../helpers/processes.js';

const GIB = 1024 * 1024 * 1024;
const BLOCK = randomBytes(1024 * 1024);
/** Growth allowed while 1 GiB streams through; buffering would need ~1024 MiB. */
const MAX_GROWTH_MIB = 48;

describe('streaming large bodies', () => {
  let backends: DummyBackend[];
  let proc: Spawned;
  let url: string;

  before(async () => {
    backends = await startBackends(1);
    const file = writeTempConfig(`proxy: {host: 127.0.0.1, port: 0}\nbackend:\n  - url: ${backends[0].url}\nhealthCheck: {interval: 1h}\n`);
    proc = spawnNode(MAIN, ['--config', file]);
    url = (await pollUntil(() => listenUrl(proc.stdout()), (u) => u !== undefined, { timeoutMs: 10_000, what: 'proxy start' })) as string;
    // Warm up so that lazily built state is not counted as growth.
    for (let i = 0; i < 20; i++) await upload(url, 1024 * 1024);
  });
  after(async () => {
    proc.child.kill('SIGKILL');
    await closeAll(backends);
  });

  it('streams a 1 GiB upload with the body intact and memory flat', async () => {
    const mem = await sampleWhile(proc.child.pid!, () => upload(url, GIB));
    const { sent, echo } = mem.result;
    assert.equal(echo.bodyBytes, GIB);
    assert.equal(echo.bodySha256, sent);
    assert.ok(mem.growthMiB < MAX_GROWTH_MIB, `proxy RSS grew by ${mem.growthMiB.toFixed(1)} MiB`);
  });

  it('streams a 1 GiB download with the body intact and memory flat', async () => {
    const mem = await sampleWhile(proc.child.pid!, () => download(`${url}/bytes/${GIB}`));
    assert.equal(mem.result.bytes, GIB);
    assert.equal(mem.result.sha, expectedDownloadSha(GIB));
    assert.ok(mem.growthMiB < MAX_GROWTH_MIB, `proxy RSS grew by ${mem.growthMiB.toFixed(1)} MiB`);
  });

  it('holds the backend back while a client stops reading, instead of buffering the body', async () => {
    const size = 256 * 1024 * 1024;
    const base = (await memoryMiB(proc.child.pid!)).rss;
    const { res, req } = await new Promise<{ res: http.IncomingMessage; req: http.ClientRequest }>((resolve, reject) => {
      const req = http.get(`${url}/bytes/${size}`, { agent: false }, (res) => resolve({ res, req }));
      req.on('error', reject);
    });
    // Not reading: only the socket buffers on either side of the proxy may fill.
    res.pause();
    let max = base;
    for (let i = 0; i < 30; i++) {
      await new Promise((r) => setTimeout(r, 50));
      max = Math.max(max, (await memoryMiB(proc.child.pid!)).rss);
    }
    const stalledGrowth = max - base;
    const hash = createHash('sha256');
    let bytes = 0;
    await new Promise<void>((resolve, reject) => {
      res.on('data', (c: Buffer) => {
        bytes += c.length;
        hash.update(c);
      });
      res.on('end', resolve);
      res.on('error', reject);
      req.on('error', reject);
      res.resume();
    });
    assert.ok(stalledGrowth < MAX_GROWTH_MIB, `proxy RSS grew by ${stalledGrowth.toFixed(1)} MiB while the client was not reading`);
    assert.equal(bytes, size);
    assert.equal(hash.digest('hex'), expectedDownloadSha(size));
  });
});

async function sampleWhile<T>(pid: number, work: () => Promise<T>): Promise<{ result: T; growthMiB: number }> {
  const base = (await memoryMiB(pid)).rss;
  let max = base;
  let running = true;
  const sampler = (async () => {
    while (running) {
      max = Math.max(max, (await memoryMiB(pid)).rss);
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  try {
    const result = await work();
    return { result, growthMiB: max - base };
  } finally {
    running = false;
    await sampler;
  }
}

function upload(url: string, size: number): Promise<{ sent: string; echo: { bodyBytes: number; bodySha256: string } }> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    const req = http.request(`${url}/upload`, { method: 'PUT', agent: false, headers: { 'content-length': String(size), 'content-type': 'application/octet-stream' } }, (res) => {
      let text = '';
      res.on('data', (c) => (text += c));
      res.on('end', () => (res.statusCode === 200 ? resolve({ sent: hash.digest('hex'), echo: JSON.parse(text) }) : reject(new Error(`status ${res.statusCode}: ${text}`))));
    });
    req.on('error', reject);
    let left = size;
    const pump = () => {
      while (left > 0) {
        const chunk = left >= BLOCK.length ? BLOCK : BLOCK.subarray(0, left);
        left -= chunk.length;
        hash.update(chunk);
        if (!req.write(chunk)) return void req.once('drain', pump);
      }
      req.end();
    };
    pump();
  });
}

function download(url: string): Promise<{ bytes: number; sha: string }> {
  return new Promise((resolve, reject) => {
    http.get(url, { agent: false }, (res) => {
      const hash = createHash('sha256');
      let bytes = 0;
      res.on('data', (c: Buffer) => {
        bytes += c.length;
        hash.update(c);
      });
      res.on('end', () => resolve({ bytes, sha: hash.digest('hex') }));
      res.on('error', reject);
    }).on('error', reject);
  });
}

/** The dummy backend's /bytes/N body is N bytes of "x". */
function expectedDownloadSha(n: number): string {
  const hash = createHash('sha256');
  const block = Buffer.alloc(1024 * 1024, 'x');
  for (let left = n; left > 0; left -= block.length) hash.update(left >= block.length ? block : block.subarray(0, left));
  return hash.digest('hex');
}
