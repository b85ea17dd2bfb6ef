/**
 * Backends as real processes: one is SIGKILLed while requests flow; no client request fails
 * (GETs are retried on the next backend), the dead one is marked down, and it rejoins by
 * itself when a process listens on its port again.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import type { RunningProxymity } from '../../src/proxymity.js';
import { request } from '../helpers/http-client.js';
import { pollUntil } from '../helpers/poll-until.js';
import { DUMMIES, listenUrl, spawnNode, type Spawned } from '../helpers/processes.js';
import { startProxy } from '../helpers/proxy.js';

async function startBackendProcess(name: string, port = 0): Promise<{ proc: Spawned; url: string }> {
  const proc = spawnNode(DUMMIES, ['--ports', String(port), '--host', '127.0.0.1', '--names', name]);
  const url = await pollUntil(() => listenUrl(proc.stdout()), (u) => u !== undefined, { timeoutMs: 10_000, what: 'backend process start' });
  return { proc, url: url as string };
}

describe('failover', () => {
  let procs: { proc: Spawned; url: string }[];
  let sut: RunningProxymity;

  before(async () => {
    procs = await Promise.all([startBackendProcess('p1'), startBackendProcess('p2'), startBackendProcess('p3')]);
    sut = await startProxy(procs.map((p) => p.url), 'healthCheck: {interval: 1s, healthyThreshold: 1, unhealthyThreshold: 1, timeout: 500ms}');
  });
  after(async () => {
    await sut.close();
    for (const p of procs) if (p.proc.child.exitCode === null) p.proc.child.kill('SIGKILL');
  });

  it('serves every request while a backend process is killed mid-run, then takes it back when it returns', async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
    const statuses = new Map<number, number>();
    let stop = false;
    const victim = procs[1];
    const loop = async () => {
      const deadline = Date.now() + 10_000; // bounded in time
      while (!stop && Date.now() < deadline) {
        const res = await request(`${sut.url}/load`, { agent });
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
      }
    };
    const workers = [loop(), loop(), loop(), loop()];
    await pollUntil(() => [...statuses.values()].reduce((a, b) => a + b, 0), (n) => n >= 200, { what: 'traffic flowing' });
    victim.proc.child.kill('SIGKILL');
    await victim.proc.exited;
    await pollUntil(() => [...statuses.values()].reduce((a, b) => a + b, 0), (n) => n >= 800, { what: 'traffic after the kill' });
    stop = true;
    await Promise.all(workers);
    agent.destroy();
    assert.deepEqual([...statuses.keys()], [200], `statuses seen: ${JSON.stringify([...statuses])}`);

    const down = await request(`${sut.url}/health`);
    assert.equal(down.json().details.backends.backends[1].state, 'down');

    const port = Number(new URL(victim.url).port);
    procs[1] = await startBackendProcess('p2-again', port);
    await pollUntil(async () => (await request(`${sut.url}/health`)).json().details.backends.backends[1].state, (s) => s === 'up', { timeoutMs: 5000, what: 'backend back up' });
    const seen: string[] = [];
    for (let i = 0; i < 6; i++) seen.push((await request(`${sut.url}/back`)).json().backend);
    assert.deepEqual(seen.filter((n) => n === 'p2-again').length, 2);
  });
});
