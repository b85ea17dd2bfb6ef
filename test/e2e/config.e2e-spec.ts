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
    const net = await import('node:net');
    const blocker = net.createServer().listen(0, '127.0.0.1');
    await new Promise((r) => blocker.once('listening', r));
    const port = (blocker.address() as import('node:net').AddressInfo).port;
    const { writeTempConfig } = await import('../helpers/processes.js');
    const file = writeTempConfig(`proxy: {host: 127.0.0.1, port: ${port}}\nbackend:\n  - url: http://127.0.0.1:1\n`);
    const proc = spawnNode(MAIN, ['--config', file, '--log-level', 'error']);
    try {
      assert.equal((await proc.exited).code, 1);
      assert.match(proc.stderr(), new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port}: EADDRINUSE`));
      assert.doesNotMatch(proc.stderr(), /\n\s+at /);
    } finally {
      blocker.close();
    }
  });
});

describe('command line', () => {
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
