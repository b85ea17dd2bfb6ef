/**
 * V8's young generation stays at its initial size while the proxy boots and grows again once it
 * serves traffic (src/boot-heap.ts). Read from the proxy's own heap metrics
 * (nodejs_heap_space_size_total_bytes{space="new"}), in real proxy processes.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import { closeAll, type DummyBackend, startBackends } from '../fixtures/backend-server.js';
import { sample, scrape } from '../helpers/metrics.js';
import { pollUntil } from '../helpers/poll-until.js';
import { listenUrl, MAIN, spawnNode, writeTempConfig, type Spawned } from '../helpers/processes.js';

const MIB = 1024 * 1024;
/** V8 starts the young generation at 1 MiB (one semi-space); booting Nest grew it to 16-32 MiB. */
const BOOT_LIMIT = 4 * MIB;

describe('young generation during boot', () => {
  let backends: DummyBackend[];
  let config: string;
  const procs: Spawned[] = [];

  before(async () => {
    backends = await startBackends(1);
    config = writeTempConfig(`proxy: {host: 127.0.0.1, port: 0}\nbackend:\n  - url: ${backends[0].url}\nhealthCheck: {interval: 1h}\n`);
  });
  after(async () => {
    for (const p of procs) p.child.kill('SIGKILL');
    await closeAll(backends);
  });

  async function start(nodeFlags: string[] = []): Promise<{ url: string; admin: string }> {
    const proc = nodeFlags.length === 0 ? spawnNode(MAIN, ['--config', config]) : spawnWithFlags(nodeFlags);
    procs.push(proc);
    const url = (await pollUntil(() => listenUrl(proc.stdout()), (u) => u !== undefined, { timeoutMs: 15_000, what: 'proxy start' })) as string;
    const admin = listenUrl(proc.stdout(), 'admin on ') as string;
    return { url, admin };
  }

  function spawnWithFlags(flags: string[]): Spawned {
    const child = spawn(process.execPath, [...flags, MAIN, '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    return { child, stdout: () => out, stderr: () => err, exited };
  }

  async function newSpace(admin: string): Promise<number> {
    return sample(await scrape(admin), 'nodejs_heap_space_size_total_bytes', { space: 'new' });
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

  it('leaves V8 alone when the operator sized the young generation', async () => {
    // The operator's own flag wins, so boot grows the young generation as V8 does by default.
    const { admin } = await start(['--semi-space-growth-factor=2']);
    const atBoot = await newSpace(admin);
    assert.ok(atBoot > BOOT_LIMIT, `young generation after boot: ${(atBoot / MIB).toFixed(1)} MiB`);
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
