import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError } from './config.errors.js';
import { MAX_ALIAS_COUNT, parseConfig, resolveConfigPath, suggest } from './config.loader.js';

const SEED = `
proxy:
  host: "0.0.0.0"
  port: "8080"
backend:
  - name: "backend-1"
    url: "http://localhost:8081"
    enabled: true
  - name: "backend-2"
    url: "http://localhost:8082"
    enabled: false
`;

function problems(yaml: string): string {
  try {
    parseConfig(yaml, 'config.yaml');
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`);
    return err.message;
  }
  assert.fail('expected the config to be rejected');
}

describe('parseConfig', () => {
  it('accepts the seed format unchanged, with the port as a string', () => {
    const sut = parseConfig(SEED);
    assert.equal(sut.proxy.port, 8080);
    assert.equal(sut.proxy.host, '0.0.0.0');
    assert.deepEqual(sut.backend.map((b) => [b.name, b.url, b.enabled]), [
      ['backend-1', 'http://localhost:8081', true],
      ['backend-2', 'http://localhost:8082', false],
    ]);
  });

  it('fills documented defaults and converts durations to milliseconds', () => {
    const sut = parseConfig(SEED);
    assert.equal(sut.proxy.shutdownTimeout, 30_000);
    assert.equal(sut.healthCheck.interval, 10_000);
    assert.equal(sut.healthCheck.timeout, 2000);
    assert.equal(sut.healthCheck.healthyThreshold, 2);
    assert.equal(sut.healthCheck.unhealthyThreshold, 3);
    assert.equal(sut.upstream.connectTimeout, 5000);
    assert.equal(sut.upstream.timeout, 60_000);
    assert.equal(sut.loadBalancer.strategy, 'round-robin');
  });

  it('accepts durations as "500ms", "1.5s", "2m" and plain milliseconds', () => {
    const sut = parseConfig(`${SEED}\nhealthCheck: {interval: 2m, timeout: 500ms}\nupstream: {timeout: 1.5s, connectTimeout: 250}\n`);
    assert.equal(sut.healthCheck.interval, 120_000);
    assert.equal(sut.healthCheck.timeout, 500);
    assert.equal(sut.upstream.timeout, 1500);
    assert.equal(sut.upstream.connectTimeout, 250);
  });

  it('names a backend by host:port when it has no name', () => {
    const sut = parseConfig('backend:\n  - url: http://127.0.0.1:9000\n');
    assert.equal(sut.backend[0].name, '127.0.0.1:9000');
    assert.equal(sut.proxy.port, 8080);
  });

  it('freezes the result', () => {
    const sut = parseConfig(SEED);
    assert.throws(() => {
      (sut.proxy as { port: number }).port = 1;
    }, TypeError);
  });

  it('rejects a URL without a scheme, naming file, line, column, path and value', () => {
    const msg = problems('backend:\n  - name: a\n    url: "localhost:8082"\n');
    assert.match(msg, /config\.yaml:3:10 {2}backend\[0\]\.url: "localhost:8082" is not an http\(s\) URL/);
  });

  it('reports every problem at once, in file order', () => {
    const msg = problems(`proxy:\n  port: 99999\nbackend:\n  - name: a\n    url: ftp://x\nhealthCheck:\n  interval: 50ms\n`);
    assert.match(msg, /^Invalid config\.yaml \(3 problems\):/);
    const lines = msg.split('\n').slice(1);
    assert.match(lines[0], /config\.yaml:2:9 {2}proxy\.port: expected a port number from 0 to 65535, got 99999/);
    assert.match(lines[1], /config\.yaml:5:10 {2}backend\[0\]\.url: "ftp:\/\/x" is not an http\(s\) URL/);
    assert.match(lines[2], /config\.yaml:7:13 {2}healthCheck\.interval: must be between 1s and 1h \(got "50ms"\)/);
  });

  it('rejects duplicate backend names, pointing at the second', () => {
    const msg = problems('backend:\n  - name: a\n    url: http://h:1\n  - name: a\n    url: http://h:2\n');
    assert.match(msg, /config\.yaml:4:11 {2}backend\[1\]\.name: duplicate backend name "a" \(also backend\[0\]\)/);
  });

  it('suggests the intended key for a typo', () => {
    const msg = problems(`${SEED}\nhealthCheck:\n  intervall: 5s\n`);
    assert.match(msg, /config\.yaml:14:3 {2}healthCheck\.intervall: unknown key; did you mean "interval"\?/);
  });

  it('rejects an unknown top-level key', () => {
    assert.match(problems(`${SEED}\nbackends: []\n`), /backends: unknown key; did you mean "backend"\?/);
  });

  it('rejects an empty backend list', () => {
    assert.match(problems('backend: []\n'), /backend: at least one backend is required/);
  });

  it('rejects a config with neither a backend list nor pools, once', () => {
    const text = problems('proxy:\n  port: 80\n');
    assert.match(text, /no backends: give a "backend" list \(the seed format\) or "pools"/);
    assert.equal(text.match(/no backends/g)?.length, 1);
  });

  it('rejects a config whose backends are all disabled', () => {
    assert.match(problems('backend:\n  - url: http://h:1\n    enabled: false\n'), /every backend is disabled/);
  });

  it('rejects an unknown strategy, listing the valid names', () => {
    assert.match(problems(`${SEED}\nloadBalancer: {strategy: least_con}\n`), /loadBalancer\.strategy: unknown "least_con"; expected one of round-robin/);
  });

  it('reports YAML syntax errors with their position', () => {
    assert.match(problems('proxy:\n  port: [8080\nbackend: x\n'), /config\.yaml:\d+:\d+ {2}YAML: /);
  });

  it('rejects duplicate keys', () => {
    assert.match(problems('backend:\n  - url: http://h:1\nbackend:\n  - url: http://h:2\n'), /YAML: Map keys must be unique/);
  });

  it('rejects a header value Node could not write (a line break, a control character, a space at an end), wherever the proxy writes one', () => {
    // A YAML block scalar keeps its final line break: `hsts: |` would crash the answer to /health, and
    // a route's header change would make every response through it a 502 blamed on the backend.
    const msg = problems(
      'backend:\n  - url: http://h:1\n' +
        'listeners:\n  - {port: 8443, protocol: https, certificates: [{cert: /x.crt, key: /x.key}], hsts: "max-age=1\\r\\nx-injected: yes"}\n' +
        'routes:\n  - responseHeaders: {set: {x-a: "a\\u0000b"}, add: {x-b: " padded"}}\n' +
        'healthCheck:\n  headers: {x-c: "tab at the end\\t"}\n',
    );
    for (const path of ['listeners[0].hsts', 'routes[0].responseHeaders.set.x-a', 'routes[0].responseHeaders.add.x-b', 'healthCheck.headers.x-c']) {
      assert.match(msg, new RegExp(`${path.replace(/[[\].]/g, '\\$&')}: must be one header value: visible ASCII or Latin-1 characters and spaces, no line break or other control character, no space at either end`), path);
    }
    // The likeliest way to get a line break: a YAML block scalar. The message says so.
    assert.match(
      problems('backend:\n  - url: http://h:1\nhealthCheck:\n  headers:\n    x-d: |\n      value\n'),
      /healthCheck\.headers\.x-d: must be one header value: .* \(a YAML \| or > block keeps its final line break: write the value in quotes\)/,
    );
    // What operators write passes: directives, quotes, commas, a tab inside, Latin-1 letters, an empty value.
    parseConfig(
      'backend:\n  - url: http://h:1\n' +
        'routes:\n  - pool: default\n    responseHeaders: {set: {content-security-policy: "default-src \'self\'; script-src \'nonce-abc\'", cache-control: "public, max-age=60", x-tab: "a\\tb", x-latin1: "café", x-empty: ""}}\n',
      'config.yaml',
    );
  });

  it('rejects a wrong type with the value it got', () => {
    assert.match(problems('backend:\n  - url: http://h:1\n    enabled: "yes"\n'), /backend\[0\]\.enabled: expected boolean, got "yes"/);
  });
});

