import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** The proxy's entry point as the tests build it (same source as dist/main.js). */
export const MAIN = join(ROOT, 'src', 'main.js');
export const DUMMIES = join(ROOT, 'dummies', 'main.js');

/**
 * Writes a config to a fresh temp dir. Unless the config sets `admin`, the admin listener gets
 * port 0, so suites running in parallel never collide on the default 9901.
 */
export function writeTempConfig(yaml: string, name = 'config.yaml'): string {
  const dir = mkdtempSync(join(tmpdir(), 'proxymity-test-'));
  const file = join(dir, name);
  writeFileSync(file, withAdminPortZero(yaml));
  return file;
}

export interface Spawned {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Runs `node [nodeFlags] script args` with piped output. */
export function spawnNode(script: string, args: string[], env: NodeJS.ProcessEnv = {}, cwd?: string, nodeFlags: readonly string[] = []): Spawned {
  const child = spawn(process.execPath, [...nodeFlags, script, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], cwd });
  let out = '';
  let err = '';
  child.stdout?.on('data', (d) => (out += d));
  child.stderr?.on('data', (d) => (err += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  return { child, stdout: () => out, stderr: () => err, exited };
}

/** Reads "... listening on http://host:port" from a child's output. */
export function listenUrl(output: string, marker = 'listening on '): string | undefined {
  const i = output.lastIndexOf(marker);
  if (i < 0) return undefined;
  return /^(http:\/\/\S+?:\d+)/.exec(output.slice(i + marker.length))?.[1];
}

/** Peak and current resident memory of a process, in MiB (Linux /proc). */
export async function memoryMiB(pid: number): Promise<{ rss: number; peak: number }> {
  const { readFile } = await import('node:fs/promises');
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rss: kb('VmRSS') / 1024, peak: kb('VmHWM') / 1024 };
}

/** Appends `admin: {port: 0}` to a config that has no `admin` key. */
export function withAdminPortZero(yaml: string): string {
  return /^admin:/m.test(yaml) ? yaml : `${yaml}${yaml.endsWith('\n') ? '' : '\n'}admin: {port: 0}\n`;
}
