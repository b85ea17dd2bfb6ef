/**
 * The control plane must not disturb the data plane's optimised code. V8 compiles Node's HTTP
 * client for the object shapes proxied requests give it; a health probe that brought shapes of
 * its own deoptimised about 50 of those functions the first time it ran under traffic (and left
 * them compiled for two shapes each, 5-13% more CPU per request at a fixed rate). Probes now go
 * out through the same code as proxied requests (src/backend/upstream-request.ts).
 *
 * Read from V8's own `--trace-deopt` output of a real proxy process: traffic from h2load at a
 * fixed rate warms the hot path while no probe is due, then a window of the same traffic that
 * contains one probe (seen arriving at the backend) may deoptimise almost nothing.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { pollUntil } from '../helpers/poll-until.js';
import { listenUrl, MAIN, spawnNode, writeTempConfig, type Spawned } from '../helpers/processes.js';

const run = promisify(execFile);
/** Seconds between probes; long enough for a warm-up with none due. */
const PROBE_INTERVAL_S = 8;
const WARM_UP_S = 5;
const WINDOW_S = 6;
/** Deoptimisations allowed in the window (the old probe caused 52; unrelated ones are rare). */
const MAX_DEOPTS = 5;

describe('hot path JIT stability', () => {
  let backend: http.Server;
  let backendUrl: string;
  /** Arrival times (Date.now()) of health probes at the backend. */
  const probes: number[] = [];
  let proc: Spawned | undefined;

  before(async () => {
    backend = http.createServer((req, res) => {
      if (req.headers['user-agent'] === 'proxymity-health-check') probes.push(Date.now());
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '3' }).end('ok\n');
    });
    await new Promise<void>((resolve) => backend.listen(0, '127.0.0.1', resolve));
    backendUrl = `http://127.0.0.1:${(backend.address() as AddressInfo).port}`;
  });
  after(async () => {
    if (proc !== undefined) {
      proc.child.kill('SIGKILL');
      await proc.exited;
    }
    backend.closeAllConnections();
    await new Promise((resolve) => backend.close(resolve));
  });

  it('a health probe sent while traffic flows deoptimises none of the proxy’s hot functions', async () => {
    const config = writeTempConfig(`proxy: {host: 127.0.0.1, port: 0}\nbackend:\n  - {name: b1, url: "${backendUrl}"}\nhealthCheck: {interval: ${PROBE_INTERVAL_S}s}\n`);
    proc = spawnNode(MAIN, ['--config', config], {}, undefined, ['--trace-deopt']);
    const p = proc;
    const url = (await pollUntil(() => listenUrl(p.stdout()), (u) => u !== undefined, { timeoutMs: 15_000, what: 'proxy start' })) as string;
    // The first probe goes out at the first tick after start; the next one is due PROBE_INTERVAL_S later.
    await pollUntil(() => probes.length, (n) => n >= 1, { timeoutMs: 5000, what: 'first probe' });
    const firstProbe = probes[0];

    await h2load(url, WARM_UP_S);
    const windowStart = Date.now();
    const before = deopts(p.stdout());
    await h2load(url, WINDOW_S);
    const windowEnd = Date.now();
    const during = deopts(p.stdout()) - before;

    const inWarmUp = probes.filter((t) => t > firstProbe && t < windowStart);
    const inWindow = probes.filter((t) => t >= windowStart && t <= windowEnd);
    assert.equal(inWarmUp.length, 0, 'no probe may fall in the warm-up (the test relies on the interval)');
    assert.ok(inWindow.length >= 1, `a probe must arrive during the measured window (probes at ${probes.map((t) => t - firstProbe).join(', ')} ms after the first; window ${windowStart - firstProbe}-${windowEnd - firstProbe} ms)`);
    assert.ok(during <= MAX_DEOPTS, `${during} deoptimisations while traffic flowed and a probe ran (at most ${MAX_DEOPTS}):\n${lastDeopts(p.stdout(), during)}`);
  });
});

/** How many functions V8 has deoptimised so far, by its --trace-deopt output. */
function deopts(output: string): number {
  return output.split('[bailout (kind').length - 1;
}

function lastDeopts(output: string, n: number): string {
  const lines = output.split('\n').filter((l) => l.startsWith('[bailout (kind'));
  return lines
    .slice(-Math.min(n, 20))
    .map((l) => /reason: ([^)]*)\): begin\. deoptimizing \S+ <JSFunction (\S+)/.exec(l)?.slice(1).join(': ') ?? l.slice(0, 160))
    .join('\n');
}

/** Small GETs at a fixed rate (32 connections × 60 per second) for `seconds`. */
async function h2load(url: string, seconds: number): Promise<void> {
  let stdout: string;
  try {
    ({ stdout } = await run('h2load', ['--h1', '-c', '32', '--rps', '60', '-D', String(seconds), `${url}/`]));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error('h2load is not installed: apt-get install nghttp2-client (.ci/run does)');
    throw err;
  }
  const ok = /status codes: (\d+) 2xx/.exec(stdout);
  assert.ok(ok !== null && Number(ok[1]) > 0, `unexpected h2load output:\n${stdout}`);
}
