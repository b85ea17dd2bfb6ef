import { parseConfig } from '../../src/config/index.js';
import { startProxymity, type RunningProxymity } from '../../src/proxymity.js';
import { after, before } from 'node:test';
import { closeAll, type DummyBackend, startBackends } from '../fixtures/backend-server.js';
import { withAdminPortZero } from './processes.js';

/**
 * Starts the real application on 127.0.0.1:0 in front of `backends`. `extraYaml` is appended
 * to the generated config (top-level keys other than proxy/backend).
 */
export async function startProxy(backends: readonly DummyBackend[] | readonly string[], extraYaml = '', proxyYaml = ''): Promise<RunningProxymity> {
  const urls = backends.map((b) => (typeof b === 'string' ? b : b.url));
  const yaml = [
    'proxy:',
    '  host: 127.0.0.1',
    '  port: 0',
    proxyYaml,
    'backend:',
    ...urls.map((u, i) => `  - name: b${i + 1}\n    url: "${u}"`),
    extraYaml,
  ].join('\n');
  const config = parseConfig(withAdminPortZero(yaml), 'test.yaml');
  const level = process.env.TEST_LOG_LEVEL;
  return startProxymity(config, { logger: level ? ['fatal', 'error', 'warn', 'log', 'debug'].slice(0, ['fatal', 'error', 'warn', 'log', 'debug'].indexOf(level) + 1) as any : false });
}

/**
 * A suite's shared proxy: starts `n` real backends and the app in `before`, closes both in
 * `after`. Read `fx.sut` and `fx.backends` inside tests (they exist once `before` ran).
 */
export function proxyFixture(n: number, extraYaml = '', proxyYaml = ''): { sut: RunningProxymity; backends: DummyBackend[] } {
  const fx = {} as { sut: RunningProxymity; backends: DummyBackend[] };
  before(async () => {
    fx.backends = await startBackends(n);
    fx.sut = await startProxy(fx.backends, extraYaml, proxyYaml);
  });
  after(async () => {
    await fx.sut.close();
    await closeAll(fx.backends);
  });
  return fx;
}
