/**
 * The proxy's V8 heap adjustments (src/heap-tuning.ts), read from its own heap and GC metrics in
 * real proxy processes:
 * - the young generation stays at its initial size while the proxy boots, and grows again once
 *   it serves traffic;
 * - streamed uploads (h2load, 1 MiB each) do not set off a full collection each (the old
 *   generation keeps headroom).
 * An operator's own V8 flag wins in both cases. Without the headroom V8 ran a full collection every
 * 10-16 MiB in most runs, but not in all: its own factor follows its measured GC speed. So the
 * factor the proxy sets is also read back from its metrics.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { delta, sample, scrape, type Scrape } from '../helpers/metrics.js';
import { pollUntil } from '../helpers/poll-until.js';
import { freePort, waitForPort } from '../helpers/ports.js';
import { DUMMIES, listenUrl, MAIN, spawnNode, writeTempConfig, type Spawned } from '../helpers/processes.js';

const MIB = 1024 * 1024;
const run = promisify(execFile);
const BODY_FILE = join(mkdtempSync(join(tmpdir(), 'proxymity-heap-')), 'body.bin');
writeFileSync(BODY_FILE, Buffer.alloc(MIB, 'u'));
/** V8 starts the young generation at 1 MiB (one semi-space); booting Nest grew it to 16-32 MiB. */
const BOOT_LIMIT = 4 * MIB;
/** 320 uploads of 1 MiB. Without headroom V8 ran a full collection every 10-16 MiB. */
const UPLOAD_SECONDS = 8;
/** Full collections allowed while they stream: one per 40 MiB. */
const MAX_MAJOR_GCS = 4;

describe('V8 heap tuning', () => {
  let config: string;
  const procs: Spawned[] = [];

  before(async () => {
    // The backend in a process of its own, as in production (in this process, sharing it with
    // the test runner and h2load's bookkeeping, it paced uploads so that V8 never fell behind).
    const port = await freePort();
    procs.push(spawnNode(DUMMIES, ['--ports', String(port), '--host', '127.0.0.1']));
    await waitForPort(port);
    config = writeTempConfig(`proxy: {host: 127.0.0.1, port: 0}\nbackend:\n  - url: http://127.0.0.1:${port}\nhealthCheck: {interval: 1h}\n`);
  });
  after(() => {
    for (const p of procs) p.child.kill('SIGKILL');
  });

  async function start(nodeFlags: string[] = []): Promise<{ url: string; admin: string }> {
    const proc = spawnNode(MAIN, ['--config', config], {}, undefined, nodeFlags);
    procs.push(proc);
    const url = (await pollUntil(() => listenUrl(proc.stdout()), (u) => u !== undefined, { timeoutMs: 15_000, what: 'proxy start' })) as string;
    return { url, admin: listenUrl(proc.stdout(), 'admin on ') as string };
  }

  async function newSpace(admin: string): Promise<number> {
    return sample(await scrape(admin), 'nodejs_heap_space_size_total_bytes', { space: 'new' });
  }

  /**
   * Full (major) collections while h2load streams 1 MiB uploads through the proxy at a fixed
   * rate (8 clients × 5 per second, for UPLOAD_SECONDS). V8 sets the old generation's limit from
   * the live size at a full collection and uses a larger initial one until then, so a first
   * round runs until one has happened (bounded).
   */
  async function majorGcsDuringUploads(url: string, admin: string): Promise<{ majors: number; uploads: number }> {
    const majors = (from: Scrape, to: Scrape) => delta(from, to, 'nodejs_gc_duration_seconds_count', { kind: 'major' });
    const booted = await scrape(admin);
    for (let round = 0; round < 5 && majors(booted, await scrape(admin)) === 0; round++) await h2loadUploads(url, 1);
    const before = await scrape(admin);
    const uploads = await h2loadUploads(url, UPLOAD_SECONDS);
    return { majors: majors(before, await scrape(admin)), uploads };
  }

  it('boots with the young generation at its initial size, and lets it grow under traffic', async () => {
    const { url, admin } = await start();
    const atBoot = await newSpace(admin);
    assert.ok(atBoot <= BOOT_LIMIT, `young generation after boot: ${(atBoot / MIB).toFixed(1)} MiB`);

    // Growth is back on once the proxy listens: steady traffic makes V8 grow it (bounded: 20 s).
    const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
    const deadline = Date.now() + 20_000;
    let now = atBoot;
    let sent = 0;
    try {
      while (now <= atBoot && Date.now() < deadline) {
        await Promise.all(Array.from({ length: 256 }, () => get(`${url}/`, agent)));
        sent += 256;
        now = await newSpace(admin);
      }
    } finally {
      agent.destroy();
    }
    assert.ok(now > atBoot, `young generation still ${(now / MIB).toFixed(1)} MiB after ${sent} requests`);
  });

  it('leaves the young generation to V8 when the operator sized it', async () => {
    const { admin } = await start(['--semi-space-growth-factor=2']);
    const atBoot = await newSpace(admin);
    assert.ok(atBoot > BOOT_LIMIT, `young generation after boot: ${(atBoot / MIB).toFixed(1)} MiB`);
  });

  it('streams uploads without a full collection each', async () => {
    const { url, admin } = await start();
    const { majors, uploads } = await majorGcsDuringUploads(url, admin);
    assert.ok(uploads >= 100, `only ${uploads} uploads completed`);
    assert.ok(majors <= MAX_MAJOR_GCS, `${majors} full collections during ${uploads} uploads of 1 MiB`);
  });

  it('sets V8\'s growing factor for the live heap, and leaves it to an operator who set it', async () => {
    const tuned = await start();
    const percent = sample(await scrape(tuned.admin), 'proxymity_heap_growing_percent');
    // About 25 MiB live: 64 MiB of headroom needs well over +100%; never more than +400%.
    assert.ok(percent >= 100 && percent <= 400, `growing percent ${percent}`);
    const own = await start(['--heap-growing-percent=0']);
    assert.equal(sample(await scrape(own.admin), 'proxymity_heap_growing_percent'), -1);
  });
});

function get(url: string, agent: http.Agent): Promise<void> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent }, (res) => {
        res.resume();
        res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`status ${res.statusCode}`))));
      })
      .on('error', reject);
  });
}

/**
 * h2load (Debian's nghttp2-client; .ci/run installs it) sending 1 MiB PUTs for `seconds` at a
 * fixed rate: it writes each body in small pieces and keeps going at its pace, as a load
 * generator does. Returns how many completed with a 2xx.
 */
async function h2loadUploads(url: string, seconds: number): Promise<number> {
  const { stdout } = await run('h2load', ['--h1', '-c', '8', '--rps', '5', '-D', String(seconds), '-d', BODY_FILE, '-H', 'content-type: application/octet-stream', '-m', '1', `${url}/upload`]);
  const ok = /status codes: (\d+) 2xx/.exec(stdout);
  if (ok === null) throw new Error(`unexpected h2load output:\n${stdout}`);
  return Number(ok[1]);
}
