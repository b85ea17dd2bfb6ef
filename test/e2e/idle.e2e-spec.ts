/**
 * `metrics.eventLoopResolution`, in real proxy processes. prom-client samples the event-loop
 * delay on a timer, and each sample wakes the process: at the default 10 ms an idle proxy's main
 * thread wakes about 100 times a second. At 50 ms it wakes only for its other timers (the health
 * tick, probes) and the sample. Wakeups are counted from the kernel's voluntary context switches
 * of the main thread (Linux /proc), which go up by one each time the thread blocks in epoll and
 * is woken again; a slow machine wakes less often, never more. Each sample is the time between
 * two samples, so the lag metrics read at least the resolution: the default keeps prom-client's.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { scrape, sample } from '../helpers/metrics.js';
import { pollUntil } from '../helpers/poll-until.js';
import { freePort, waitForPort } from '../helpers/ports.js';
import { DUMMIES, listenUrl, MAIN, spawnNode, writeTempConfig, type Spawned } from '../helpers/processes.js';

/** At 10 ms the main thread woke 96-100 times a second; at 50 ms, 21-25. */
const MAX_WAKEUPS_PER_S = 40;
const WINDOW_MS = 4_000;

async function voluntarySwitches(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/task/${pid}/status`, 'utf8');
  return Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(status)?.[1]);
}

describe('metrics.eventLoopResolution', () => {
  const procs: Spawned[] = [];
  const started: Record<'standard' | 'coarse', { admin: string; pid: number }> = {} as never;

  before(async () => {
    const port = await freePort();
    procs.push(spawnNode(DUMMIES, ['--ports', String(port), '--host', '127.0.0.1']));
    await waitForPort(port);
    // Every other default: process metrics on, a health probe every 10 s, the once-a-second health tick.
    const base = `proxy: {host: 127.0.0.1, port: 0}\nbackend:\n  - url: http://127.0.0.1:${port}\n`;
    for (const [name, extra] of [['standard', ''], ['coarse', 'metrics: {eventLoopResolution: 50ms}\n']] as const) {
      const proc = spawnNode(MAIN, ['--config', writeTempConfig(base + extra)]);
      procs.push(proc);
      await pollUntil(() => listenUrl(proc.stdout()), (u) => u !== undefined, { timeoutMs: 15_000, what: `${name} proxy start` });
      started[name] = { admin: listenUrl(proc.stdout(), 'admin on ') as string, pid: proc.child.pid as number };
    }
  });
  after(async () => {
    for (const p of procs) p.child.kill('SIGKILL');
    await Promise.all(procs.map((p) => p.exited));
  });

  it('at 50ms, lets an idle proxy sleep between its timers', async () => {
    const { pid } = started.coarse;
    await sleep(1_000); // the first probe and boot's last collections
    const before = await voluntarySwitches(pid);
    await sleep(WINDOW_MS);
    const perSecond = ((await voluntarySwitches(pid)) - before) / (WINDOW_MS / 1000);
    assert.ok(Number.isFinite(perSecond), 'no voluntary_ctxt_switches in /proc');
    assert.ok(perSecond <= MAX_WAKEUPS_PER_S, `main thread woke ${perSecond.toFixed(0)} times a second while idle`);
  });

  it('samples at the resolution: the default reads as prom-client does, 50ms never below 50 ms', async () => {
    // The histogram is reset at each scrape: the second scrape covers the last 600 ms.
    const minLag = async (admin: string) => {
      await scrape(admin);
      await sleep(600);
      return sample(await scrape(admin), 'nodejs_eventloop_lag_min_seconds');
    };
    const standard = await minLag(started.standard.admin);
    const coarse = await minLag(started.coarse.admin);
    assert.ok(standard > 0 && standard < 0.03, `default: nodejs_eventloop_lag_min_seconds ${standard}`);
    assert.ok(coarse >= 0.045, `50ms: nodejs_eventloop_lag_min_seconds ${coarse}`);
  });
});
