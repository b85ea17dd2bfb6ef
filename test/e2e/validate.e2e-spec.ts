/**
 * `proxymity validate` and `proxymity schema`, run as the built CLI; `--diff` against a real
 * running instance's admin listener.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { loadConfigFile } from '../../src/config/index.js';
import { startProxymity, type RunningProxymity } from '../../src/proxymity.js';
import { MAIN, spawnNode, writeTempConfig } from '../helpers/processes.js';

const TOKEN = 'validate-test-admin-token';
const running = `admin: {port: 0, token: ${TOKEN}}
pools:
  api:
    backends:
      - {name: a1, url: "http://127.0.0.1:9001"}
      - {name: a2, url: "http://127.0.0.1:9002"}
  web:
    backends:
      - {name: w1, url: "http://127.0.0.1:9003"}
routes:
  - {match: {path: /api/}, pool: api, stripPrefix: /api}
  - {pool: web}
healthCheck: {enabled: false}
`;

describe('proxymity validate', () => {
  let sut: RunningProxymity;
  before(async () => {
    const file = writeTempConfig(running);
    sut = await startProxymity(loadConfigFile(file), { logger: false, configFile: file });
  });
  after(() => sut.close());

  it('prints a summary of the effective config and exits 0', async () => {
    const proc = spawnNode(MAIN, ['validate', '--config', writeTempConfig(running)]);
    assert.equal((await proc.exited).code, 0, proc.stderr());
    const out = proc.stdout();
    assert.match(out, /: valid \(version [0-9a-f]{16}\)/);
    assert.match(out, /pools \(2\):\n {2}api: round-robin; health checks off\n {4}- a1 http:\/\/127\.0\.0\.1:9001 weight 1\n/);
    assert.match(out, /routes \(2, first match wins\):\n {2}1\. route-1: path \/api\/\* -> api \(strip \/api\)\n {2}2\. route-2: every request -> web/);
  });

  it('exits 1 with every problem when the config is invalid', async () => {
    const proc = spawnNode(MAIN, ['validate', '--config', writeTempConfig('pools: {a: {backends: [{url: "nope"}]}}\nroutes: [{pool: b}]\n')]);
    assert.equal((await proc.exited).code, 1);
    assert.match(proc.stderr(), /\(2 problems\)/);
    assert.match(proc.stderr(), /routes\[0\]\.pool: no pool named "b"/);
    assert.equal(proc.stdout(), '');
  });

  // Regression: a YAML alias error made validate exit 70 with a stack trace.
  it('exits 1 naming file:line:column for an alias with no anchor, and the limit for an alias bomb', async () => {
    const file = writeTempConfig(`${running}x: *nope\n`);
    const proc = spawnNode(MAIN, ['validate', '--config', file]);
    assert.equal((await proc.exited).code, 1, proc.stderr());
    assert.equal(proc.stderr(), `Invalid ${file} (1 problem):\n  ${file}:${running.split('\n').length}:4  x: YAML: alias *nope has no anchor &nope before it\n`);
    const bomb = spawnNode(MAIN, ['validate', '--config', writeTempConfig(`${running}a: &a [x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n`)]);
    assert.equal((await bomb.exited).code, 1, bomb.stderr());
    assert.match(bomb.stderr(), /^Invalid \S+ \(1 problem\):\n {2}\S+config\.yaml {2}YAML: aliases expand too far: more than 100 copies of an anchored value/);
    assert.equal(proc.stdout() + bomb.stdout(), '');
  });

  it('--diff shows what would change against the running instance', async () => {
    const next = running
      .replace('      - {name: a2, url: "http://127.0.0.1:9002"}\n', '      - {name: a2, url: "http://127.0.0.1:9002", weight: 3}\n      - {name: a3, url: "http://127.0.0.1:9004"}\n')
      .replace('      - {name: w1, url: "http://127.0.0.1:9003"}\n', '      - {name: w2, url: "http://127.0.0.1:9005"}\n')
      .replace('  - {pool: web}\n', '  - {match: {host: "*.example.com"}, pool: web}\n');
    const proc = spawnNode(MAIN, ['validate', '--config', writeTempConfig(next), '--diff', '--admin', sut.adminUrl!, '--token', TOKEN]);
    assert.equal((await proc.exited).code, 0, proc.stderr());
    const diff = proc.stdout().split('diff against the running config')[1];
    assert.ok(diff, proc.stdout());
    for (const line of ['~ backend a2: weight 1 -> 3', '+ backend a3 http://127.0.0.1:9004 in pool api', '+ backend w2 http://127.0.0.1:9005 in pool web', '- backend w1 from pool web', '~ route 2 route-2: every request -> web  =>  host *.example.com -> web']) {
      assert.ok(diff.includes(line), `missing "${line}" in:\n${diff}`);
    }
    assert.ok(!diff.includes('! admin changed'), 'the redacted token is not a change');
  });

  it('--diff says so when nothing changes, and fails clearly without the token', async () => {
    const same = spawnNode(MAIN, ['validate', '--config', writeTempConfig(running), '--diff', '--admin', sut.adminUrl!, '--token', TOKEN]);
    assert.equal((await same.exited).code, 0);
    assert.match(same.stdout(), /diff against the running config \(version [0-9a-f]{16}\):\n {2}no changes\n/);
    const denied = spawnNode(MAIN, ['validate', '--config', writeTempConfig(running.replace(`, token: ${TOKEN}`, '')), '--diff', '--admin', sut.adminUrl!], { PROXYMITY_ADMIN_TOKEN: '' });
    assert.equal((await denied.exited).code, 1);
    assert.match(denied.stderr(), /answered 401 \(give --token\)/);
  });
});

describe('proxymity schema', () => {
  it('prints the JSON Schema that config.schema.json holds', async () => {
    const proc = spawnNode(MAIN, ['schema']);
    assert.equal((await proc.exited).code, 0);
    const schema = JSON.parse(proc.stdout());
    assert.equal(schema.title, 'Proxymity config.yaml');
    assert.ok(schema.properties.routes && schema.properties.pools && schema.properties.backend);
    const committed = readFileSync(new URL('../../../config.schema.json', import.meta.url), 'utf8');
    assert.equal(proc.stdout(), committed);
  });
});
