/**
 * Golden config files: the built app is started on each and must exit non-zero before
 * listening, printing exactly the expected message and no stack trace.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { MAIN, spawnNode } from '../helpers/processes.js';

// Fixtures live in the source tree (test/fixtures/config), next to this file's source.
const FIXTURES = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'test', 'fixtures', 'config');

describe('config errors at start-up', () => {
  for (const file of readdirSync(FIXTURES).filter((f) => f.endsWith('.yaml'))) {
    it(`${file}: exits 2 with the expected message`, async () => {
      const expected = readFileSync(join(FIXTURES, file.replace(/\.yaml$/, '.expected.txt')), 'utf8');
      // Run from the fixture folder so the file name in messages is the short one users typed.
      const proc = spawnNode(MAIN, ['--config', file], {}, FIXTURES);
      const exit = await proc.exited;
      assert.equal(exit.code, 2, `stdout: ${proc.stdout()}\nstderr: ${proc.stderr()}`);
      assert.equal(proc.stderr(), expected);
      assert.doesNotMatch(proc.stderr() + proc.stdout(), /\n\s+at /, 'no stack trace');
    });
  }

  it('names a missing file', async () => {
    const proc = spawnNode(MAIN, ['--config', '/nonexistent/proxymity.yaml']);
    assert.equal((await proc.exited).code, 2);
    assert.equal(proc.stderr(), 'Cannot read config file /nonexistent/proxymity.yaml: no such file\n');
  });

  it('reads the file named by PROXYMITY_CONFIG when --config is absent', async () => {
    const proc = spawnNode(MAIN, [], { PROXYMITY_CONFIG: '/nonexistent/from-env.yaml' });
    assert.equal((await proc.exited).code, 2);
    assert.match(proc.stderr(), /from-env\.yaml: no such file/);
  });

  it('rejects an unknown log level', async () => {
    const proc = spawnNode(MAIN, ['--log-level', 'chatty']);
    assert.equal((await proc.exited).code, 2);
    assert.match(proc.stderr(), /--log-level: unknown "chatty"/);
  });

  it('reports a port already in use without a stack trace', async () => {
    await assertPortInUseReported((port) => `proxy: {host: 127.0.0.1, port: ${port}}\n`, (port) => `cannot listen on 127\\.0\\.0\\.1:${port}: EADDRINUSE`);
  });
});

describe('command line', () => {
  it('reports an admin port already in use, naming the admin listener', async () => {
    await assertPortInUseReported((port) => `proxy: {host: 127.0.0.1, port: 0}\nadmin: {port: ${port}}\n`, (port) => `cannot listen on admin 127\\.0\\.0\\.1:${port}: EADDRINUSE`);
  });

  it('logs JSON lines when stdout is not a terminal, human-readable lines with --log-format pretty', async () => {
    const { writeTempConfig } = await import('../helpers/processes.js');
    const file = writeTempConfig('proxy: {host: 127.0.0.1, port: 0}\nbackend:\n  - url: http://127.0.0.1:1\nhealthCheck: {interval: 1h}\n');
    for (const format of ['auto', 'pretty']) {
      const proc = spawnNode(MAIN, ['--config', file, '--log-format', format]);
      const { pollUntil } = await import('../helpers/poll-until.js');
      await pollUntil(() => proc.stdout(), (o) => o.includes('listening on'), { what: `start (${format})` });
      proc.child.kill('SIGTERM');
      assert.equal((await proc.exited).code, 0);
      const line = proc.stdout().split('\n').find((l) => l.includes('listening on')) as string;
      if (format === 'auto') {
        const entry = JSON.parse(line);
        assert.equal(entry.level, 30);
        assert.equal(entry.context, 'Proxymity');
        assert.match(entry.msg, /^listening on http:\/\/127\.0\.0\.1:\d+, 1 backend\(s\), strategy round-robin, admin on http:\/\/127\.0\.0\.1:\d+$/);
        assert.ok(!Number.isNaN(Date.parse(entry.time)));
      } else {
        assert.throws(() => JSON.parse(line));
        assert.match(line, /INFO.*\[Proxymity\] listening on http:\/\/127\.0\.0\.1:\d+/);
      }
    }
  });

  it('rejects an unknown log format', async () => {
    const proc = spawnNode(MAIN, ['--log-format', 'xml']);
    assert.equal((await proc.exited).code, 2);
    assert.match(proc.stderr(), /--log-format: unknown "xml"; expected one of auto, json, pretty/);
  });

  it('rejects an unknown argument with the usage text and exit code 2', async () => {
    const proc = spawnNode(MAIN, ['--confg', 'x.yaml']);
    assert.equal((await proc.exited).code, 2);
    assert.match(proc.stderr(), /^unknown argument "--confg"\n\nUsage: proxymity/);
  });

  it('prints the usage text for --help and exits 0', async () => {
    const proc = spawnNode(MAIN, ['--help']);
    assert.equal((await proc.exited).code, 0);
    assert.match(proc.stdout(), /--log-level LEVEL/);
  });
});

/** Occupies a port, starts the proxy with `listeners(port)` as its listener config, and expects exit 1 with `message(port)`. */
async function assertPortInUseReported(listeners: (port: number) => string, message: (port: number) => string): Promise<void> {
  const net = await import('node:net');
  const blocker = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => blocker.once('listening', r));
  const port = (blocker.address() as import('node:net').AddressInfo).port;
  const { writeTempConfig } = await import('../helpers/processes.js');
  const file = writeTempConfig(`${listeners(port)}backend:\n  - url: http://127.0.0.1:1\n`);
  const proc = spawnNode(MAIN, ['--config', file, '--log-level', 'error']);
  try {
    assert.equal((await proc.exited).code, 1);
    assert.match(proc.stderr(), new RegExp(message(port)));
    assert.doesNotMatch(proc.stderr(), /\n\s+at /);
  } finally {
    blocker.close();
  }
}
