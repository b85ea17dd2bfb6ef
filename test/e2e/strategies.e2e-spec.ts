/**
 * Each strategy and backend option through the real proxy and real backends on loopback.
 * Client addresses for ip-hash come from binding 127.0.0.x source addresses (all loopback).
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { afterEach, describe, it } from 'node:test';
import type { RunningProxymity } from '../../src/proxymity.js';
import { closeAll, DummyBackend, startBackends } from '../fixtures/backend-server.js';
import { request, type TestResponse } from '../helpers/http-client.js';
import { pollUntil } from '../helpers/poll-until.js';
import { withAdminPortZero } from '../helpers/processes.js';

let running: { sut?: RunningProxymity; backends: DummyBackend[] }[] = [];

async function setup(n: number, lbYaml: string, backendExtras: string[] = [], extra = 'healthCheck: {interval: 1h}'): Promise<{ sut: RunningProxymity; backends: DummyBackend[] }> {
  const backends = await startBackends(n);
  const entry: { sut?: RunningProxymity; backends: DummyBackend[] } = { backends };
  running.push(entry);
  const { parseConfig } = await import('../../src/config/index.js');
  const { startProxymity } = await import('../../src/proxymity.js');
  const yaml = `proxy: {host: 127.0.0.1, port: 0}\nbackend:\n${backends.map((b, i) => `  - name: ${b.name}\n    url: ${b.url}\n${backendExtras[i] ? `    ${backendExtras[i]}\n` : ''}`).join('')}loadBalancer:\n${lbYaml}\n${extra}\n`;
  entry.sut = await startProxymity(parseConfig(withAdminPortZero(yaml), 'test.yaml'), { logger: false });
  return { sut: entry.sut, backends };
}

afterEach(async () => {
  for (const r of running) {
    await r.sut?.close();
    await closeAll(r.backends);
  }
  running = [];
});

const from = (ip: string) => ({ agent: new http.Agent({ localAddress: ip } as http.AgentOptions) });
const backendOf = (r: TestResponse) => r.json().backend as string;

async function concurrent(url: string, total: number, concurrency: number): Promise<string[]> {
  const seen: string[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < total) {
        next++;
        seen.push(backendOf(await request(url)));
      }
    }),
  );
  return seen;
}

describe('strategies end to end', () => {
  it('round-robin honours weights exactly', async () => {
    const { sut } = await setup(2, '  strategy: round-robin', ['weight: 2', 'weight: 1']);
    const seq = [];
    for (let i = 0; i < 9; i++) seq.push(backendOf(await request(`${sut.url}/w`)));
    assert.deepEqual(seq, ['b1', 'b2', 'b1', 'b1', 'b2', 'b1', 'b1', 'b2', 'b1']);
  });

  for (const strategy of ['least-connections', 'power-of-two']) {
    it(`${strategy} sends a slow backend measurably fewer requests than round-robin does`, async () => {
      const rr = await setup(2, '  strategy: round-robin');
      rr.backends[0].delayMs = 200;
      const rrSlow = (await concurrent(`${rr.sut.url}/load`, 40, 8)).filter((b) => b === 'b1').length;
      const lc = await setup(2, `  strategy: ${strategy}`);
      lc.backends[0].delayMs = 200;
      const lcSlow = (await concurrent(`${lc.sut.url}/load`, 40, 8)).filter((b) => b === 'b1').length;
      assert.ok(rrSlow >= 18, `round-robin sent the slow backend ${rrSlow} of 40`);
      assert.ok(lcSlow <= rrSlow * 0.6, `${strategy} sent the slow backend ${lcSlow} of 40, round-robin ${rrSlow}`);
    });
  }

  it('random follows weights', async () => {
    const { sut } = await setup(2, '  strategy: random', ['weight: 1', 'weight: 3']);
    const seen = [];
    for (let i = 0; i < 300; i++) seen.push(backendOf(await request(`${sut.url}/r`)));
    const share = seen.filter((b) => b === 'b2').length / seen.length;
    assert.ok(share > 0.62 && share < 0.88, `weight-3 backend got ${share}`);
  });

  it('ip-hash keeps a client on one backend, moves it when that one is down, and brings it back', async () => {
    const { sut, backends } = await setup(3, '  strategy: ip-hash', [], 'healthCheck: {interval: 1s, healthyThreshold: 1, unhealthyThreshold: 1, timeout: 300ms}');
    const homes = new Map<string, string>();
    for (let i = 2; i < 12; i++) {
      const ip = `127.0.0.${i}`;
      const opts = from(ip);
      const first = backendOf(await request(`${sut.url}/ip`, opts));
      for (let k = 0; k < 3; k++) assert.equal(backendOf(await request(`${sut.url}/ip`, opts)), first);
      homes.set(ip, first);
      opts.agent.destroy();
    }
    assert.ok(new Set(homes.values()).size >= 2, 'ten clients spread over more than one backend');
    const [ip, home] = [...homes.entries()][0];
    const victim = backends.find((b) => b.name === home)!;
    victim.healthy = false;
    await pollUntil(async () => (await request(`${sut.url}/health`)).json().details.backends.healthy, (n) => n === 2, { timeoutMs: 5000, what: 'home down' });
    const away = backendOf(await request(`${sut.url}/ip`, from(ip)));
    assert.notEqual(away, home);
    assert.equal(backendOf(await request(`${sut.url}/ip`, from(ip))), away);
    victim.healthy = true;
    await pollUntil(async () => (await request(`${sut.url}/health`)).json().details.backends.healthy, (n) => n === 3, { timeoutMs: 5000, what: 'home back' });
    assert.equal(backendOf(await request(`${sut.url}/ip`, from(ip))), home);
  });

  it('hash on a header keeps each key on one backend', async () => {
    const { sut } = await setup(3, '  strategy: hash\n  hash: {key: "header:X-User"}');
    const homes = new Set<string>();
    for (let u = 0; u < 12; u++) {
      const headers = { 'x-user': `user-${u}` };
      const first = backendOf(await request(`${sut.url}/h`, { headers }));
      assert.equal(backendOf(await request(`${sut.url}/h`, { headers })), first);
      homes.add(first);
    }
    assert.ok(homes.size >= 2);
  });

  it('sticky sessions pin a client by cookie, re-issue a forged one, and move when the target is down', async () => {
    const { sut, backends } = await setup(3, '  strategy: round-robin\n  sticky: {cookie: pxy, secret: "0123456789abcdef0123", maxAge: 1h}', [], 'healthCheck: {interval: 1s, healthyThreshold: 1, unhealthyThreshold: 1, timeout: 300ms}');
    const first = await request(`${sut.url}/s`);
    const setCookie = String(first.headers['set-cookie']);
    assert.match(setCookie, /^pxy=[A-Za-z0-9_-]{22}; Path=\/; Max-Age=3600; HttpOnly; SameSite=Lax$/);
    const cookie = setCookie.split(';')[0];
    const home = backendOf(first);
    for (let i = 0; i < 6; i++) {
      const r = await request(`${sut.url}/s`, { headers: { cookie } });
      assert.equal(backendOf(r), home);
      assert.equal(r.headers['set-cookie'], undefined, 'a valid cookie is not re-issued');
    }
    const forged = await request(`${sut.url}/s`, { headers: { cookie: 'pxy=AAAAAAAAAAAAAAAAAAAAAA' } });
    assert.match(String(forged.headers['set-cookie']), /^pxy=/);
    backends.find((b) => b.name === home)!.healthy = false;
    await pollUntil(async () => (await request(`${sut.url}/health`)).json().details.backends.healthy, (n) => n === 2, { timeoutMs: 5000, what: 'home down' });
    const moved = await request(`${sut.url}/s`, { headers: { cookie } });
    assert.notEqual(backendOf(moved), home);
    assert.notEqual(String(moved.headers['set-cookie']).split(';')[0], cookie, 'the cookie names the new backend');
  });

  it('uses a backup only while no primary is eligible', async () => {
    const { sut, backends } = await setup(2, '  strategy: round-robin', ['', 'backup: true'], 'healthCheck: {interval: 1s, healthyThreshold: 1, unhealthyThreshold: 1, timeout: 300ms}');
    for (let i = 0; i < 4; i++) assert.equal(backendOf(await request(`${sut.url}/b`)), 'b1');
    backends[0].healthy = false;
    await pollUntil(async () => (await request(`${sut.url}/b`)).json().backend, (b) => b === 'b2', { timeoutMs: 5000, what: 'backup takes over' });
    backends[0].healthy = true;
    await pollUntil(async () => (await request(`${sut.url}/b`)).json().backend, (b) => b === 'b1', { timeoutMs: 5000, what: 'primary back' });
  });

  it('skips a backend at maxConnections and answers 503 when all are at their cap', async () => {
    const { sut, backends } = await setup(2, '  strategy: round-robin', ['maxConnections: 1', 'maxConnections: 1']);
    backends.forEach((b) => (b.delayMs = 400));
    const slow = [request(`${sut.url}/c1`), request(`${sut.url}/c2`)];
    await pollUntil(() => backends.reduce((n, b) => n + b.proxied, 0), (n) => n === 2, { what: 'both backends busy' });
    const third = await request(`${sut.url}/c3`);
    assert.equal(third.status, 503);
    const done = await Promise.all(slow);
    assert.deepEqual(done.map(backendOf).sort(), ['b1', 'b2']);
    assert.equal((await request(`${sut.url}/c4`)).status, 200);
  });
});
