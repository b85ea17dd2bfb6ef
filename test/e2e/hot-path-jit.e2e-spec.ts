/**
 * The control plane must not disturb the data plane's optimised code. V8 compiles Node's HTTP
 * client for the object shapes proxied requests give it; a health probe that brought shapes of
 * its own deoptimised about 50 of those functions the first time it ran under traffic (and left
 * them compiled for two shapes each, 5-13% more CPU per request at a fixed rate). Probes now go
 * out through the same code as proxied requests (src/backend/upstream-request.ts).
 *
 * The same holds for the endpoints polled all day, which Express used to answer: GET /health
 * (48 deoptimisations) and the admin listener's GET /metrics (26). Both are now answered on the
 * raw request.
 *
 * Read from V8's own `--trace-deopt` output of a real proxy process: traffic from h2load at a
 * fixed rate warms the hot path while no probe is due, then a window of the same traffic that
 * contains one probe (seen arriving at the backend), a GET /health and a GET /metrics may
 * deoptimise almost nothing.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { pollUntil } from '../helpers/poll-until.js';
import { listenUrl, MAIN, spawnNode, writeTempConfig, type Spawned } from '../helpers/processes.js';

const run = promisify(execFile);
/** Seconds between probes; long enough for a warm-up with none due. */
const PROBE_INTERVAL_S = 8;
const WARM_UP_S = 5;
const WINDOW_S = 6;
/**
 * "Wrong map" deoptimisations allowed in the window: code compiled for proxied requests' shapes
 * meeting another shape, which leaves it compiled for both. This window counted 83 of them before
 * either change, and 43 with probes already sent like proxied requests. (First runs of a branch the
 * warm-up never took, "insufficient type feedback", are one-off and not counted.)
 */
const MAX_WRONG_MAP = 5;

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

  it('a health probe, GET /health and GET /metrics while traffic flows deoptimise none of the proxy’s hot functions', async () => {
    const config = writeTempConfig(`proxy: {host: 127.0.0.1, port: 0}\nbackend:\n  - {name: b1, url: "${backendUrl}"}\nhealthCheck: {interval: ${PROBE_INTERVAL_S}s}\n`);
    proc = spawnNode(MAIN, ['--config', config], {}, undefined, ['--trace-deopt']);
    const p = proc;
    const url = (await pollUntil(() => listenUrl(p.stdout()), (u) => u !== undefined, { timeoutMs: 15_000, what: 'proxy start' })) as string;
    // The first probe goes out at the first tick after start; the next one is due PROBE_INTERVAL_S later.
    await pollUntil(() => probes.length, (n) => n >= 1, { timeoutMs: 5000, what: 'first probe' });
    const firstProbe = probes[0];

    // The test's own HTTP client sends other header fields than h2load: its requests go through
    // the warm-up too (proxied), so that only the endpoints' own shapes are new in the window.
    // In two runs: the window's load opens fresh client connections, whose first requests meet
    // code the warm-up optimised on connections already in use ("wrong map" in the server's
    // parser callbacks, one-off). The second run's fresh connections take that first.
    const warmUp = h2load(url, WARM_UP_S - 2).then(() => h2load(url, 2));
    for (let i = 0; i < 20; i++) {
      assert.equal((await fetch(`${url}/warm-up`)).status, 200);
      await delay(100);
    }
    await warmUp;
    const windowStart = Date.now();
    const before = wrongMapDeopts(p.stdout());
    const load = h2load(url, WINDOW_S);
    await delay(1000);
    const health = await fetch(`${url}/health`);
    assert.equal(health.status, 200);
    assert.equal(((await health.json()) as { status: string }).status, 'ok');
    const metrics = await fetch(`${listenUrl(p.stdout(), 'admin on ')}/metrics`);
    assert.equal(metrics.status, 200);
    assert.match(await metrics.text(), /proxymity_requests_total/);
    await load;
    const windowEnd = Date.now();
    const during = wrongMapDeopts(p.stdout()) - before;

    const inWarmUp = probes.filter((t) => t > firstProbe && t < windowStart);
    const inWindow = probes.filter((t) => t >= windowStart && t <= windowEnd);
    assert.equal(inWarmUp.length, 0, 'no probe may fall in the warm-up (the test relies on the interval)');
    assert.ok(inWindow.length >= 1, `a probe must arrive during the measured window (probes at ${probes.map((t) => t - firstProbe).join(', ')} ms after the first; window ${windowStart - firstProbe}-${windowEnd - firstProbe} ms)`);
    assert.ok(during <= MAX_WRONG_MAP, `${during} "wrong map" deoptimisations while traffic flowed and a probe, /health and /metrics ran (at most ${MAX_WRONG_MAP}):\n${lastWrongMap(p.stdout(), during)}`);
  });
});

const WRONG_MAP = /^\[bailout \(kind: [^,]+, reason: wrong map\): begin\. deoptimizing \S+ <JSFunction (\S+)/;

/** "Wrong map" deoptimisations so far, by V8's --trace-deopt output. */
function wrongMapLines(output: string): string[] {
  return output.split('\n').filter((l) => WRONG_MAP.test(l));
}

function wrongMapDeopts(output: string): number {
  return wrongMapLines(output).length;
}

function lastWrongMap(output: string, n: number): string {
  return wrongMapLines(output)
    .slice(-Math.min(n, 20))
    .map((l) => WRONG_MAP.exec(l)?.[1] ?? l.slice(0, 160))
    .join(', ');
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
