import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Writes a Proxymity config for the bench into `<tmp>/config/`, a directory nothing else writes
 * to, and returns its path. The proxy watches its config file's directory, and every write there
 * wakes it (h2load's per-request log, an access log, a process's output); the bare script watches
 * nothing, so whatever is written beside the config would be billed to Proxymity alone.
 * Deployments keep their config apart from what they write too (/etc against /var/log).
 */
export function writeProxymityConfig(tmp: string, name: string, text: string): string {
  const dir = join(tmp, 'config');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${name}.yaml`);
  writeFileSync(file, text);
  return file;
}