describe('resolveConfigPath', () => {
  it('prefers --config, then PROXYMITY_CONFIG, then ./config.yaml', () => {
    assert.equal(resolveConfigPath(['--config', 'a.yaml'], { PROXYMITY_CONFIG: 'b.yaml' }), 'a.yaml');
    assert.equal(resolveConfigPath(['--config=c.yaml'], {}), 'c.yaml');
    assert.equal(resolveConfigPath([], { PROXYMITY_CONFIG: 'b.yaml' }), 'b.yaml');
    assert.equal(resolveConfigPath([], {}), 'config.yaml');
  });

  it('rejects --config without a value', () => {
    assert.throws(() => resolveConfigPath(['--config'], {}), /--config needs a file name/);
  });
});

describe('suggest', () => {
  it('returns the closest key within a small distance, else nothing', () => {
    assert.equal(suggest('helthCheck', ['healthCheck', 'proxy']), 'healthCheck');
    assert.equal(suggest('zzz', ['healthCheck', 'proxy']), undefined);
  });
});

describe('parseConfig: health check options', () => {
  it('normalises expectStatus to ranges and merges nothing by itself', () => {
    const sut = parseConfig(`${SEED}\nhealthCheck: {expectStatus: [200, "300-302"], method: HEAD, jitter: 500ms, unhealthyInterval: 2s}\n`);
    assert.deepEqual(sut.healthCheck.expectStatus, [[200, 200], [300, 302]]);
    assert.equal(sut.healthCheck.method, 'HEAD');
    assert.equal(sut.healthCheck.jitter, 500);
    assert.equal(sut.healthCheck.unhealthyInterval, 2000);
    assert.deepEqual(parseConfig(SEED).healthCheck.expectStatus, [[200, 399]]);
  });

  it('accepts per-backend overrides and rejects unknown keys there with a hint', () => {
    const sut = parseConfig('backend:\n  - url: http://h:1\n    healthCheck: {path: /ready, port: 9000}\n');
    assert.equal(sut.backend[0].healthCheck?.path, '/ready');
    assert.match(problems('backend:\n  - url: http://h:1\n    healthCheck: {pth: /ready}\n'), /backend\[0\]\.healthCheck\.pth: unknown key; did you mean "path"\?/);
  });

  it('rejects a bad status, a bad regex and a regex with unsupported flags', () => {
    assert.match(problems(`${SEED}\nhealthCheck: {expectStatus: "2xx"}\n`), /healthCheck\.expectStatus/);
    assert.match(problems(`${SEED}\nhealthCheck: {expectBody: "/([a-/"}\n`), /healthCheck\.expectBody: invalid regular expression/);
    assert.match(problems(`${SEED}\nhealthCheck: {expectBody: "/ok/g"}\n`), /healthCheck\.expectBody: invalid regular expression/);
  });
});

