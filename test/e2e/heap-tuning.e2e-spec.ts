/**
 * The proxy's V8 heap adjustments (src/heap-tuning.ts), in real proxy processes:
 * - the young generation stays at its initial size while the proxy boots, and grows again once
 *   it serves traffic (read from the proxy's heap metrics);
 * - every full collection after the proxy listens leaves V8's old-generation limit at least
 *   64 MiB above the live size (read from V8's own --trace-gc-verbose lines), so 1 MiB uploads
 *   (h2load POSTs) stream without setting off one full collection after another.
 * - scavenges run on the main thread alone (read from V8's --trace-gc-nvp lines).
 * - `npm start` and `nest start` pass START_FLAGS to node.
 * An operator's own V8 flag wins in every case.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { delta, sample, scrape, type Scrape } from '../helpers/metrics.js';
import { pollUntil } from '../helpers/poll-until.js';
import { freePort, waitForPort } from '../helpers/ports.js';
import { START_FLAGS } from '../../src/heap-tuning.js';
import { DUMMIES, listenUrl, MAIN, spawnNode, writeTempConfig, type Spawned } from '../helpers/processes.js';

const MIB = 1024 * 1024;
const run = promisify(execFile);
const BODY_FILE = join(mkdtempSync(join(tmpdir(), 'proxymity-heap-')), 'body.bin');
writeFileSync(BODY_FILE, Buffer.alloc(MIB, 'u'));
/** V8 starts the young generation at 1 MiB (one semi-space); booting Nest grew it to 16-32 MiB. */
const BOOT_LIMIT = 4 * MIB;
/** 320 uploads of 1 MiB. Without the headroom V8 usually ran a full collection every 10-16 MiB. */
const UPLOAD_SECONDS = 8;
const HEADROOM_KB = 64 * 1024;
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
  after(async () => {
    for (const p of procs) p.child.kill('SIGKILL');
    await Promise.all(procs.map((p) => p.exited));
    rmSync(dirname(BODY_FILE), { recursive: true, force: true });
  });

  async function start(nodeFlags: string[] = []): Promise<{ url: string; admin: string; proc: Spawned }> {
    const proc = spawnNode(MAIN, ['--config', config], {}, undefined, nodeFlags);
    procs.push(proc);
    const url = (await pollUntil(() => listenUrl(proc.stdout()), (u) => u !== undefined, { timeoutMs: 15_000, what: 'proxy start' })) as string;
    return { url, admin: listenUrl(proc.stdout(), 'admin on ') as string, proc };
  }

  async function newSpace(admin: string): Promise<number> {
    return sample(await scrape(admin), 'nodejs_heap_space_size_total_bytes', { space: 'new' });
  }

  /**
   * Full (major) collections while h2load streams 1 MiB uploads (POSTs) through the proxy at a fixed
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
    try {
      await pollUntil(
        async () => {
          await Promise.all(Array.from({ length: 256 }, () => get(`${url}/`, agent)));
          return newSpace(admin);
        },
        (now) => now > atBoot,
        { timeoutMs: 20_000, intervalMs: 0, what: 'the young generation to grow under traffic' },
      );
    } finally {
      agent.destroy();
    }
  });

  it('leaves the young generation to V8 when the operator sized it', async () => {
    const { admin } = await start(['--semi-space-growth-factor=2']);
    const atBoot = await newSpace(admin);
    assert.ok(atBoot > BOOT_LIMIT, `young generation after boot: ${(atBoot / MIB).toFixed(1)} MiB`);
  });

  it('keeps 64 MiB between the live size and V8\'s limit at every full collection, so uploads stream without one each', async () => {
    const { url, admin, proc } = await start(['--trace-gc-verbose']);
    const { majors, uploads } = await majorGcsDuringUploads(url, admin);
    const out = proc.stdout();
    // V8's line for each limit it sets: "[HeapController] Limit: old size: 25281 KB, new limit: 80385 KB (3.1)".
    const limits = [...out.slice(out.indexOf('listening on ')).matchAll(/\[HeapController\] Limit: old size: (\d+) KB, new limit: (\d+) KB/g)].map((m) => ({ live: Number(m[1]), limit: Number(m[2]) }));
    assert.ok(limits.length > 0, 'no full collection after the proxy listened');
    for (const { live, limit } of limits) assert.ok(limit - live >= HEADROOM_KB, `limit ${limit} KB for ${live} KB live: ${limit - live} KB of headroom`);
    assert.ok(uploads >= 100, `only ${uploads} uploads completed`);
    assert.ok(majors <= MAX_MAJOR_GCS, `${majors} full collections during ${uploads} uploads of 1 MiB`);
  });

  /**
   * Time V8's helper tasks spent on each scavenge after the proxy listened, from V8's
   * --trace-gc-nvp lines ("... gc=s ... background.scavenge.parallel=1.72 ..."), while 256 GETs
   * at a time go through until at least 20 scavenges were seen (bounded: 20 s).
   */
  async function helperTimesPerScavenge(nodeFlags: string[]): Promise<number[]> {
    const { url, proc } = await start(['--trace-gc-nvp', ...nodeFlags]);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
    const helperTimes = () => {
      const out = proc.stdout();
      return [...out.slice(out.indexOf('listening on ')).matchAll(/ gc=s .*? background\.scavenge\.parallel=([\d.]+)/g)].map((m) => Number(m[1]));
    };
    try {
      return await pollUntil(
        async () => {
          await Promise.all(Array.from({ length: 256 }, () => get(`${url}/`, agent)));
          return helperTimes();
        },
        (times) => times.length >= 20,
        { timeoutMs: 20_000, intervalMs: 0, what: '20 scavenges under traffic' },
      );
    } finally {
      agent.destroy();
    }
  }

  it('collects the young generation on the main thread, and leaves V8\'s helpers to an operator who set them', async () => {
    const own = await helperTimesPerScavenge([]);
    assert.deepEqual(own.filter((ms) => ms > 0), [], `helper time on ${own.length} scavenges`);
    // The same traffic with V8's parallel scavenge asked for on the command line: helpers work.
    const operators = await helperTimesPerScavenge(['--parallel-scavenge']);
    assert.ok(operators.some((ms) => ms > 0), `no helper time on ${operators.length} scavenges`);
  });

  it('starts node with START_FLAGS from npm start and nest start', () => {
    const root = join(dirname(MAIN), '..', '..');
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    const nest = JSON.parse(readFileSync(join(root, 'nest-cli.json'), 'utf8')) as { exec?: string };
    const flags = START_FLAGS.join(' ');
    assert.equal(pkg.scripts.start, `node ${flags} dist/main.js`, 'npm start');
    assert.equal(nest.exec, `node ${flags}`, 'nest start (nest-cli.json "exec")');
  });

  it('reports the factor it set, and leaves the factor to an operator who set it', async () => {
    const tuned = await start();
    const percent = sample(await scrape(tuned.admin), 'proxymity_heap_growing_percent');
    // About 25-35 MiB in use: 64 MiB of headroom takes +190% to +260%; never more than +400%.
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
 * h2load (Debian's nghttp2-client; .ci/run installs it) POSTing 1 MiB bodies for `seconds` at a
 * fixed rate: it writes each body in small pieces and keeps its pace, as a load generator does.
 * Returns how many completed with a 2xx.
 */
async function h2loadUploads(url: string, seconds: number): Promise<number> {
  let stdout: string;
  try {
    ({ stdout } = await run('h2load', ['--h1', '-c', '8', '--rps', '5', '-D', String(seconds), '-d', BODY_FILE, '-H', 'content-type: application/octet-stream', `${url}/upload`]));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error('h2load is not installed: apt-get install nghttp2-client (.ci/run does)');
    throw err;
  }
  const ok = /status codes: (\d+) 2xx/.exec(stdout);
  if (ok === null) throw new Error(`unexpected h2load output:\n${stdout}`);
  return Number(ok[1]);
}
