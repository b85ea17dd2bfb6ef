/**
 * Hot reload under load: the config file is rewritten 20 times (backends added, removed and
 * re-weighted, routes changed, one broken file among them) while concurrent clients keep
 * sending requests. Not one request may fail, and traffic must follow each new config.
 */
import assert from 'node:assert/strict';
import { appendFileSync, linkSync, mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { loadConfigFile } from '../../src/config/index.js';
import { startProxymity, type RunningProxymity } from '../../src/proxymity.js';
import { closeAll, startBackends, type DummyBackend } from '../fixtures/backend-server.js';
import { request } from '../helpers/http-client.js';
import { delta, sample, scrape } from '../helpers/metrics.js';
import { pollUntil } from '../helpers/poll-until.js';
import { listenUrl, MAIN, spawnNode } from '../helpers/processes.js';

const TOKEN = 'reload-test-admin-token';

/** A config with `main` backends in the default route and optionally `/other/` routed to another pool. */
function configText(backends: DummyBackend[], main: { name: string; weight?: number }[], other?: string, proxyExtra = ''): string {
  const url = (name: string) => backends.find((b) => b.name === name)!.url;
  const lines = [
    `proxy: {host: 127.0.0.1, port: 0${proxyExtra}}`,
    `admin: {port: 0, token: ${TOKEN}}`,
    'healthCheck: {interval: 1s}',
    'pools:',
    '  main:',
    '    backends:',
    ...main.map((b) => `      - {name: ${b.name}, url: "${url(b.name)}", weight: ${b.weight ?? 1}}`),
  ];
  if (other !== undefined) lines.push('  other:', '    backends:', `      - {name: ${other}, url: "${url(other)}"}`);
  lines.push('routes:');
  if (other !== undefined) lines.push('  - {match: {path: /other/}, pool: other}');
  lines.push('  - {pool: main}');
  return `${lines.join('\n')}\n`;
}

interface Step {
  main: { name: string; weight?: number }[];
  other?: string;
}

/** The 19 good configs the file goes through (the 20th write is a broken file). */
const STEPS: Step[] = [
  { main: [{ name: 'b1' }, { name: 'b2' }, { name: 'b3' }] },
  { main: [{ name: 'b2' }, { name: 'b3' }] },
  { main: [{ name: 'b2', weight: 5 }, { name: 'b3' }] },
  { main: [{ name: 'b3' }], other: 'b4' },
  { main: [{ name: 'b1' }, { name: 'b3' }], other: 'b4' },
  { main: [{ name: 'b1' }], other: 'b2' },
  { main: [{ name: 'b1' }, { name: 'b4' }] },
  { main: [{ name: 'b4' }], other: 'b1' },
  { main: [{ name: 'b2' }, { name: 'b4' }] },
  { main: [{ name: 'b1' }, { name: 'b2' }, { name: 'b3' }, { name: 'b4' }] },
  { main: [{ name: 'b3', weight: 3 }, { name: 'b4' }] },
  { main: [{ name: 'b2' }], other: 'b3' },
  { main: [{ name: 'b1' }, { name: 'b2' }], other: 'b3' },
  { main: [{ name: 'b4' }, { name: 'b1' }] },
  { main: [{ name: 'b1' }] },
  { main: [{ name: 'b2' }, { name: 'b3' }], other: 'b1' },
  { main: [{ name: 'b3' }, { name: 'b4' }] },
  { main: [{ name: 'b1' }, { name: 'b4' }], other: 'b2' },
  { main: [{ name: 'b1' }, { name: 'b2' }] },
];

describe('hot reload', () => {
  let backends: DummyBackend[];
  let file: string;
  let sut: RunningProxymity;

  before(async () => {
    backends = await startBackends(4);
    file = join(mkdtempSync(join(tmpdir(), 'proxymity-reload-')), 'proxymity.yaml');
    writeFileSync(file, configText(backends, [{ name: 'b1' }, { name: 'b2' }]));
    sut = await startProxymity(loadConfigFile(file), { logger: false, configFile: file });
  });
  after(async () => {
    await sut.close();
    await closeAll(backends);
  });

  const version = async () => (await request(`${sut.adminUrl}/config`, { headers: { authorization: `Bearer ${TOKEN}` } })).json().version as string;

  /** Backends that served `n` requests to `path` (sequentially, on a fresh connection each). */
  async function servedBy(path: string, n: number): Promise<Set<string>> {
    const seen = new Set<string>();
    for (let i = 0; i < n; i++) {
      const res = await request(`${sut.url}${path}`);
      assert.equal(res.status, 200, `${path}: ${res.status} ${res.body}`);
      seen.add(res.json().backend);
    }
    return seen;
  }

  it('applies 20 rewrites of the file under load without failing a request, and refuses a broken one', async () => {
    const before = await scrape(sut.adminUrl!, TOKEN);
    // The load: 16 keep-alive clients in a loop until the rewrites are done.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
    let running = true;
    let ok = 0;
    const failures: string[] = [];
    const client = async () => {
      while (running) {
        try {
          const res = await request(`${sut.url}/load`, { agent });
          if (res.status === 200) ok++;
          else failures.push(`${res.status} ${res.body}`);
        } catch (err) {
          failures.push((err as Error).message);
        }
      }
    };
    const clients = Array.from({ length: 16 }, client);
    /** Waits until the load has completed `n` more requests. */
    const loadRuns = (n: number) => {
      const target = ok + n;
      return pollUntil(() => ok, (x) => x >= target || failures.length > 0, { timeoutMs: 5000, what: `${n} more requests` });
    };

    let current = await version();
    try {
    for (let i = 0; i < STEPS.length + 1; i++) {
      if (i === 9) {
        // The 10th write is broken: refused, the running config stays and keeps serving.
        writeFileSync(file, 'pools:\n  main:\n    backends:\n      - {url: "localhost:9"}\n');
        await pollUntil(() => scrape(sut.adminUrl!, TOKEN), (s) => delta(before, s, 'proxymity_config_reloads_total', { result: 'failure' }) === 1, { timeoutMs: 3000, what: 'broken file refused' });
        assert.equal(await version(), current);
        continue;
      }
      const step = STEPS[i > 9 ? i - 1 : i];
      const text = configText(backends, step.main, step.other);
      // Half the writes replace the file (as config management does), half rewrite it in place.
      if (i % 2 === 0) {
        writeFileSync(`${file}.tmp`, text);
        renameSync(`${file}.tmp`, file);
      } else writeFileSync(file, text);
      current = await pollUntil(version, (v) => v !== current, { timeoutMs: 2000, what: `reload ${i + 1}` });
      // Traffic follows the new config: once the requests started before the switch are done,
      // the load reaches exactly the new main pool (read from the backends' own counters).
      await loadRuns(50);
      const countsBefore = backends.map((b) => b.proxied);
      await loadRuns(150);
      const grew = backends.filter((b, k) => b.proxied > countsBefore[k]).map((b) => b.name);
      const expected = [...step.main.map((b) => b.name), ...(step.other !== undefined ? [step.other] : [])].sort();
      assert.deepEqual(grew.filter((n) => n !== step.other).sort(), step.main.map((b) => b.name).sort(), `step ${i + 1}: main pool`);
      assert.ok(grew.every((n) => expected.includes(n)), `step ${i + 1}: only configured backends get traffic (got ${grew.join(', ')})`);
      // ...and /other/ goes to the other pool when there is one.
      if (step.other !== undefined) assert.deepEqual([...(await servedBy('/other/x', 2))], [step.other]);
    }
    } finally {
      running = false;
      await Promise.all(clients);
      agent.destroy();
    }

    assert.deepEqual(failures, [], `${failures.length} failed requests`);
    assert.ok(ok > 200, `only ${ok} requests ran during the reloads`);
    const after = await scrape(sut.adminUrl!, TOKEN);
    assert.equal(delta(before, after, 'proxymity_config_reloads_total', { result: 'success' }), STEPS.length);
    assert.equal(delta(before, after, 'proxymity_config_reloads_total', { result: 'failure' }), 1);
  });

  it('keeps the state of a backend whose name and URL did not change', async () => {
    const probes = async () => (await request(`${sut.adminUrl}/backends`, { headers: { authorization: `Bearer ${TOKEN}` } })).json().backends as { name: string; probes: { passed: number } }[];
    writeFileSync(file, configText(backends, [{ name: 'b1' }, { name: 'b2' }]));
    const pool = async () => (await request(`${sut.adminUrl}/config`, { headers: { authorization: `Bearer ${TOKEN}` } })).json().config.pools.main.backends.map((b: { name: string; weight: number }) => `${b.name}:${b.weight}`).join(',');
    await pollUntil(pool, (p) => p === 'b1:1,b2:1', { timeoutMs: 2000, what: 'config with b1 and b2 in force' });
    const start = await version();
    const b1Before = await pollUntil(probes, (list) => (list.find((b) => b.name === 'b1')?.probes.passed ?? 0) >= 2, { timeoutMs: 5000, what: 'b1 probed twice' });
    writeFileSync(file, configText(backends, [{ name: 'b1', weight: 4 }, { name: 'b2' }]));
    await pollUntil(version, (v) => v !== start, { timeoutMs: 2000, what: 're-weight applied' });
    const b1After = (await probes()).find((b) => b.name === 'b1')!;
    assert.ok(b1After.probes.passed >= b1Before.find((b) => b.name === 'b1')!.probes.passed, 'probe counters survive the reload');
    assert.equal((b1After as unknown as { weight: number }).weight, 4);
  });

  it('reloads on POST /config/reload (token required) and on SIGHUP', async () => {
    writeFileSync(file, configText(backends, [{ name: 'b3' }]));
    // Whichever comes first, the watcher or the endpoint, applies it; the other finds it unchanged.
    const res = await request(`${sut.adminUrl}/config/reload`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(res.status, 200);
    assert.match(res.json().result, /^(success|unchanged)$/);
    assert.deepEqual([...(await servedBy('/p', 3))], ['b3']);
    assert.equal((await request(`${sut.adminUrl}/config/reload`, { method: 'POST' })).status, 401);

    const v = await version();
    writeFileSync(file, configText(backends, [{ name: 'b4' }]));
    process.emit('SIGHUP', 'SIGHUP');
    await pollUntil(version, (x) => x !== v, { timeoutMs: 2000, what: 'SIGHUP reload' });
    assert.deepEqual([...(await servedBy('/p', 3))], ['b4']);
  });

  it('leaves proxy.* as it was until a restart, routes included (maxBodySize)', async () => {
    const v = await version();
    writeFileSync(file, configText(backends, [{ name: 'b4' }], undefined, ', maxBodySize: 10'));
    await pollUntil(version, (x) => x !== v, { timeoutMs: 2000, what: 'the reload' });
    const upload = await request(`${sut.url}/p`, { method: 'POST', body: 'x'.repeat(100), headers: { 'content-type': 'text/plain' } });
    assert.equal(upload.status, 200, 'the limit from the reloaded file is not applied before a restart');
  });

  it('answers 422 with the problems when the file is broken, and keeps serving', async () => {
    writeFileSync(file, 'pools: {main: {backends: [{url: "http://127.0.0.1:1", weight: 0}]}}\n');
    const res = await request(`${sut.adminUrl}/config/reload`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(res.status, 422);
    assert.match(res.body, /weight/);
    assert.deepEqual([...(await servedBy('/p', 2))], ['b4']);
  });
});

describe('config file watch', () => {
  it('reparses on a change to the file, its symlink target or a ConfigMap `..` entry, and not on other files in its directory', async () => {
    const backends = await startBackends(1);
    const dir = mkdtempSync(join(tmpdir(), 'proxymity-watch-'));
    // The config is a symlink to a file beside it, as a deploy that swaps symlinks has it.
    const real = join(dir, 'proxymity-v1.yaml');
    const file = join(dir, 'proxymity.yaml');
    writeFileSync(real, configText(backends, [{ name: 'b1' }]));
    symlinkSync('proxymity-v1.yaml', file);
    // A second name for the same file outside the watched directory: a write through it changes
    // the config without any event in the directory, so a reparse shows as a refused reload.
    const link = join(mkdtempSync(join(tmpdir(), 'proxymity-watch-link-')), 'same-inode.yaml');
    linkSync(real, link);
    const sut = await startProxymity(loadConfigFile(file), { logger: false, configFile: file });
    const failures = async () => sample(await scrape(sut.adminUrl!, TOKEN), 'proxymity_config_reloads_total', { result: 'failure' });
    const refused = (n: number, what: string) => pollUntil(failures, (f) => f === n, { timeoutMs: 3000, what });
    try {
      writeFileSync(link, 'proxy: [broken\n');
      // Other files in the directory (an access log written there, notes): not the config.
      for (let i = 0; i < 3; i++) writeFileSync(join(dir, 'access.log'), `line ${i}\n`, { flag: 'a' });
      writeFileSync(join(dir, 'notes.txt'), 'x');
      await sleep(800); // four debounce periods
      assert.equal(await failures(), 0, 'a change to another file in the directory made the proxy reparse its config');
      // A ConfigMap's update: a new `..data` symlink renamed into place.
      symlinkSync('proxymity-v1.yaml', join(dir, '..data_tmp'));
      renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
      await refused(1, 'the ..data swap reparsed');
      // The file the symlink points to, written in place.
      writeFileSync(real, 'proxy: [still broken\n');
      await refused(2, 'a change to the symlink target reparsed');
      // The file's own name, replaced by a rename as config management does.
      writeFileSync(join(dir, '.proxymity.yaml.tmp'), 'proxy: [broken again\n');
      renameSync(join(dir, '.proxymity.yaml.tmp'), file);
      await refused(3, 'a rename onto the file reparsed');
      // Refused every time: the running config still serves.
      assert.equal((await request(`${sut.url}/still-serving`)).status, 200);
    } finally {
      await sut.close();
      await closeAll(backends);
    }
  });

  it('reparses when a link on the way to the file is swapped: a release directory, a link in a chain of links, the final file', async () => {
    const backends = await startBackends(1);
    const dir = mkdtempSync(join(tmpdir(), 'proxymity-watch-chain-'));
    const version = (weight: number) => configText(backends, [{ name: 'b1', weight }]);
    for (const r of ['r1', 'r2']) mkdirSync(join(dir, 'releases', r), { recursive: true });
    writeFileSync(join(dir, 'releases', 'r1', 'config.yaml'), version(1));
    writeFileSync(join(dir, 'releases', 'r2', 'config.yaml'), version(2));
    writeFileSync(join(dir, 'v3.yaml'), version(3));
    // proxymity.yaml -> stage.yaml -> current/config.yaml, current -> releases/r1
    symlinkSync('releases/r1', join(dir, 'current'));
    symlinkSync('current/config.yaml', join(dir, 'stage.yaml'));
    symlinkSync('stage.yaml', join(dir, 'proxymity.yaml'));
    /** `ln -sfn target name`: a new link renamed over the old one. */
    const swap = (target: string, name: string) => {
      symlinkSync(target, join(dir, `.${name}.tmp`));
      renameSync(join(dir, `.${name}.tmp`), join(dir, name));
    };
    const file = join(dir, 'proxymity.yaml');
    const sut = await startProxymity(loadConfigFile(file), { logger: false, configFile: file });
    const applied = async () => sample(await scrape(sut.adminUrl!, TOKEN), 'proxymity_config_reloads_total', { result: 'success' });
    const reloaded = (n: number, what: string) => pollUntil(applied, (a) => a === n, { timeoutMs: 3000, what });
    try {
      swap('releases/r2', 'current');
      await reloaded(1, 'the release directory link swapped');
      swap('v3.yaml', 'stage.yaml');
      await reloaded(2, 'a link in the middle of the chain swapped');
      writeFileSync(join(dir, 'v3.yaml'), version(4));
      await reloaded(3, 'the file at the end of the chain written');
    } finally {
      await sut.close();
      await closeAll(backends);
    }
  });

  it('a config directory removed and put back (a deploy that replaces it whole): keeps serving, then applies the new file', async () => {
    const backends = await startBackends(2);
    const dir = join(mkdtempSync(join(tmpdir(), 'proxymity-watch-dir-')), 'conf');
    mkdirSync(dir);
    const file = join(dir, 'proxymity.yaml');
    writeFileSync(file, configText(backends, [{ name: 'b1' }]));
    const sut = await startProxymity(loadConfigFile(file), { logger: false, configFile: file });
    const backendOf = async () => (await request(`${sut.url}/which`)).headers['x-backend'];
    try {
      assert.equal(await backendOf(), 'b1');
      rmSync(dir, { recursive: true });
      // The file's removal is a change: reading it fails, and the running config stays.
      await pollUntil(async () => sample(await scrape(sut.adminUrl!, TOKEN), 'proxymity_config_reloads_total', { result: 'failure' }), (f) => f === 1, { what: 'the missing file refused' });
      assert.equal(await backendOf(), 'b1', 'the running config serves while the directory is gone');
      mkdirSync(dir);
      writeFileSync(file, configText(backends, [{ name: 'b2' }]));
      await pollUntil(backendOf, (b) => b === 'b2', { timeoutMs: 10_000, what: 'the config in the new directory applied' });
      // And the new directory is watched: the next write is applied too.
      writeFileSync(file, configText(backends, [{ name: 'b1' }]));
      await pollUntil(backendOf, (b) => b === 'b1', { timeoutMs: 5000, what: 'a write in the new directory applied' });
    } finally {
      await sut.close();
      await closeAll(backends);
    }
  });
});

// Regression (chaos test): `x: *nope` appended to the config of a running proxy made toJS()
// throw a plain ReferenceError; SIGHUP and the watcher left the rejection unhandled, and cli.ts
// ended the process with exit 70. The admin endpoint answered 500. Real: the built CLI as a
// process, its signals, file watch, admin listener and a backend.
describe('regression: a YAML alias error on reload crashed the proxy (exit 70)', () => {
  it('refuses an unresolved alias on SIGHUP, the watcher and POST /config/reload, names it, and keeps serving the running config', async () => {
    const backends = await startBackends(1);
    const file = join(mkdtempSync(join(tmpdir(), 'proxymity-alias-')), 'proxymity.yaml');
    const text = configText(backends, [{ name: 'b1' }]);
    writeFileSync(file, text);
    const proc = spawnNode(MAIN, ['--config', file, '--log-format', 'json']);
    try {
      await pollUntil(() => listenUrl(proc.stdout()), (u) => u !== undefined, { timeoutMs: 15_000, what: `proxy start (stderr: ${proc.stderr()})` });
      const url = listenUrl(proc.stdout()) as string;
      const admin = listenUrl(proc.stdout(), 'admin on ') as string;
      const auth = { authorization: `Bearer ${TOKEN}` };
      const runningVersion = (await request(`${admin}/config`, { headers: auth })).json().version as string;
      const refusals = () =>
        proc
          .stdout()
          .split('\n')
          .filter((l) => l.startsWith('{'))
          .map((l) => JSON.parse(l) as { level: number; msg: string })
          .filter((e) => e.level === 50 && e.msg.startsWith('config reload ('));

      // The broken line, after the last line of the working config; the alias is at column 4.
      appendFileSync(file, 'x: *nope\n');
      const problem = `${file}:${text.split('\n').length}:4  x: YAML: alias *nope has no anchor &nope before it`;
      proc.child.kill('SIGHUP');
      const state = () => ({ exit: proc.child.exitCode, refused: refusals() });
      const after = await pollUntil(state, (x) => x.exit !== null || x.refused.some((e) => e.msg.startsWith('config reload (SIGHUP) refused')), { timeoutMs: 5000, what: 'the SIGHUP reload refused' });
      assert.equal(after.exit, null, `the proxy exited with ${after.exit} on SIGHUP:\n${proc.stdout()}${proc.stderr()}`);
      const sighup = after.refused.find((e) => e.msg.startsWith('config reload (SIGHUP) refused'))!;
      assert.equal(sighup.msg, `config reload (SIGHUP) refused, keeping version ${runningVersion}:\nInvalid ${file} (1 problem):\n  ${problem}`);
      // The watcher saw the append too; it is refused the same way.
      await pollUntil(refusals, (r) => r.some((e) => e.msg.startsWith('config reload (file change) refused')), { timeoutMs: 5000, what: 'the file-change reload refused' });

      const res = await request(`${admin}/config/reload`, { method: 'POST', headers: auth });
      assert.equal(res.status, 422, res.body);
      assert.equal(res.json().result, 'failure');
      assert.ok(res.json().details.includes(`  ${problem}`), res.body);

      // An alias bomb: refused with the limit named, by the endpoint and by the watcher.
      writeFileSync(file, `${text}a: &a [x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n`);
      const bomb = await request(`${admin}/config/reload`, { method: 'POST', headers: auth });
      assert.equal(bomb.status, 422, bomb.body);
      assert.match(bomb.body, /YAML: aliases expand too far: more than 100 copies of an anchored value/);

      assert.equal(proc.child.exitCode, null, `the proxy exited: ${proc.stdout()}`);
      assert.equal((await request(`${admin}/config`, { headers: auth })).json().version, runningVersion);
      const served = await request(`${url}/still-serving`);
      assert.equal(served.status, 200);
      assert.equal(served.json().backend, 'b1');
    } finally {
      proc.child.kill('SIGKILL');
      await proc.exited;
      await closeAll(backends);
    }
  });
});