describe('parseConfig: environment variables', () => {
  const env = { PORT: '9090', HOST: '10.0.0.5', EMPTY: '' };
  it('replaces ${NAME} and ${NAME:-default} in values, typed when a value is one reference', () => {
    const cfg = parseConfig('proxy:\n  port: ${PORT}\n  host: "${HOST}"\nbackend:\n  - url: "http://${HOST}:${BPORT:-8081}/api"\n    weight: ${W:-3}\n    enabled: ${ON:-true}\n', 'env.yaml', env);
    assert.equal(cfg.proxy.port, 9090);
    assert.equal(cfg.proxy.host, '10.0.0.5');
    assert.equal(cfg.backend[0].url, 'http://10.0.0.5:8081/api');
    assert.equal(cfg.backend[0].weight, 3);
    assert.equal(cfg.backend[0].enabled, true);
  });

  it('names every unset variable with its position and key path, and treats empty as unset', () => {
    assert.throws(
      () => parseConfig('backend:\n  - url: "http://${NOPE}:${EMPTY}"\n', 'env.yaml', env),
      (err: ConfigError) =>
        /env\.yaml:2:10 {2}backend\[0\]\.url: environment variable NOPE is not set \(write \$\{NOPE:-default\} to give a default\)/.test(err.message) && /EMPTY is not set/.test(err.message),
    );
  });

  it('keeps $${ as a literal ${ and never touches keys', () => {
    const cfg = parseConfig('backend:\n  - url: "http://127.0.0.1:1"\n    healthCheck: {headers: {x-tpl: "$${KEEP}"}}\n', 'env.yaml', env);
    assert.equal(cfg.backend[0].healthCheck?.headers?.['x-tpl'], '${KEEP}');
  });
});

// Regression (chaos test): `x: *nope` appended to a running proxy's config, or a small alias
// bomb, made toJS() throw a plain ReferenceError that a reload did not catch: exit 70.
describe('parseConfig: YAML aliases (regression: alias error on reload crashed the proxy)', () => {
  /** Three levels of anchors, each used ten times: 1000 values from four short lines. */
  const BOMB = 'a: &a [x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n';
  /** `n` uses of one anchor, as health-check headers (a place where they are valid). */
  const uses = (n: number) => `${SEED}healthCheck:\n  headers:\n    x-0: &v "1"\n${Array.from({ length: n }, (_, i) => `    x-${i + 1}: *v\n`).join('')}`;

  it('rejects an alias with no anchor as a ConfigError naming file, line, column, key and alias', () => {
    assert.match(problems(`${SEED}x: *nope\n`), /config\.yaml:12:4 {2}x: YAML: alias \*nope has no anchor &nope before it/);
  });

  it('reports every unresolved alias at once, including one used before its anchor', () => {
    const msg = problems('backend:\n  - url: *u\n  - url: &u http://h:1\n    name: b\nhealthCheck: {path: *p}\n');
    assert.match(msg, /^Invalid config\.yaml \(2 problems\):/);
    assert.match(msg, /config\.yaml:2:10 {2}backend\[0\]\.url: YAML: alias \*u has no anchor &u before it/);
    assert.match(msg, /config\.yaml:5:21 {2}healthCheck\.path: YAML: alias \*p has no anchor &p before it/);
  });

  it('still accepts aliases that resolve', () => {
    const sut = parseConfig('backend:\n  - {name: a, url: &u "http://h:1"}\n  - {name: b, url: *u}\n');
    assert.deepEqual(sut.backend.map((b) => b.url), ['http://h:1', 'http://h:1']);
  });

  it(`rejects an alias bomb as a ConfigError naming the file and the limit (${MAX_ALIAS_COUNT})`, () => {
    assert.match(problems(BOMB), /^Invalid config\.yaml \(1 problem\):\n {2}config\.yaml {2}YAML: aliases expand too far: more than 100 copies of an anchored value/);
  });

  it(`allows ${MAX_ALIAS_COUNT} copies of an anchored value (the anchor and ${MAX_ALIAS_COUNT - 1} aliases) and refuses one more`, () => {
    assert.equal(Object.keys(parseConfig(uses(MAX_ALIAS_COUNT - 1)).healthCheck.headers ?? {}).length, MAX_ALIAS_COUNT);
    assert.match(problems(uses(MAX_ALIAS_COUNT)), /YAML: aliases expand too far: more than 100 copies/);
  });
});
