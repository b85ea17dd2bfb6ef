import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fixedRateRun, h2loadDone, parseH2loadLog, percentile, renderFixedRate, type FixedRateResult } from './fixed-rate.bench.js';

describe('fixed-rate bench: reading h2load', () => {
  it('counts 2xx answers with their latencies, and every other status as failed', () => {
    const run = parseH2loadLog('1796129645255240\t200\t762\n1796129645255274\t503\t869\n1796129645255307\t204\t844\n');
    assert.deepEqual(run, { ok: 2, failed: 1, latenciesUs: [762, 844] });
  });

  it('fails loudly on a log it does not understand', () => {
    assert.throws(() => parseH2loadLog('not a log line\n'), /cannot read h2load log line "not a log line"/);
  });

  it('reads the done count from the summary', () => {
    assert.equal(h2loadDone('finished in 2.00s, 40.00 req/s, 5.86KB/s\nrequests: 80 total, 84 started, 79 done, 78 succeeded, 1 failed, 1 errored, 0 timeout\n'), 79);
    assert.throws(() => h2loadDone('h2load: connection refused'), /lacks its requests line/);
  });

  it('says when a proxy was sent less than the offered rate', () => {
    const row = (sent: [number, number]): string => {
      const r: FixedRateResult = { scenario: 's', rate: 1920, rounds: 1, cpuRatios: [1], p50Ms: [1, 1], p99Ms: [2, 2], ok: [1, 1], failed: [0, 0], sent };
      return renderFixedRate([r], (xs) => xs[0]).at(-1)!;
    };
    assert.match(row([1919, 1900]), /\| 1,919 \/ 1,900 \|/);
    assert.match(row([1919, 1500]), /1,919 \/ 1,500 \(rate not held/);
  });

  it('takes nearest-rank percentiles', () => {
    const xs = Array.from({ length: 100 }, (_, i) => 100 - i); // 100..1, unsorted
    assert.equal(percentile(xs, 50), 50);
    assert.equal(percentile(xs, 99), 99);
    assert.equal(percentile([7], 99), 7);
    assert.ok(Number.isNaN(percentile([], 50)));
  });
});

describe('fixed-rate bench: a real h2load run against loopback servers', () => {
  let tmp: string;
  const servers: http.Server[] = [];
  const urls: string[] = [];
  let served = 0;

  before(async () => {
    tmp = mkdtempSync(join(os.tmpdir(), 'fixed-rate-'));
    // a answers 200; b answers every fifth request with 503.
    for (const failEvery of [0, 5]) {
      let n = 0;
      const s = http.createServer((_req, res) => {
        served++;
        n++;
        res.writeHead(failEvery > 0 && n % failEvery === 0 ? 503 : 200, { 'content-type': 'text/plain' }).end('ok\n');
      });
      await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
      servers.push(s);
      urls.push(`http://127.0.0.1:${(s.address() as AddressInfo).port}`);
    }
  });

  after(async () => {
    for (const s of servers) await new Promise((r) => s.close(r));
    rmSync(tmp, { recursive: true, force: true });
  });

  it('sends the fixed rate to both, and counts answers, failures and latencies per side', async () => {
    const a = { name: 'a', url: urls[0], pid: process.pid };
    const b = { name: 'b', url: urls[1], pid: process.pid };
    const r = await fixedRateRun(a, b, { name: 'small', path: '/' }, { rounds: 2, durationS: 1, clients: 2, rpsPerClient: 20, tmpDir: tmp });
    assert.equal(r.rate, 40);
    assert.equal(r.rounds, 2);
    // 2 rounds of 1 s at 40 req/s each side (plus an unmeasured warm-up round), give or take the edges.
    assert.ok(r.ok[0] >= 60 && r.ok[0] <= 90, `a answered ${r.ok[0]}`);
    assert.equal(r.failed[0], 0);
    const bTotal = r.ok[1] + r.failed[1];
    assert.ok(bTotal >= 60 && bTotal <= 90, `b answered ${bTotal}`);
    assert.ok(r.failed[1] >= Math.floor(bTotal / 5) - 2 && r.failed[1] <= Math.ceil(bTotal / 5) + 2, `b failed ${r.failed[1]} of ${bTotal}`);
    assert.ok(served >= 4 * 60, `the servers saw ${served} requests`);
    for (const ms of [...r.p50Ms, ...r.p99Ms]) assert.ok(ms > 0 && ms < 1000, `latency ${ms} ms`);
    assert.ok(r.p99Ms[0] >= r.p50Ms[0]);
    // About 40 req/s were sent to each (give or take the edges of the rounds).
    for (const x of r.sent) assert.ok(x >= 30 && x <= 45, `sent ${x} req/s`);
    // Both sides are this process: a round whose CPU reads 0 ticks (10 ms) is left out, not divided by.
    assert.ok(r.cpuRatios.length <= 2);
    for (const x of r.cpuRatios) assert.ok(Number.isFinite(x) && x > 0, `cpu ratio ${x}`);
  });
});
