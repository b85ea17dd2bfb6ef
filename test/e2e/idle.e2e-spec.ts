/**
 * An idle proxy sleeps: with no traffic its main thread wakes only for its timers (the health
 * tick, probes, the event-loop-delay sample), not hundreds of times a second. Counted from the
 * kernel's voluntary context switches of the real process's main thread (Linux /proc), which go
 * up by one each time the thread blocks in epoll and is woken again. A slow machine wakes less
 * often, never more, so the bound cannot fail for want of speed.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { scrape, sample } from '../helpers/metrics.js';
import { pollUntil } from '../helpers/poll-until.js';
import { freePort, waitForPort } from '../helpers/ports.js';
import { DUMMIES, listenUrl, MAIN, spawnNode, writeTempConfig, type Spawned } from '../helpers/processes.js';

/** prom-client's default sampled the event loop every 10 ms: 100-200 wakeups a second. */
const MAX_WAKEUPS_PER_S = 40;
const WINDOW_MS = 4_000;

async function voluntarySwitches(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/task/${pid}/status`, 'utf8');
  return Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(status)?.[1]);
}

describe('an idle proxy', () => {
  const procs: Spawned[] = [];
  let admin: string;
  let pid: number;

  before(async () => {
    const port = await freePort();
    procs.push(spawnNode(DUMMIES, ['--ports', String(port), '--host', '127.0.0.1']));
    await waitForPort(port);
    // Every default: process metrics on, a health probe every 10 s, the once-a-second health tick.
    const proc = spawnNode(MAIN, ['--config', writeTempConfig(`proxy: {host: 127.0.0.1, port: 0}\nbackend:\n  - url: http://127.0.0.1:${port}\n`)]);
    procs.push(proc);
    await pollUntil(() => listenUrl(proc.stdout()), (u) => u !== undefined, { timeoutMs: 15_000, what: 'proxy start' });
    admin = listenUrl(proc.stdout(), 'admin on ') as string;
    pid = proc.child.pid as number;
  });
  after(async () => {
    for (const p of procs) p.child.kill('SIGKILL');
    await Promise.all(procs.map((p) => p.exited));
  });

  it('wakes only for its timers', async () => {
    await sleep(1_000); // the first probe and boot's last collections
    const before = await voluntarySwitches(pid);
    await sleep(WINDOW_MS);
    const perSecond = ((await voluntarySwitches(pid)) - before) / (WINDOW_MS / 1000);
    assert.ok(Number.isFinite(perSecond), 'no voluntary_ctxt_switches in /proc');
    assert.ok(perSecond <= MAX_WAKEUPS_PER_S, `main thread woke ${perSecond.toFixed(0)} times a second while idle`);
  });

  it('still samples the event loop delay', async () => {
    // Reset at each scrape; a second scrape a few samples later has a non-zero mean.
    await scrape(admin);
    await sleep(500);
    const mean = sample(await scrape(admin), 'nodejs_eventloop_lag_mean_seconds');
    assert.ok(mean > 0, `nodejs_eventloop_lag_mean_seconds ${mean}`);
  });
});
