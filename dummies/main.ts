/**
 * `npm run dummies [-- --ports 8081,8082,8083] [--host localhost] [--names a,b,c]`: starts test
 * backends (named backend-1, backend-2, ... unless --names is given) until Ctrl-C.
 */
import { DummyBackend } from './dummy-backend.js';

export async function startDummies(ports: number[], host: string, names: string[] = []): Promise<DummyBackend[]> {
  return Promise.all(ports.map((port, i) => new DummyBackend({ name: names[i] ?? `backend-${i + 1}` }).listen(port, host)));
}

export function parseArgs(argv: string[]): { ports: number[]; host: string; names: string[] } {
  const get = (flag: string) => {
    const i = argv.indexOf(flag);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const ports = (get('--ports') ?? '8081,8082,8083').split(',').map((p) => Number(p.trim()));
  if (ports.some((p) => !Number.isInteger(p) || p < 0 || p > 65535)) throw new Error(`--ports: expected a comma-separated list of ports, got "${get('--ports')}"`);
  return { ports, host: get('--host') ?? 'localhost', names: (get('--names') ?? '').split(',').filter(Boolean) };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { ports, host, names } = parseArgs(process.argv.slice(2));
  const dummies = await startDummies(ports, host, names);
  for (const d of dummies) console.log(`${d.name} listening on ${d.url}`);
  const stop = () => Promise.all(dummies.map((d) => d.close())).then(() => process.exit(0));
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}
