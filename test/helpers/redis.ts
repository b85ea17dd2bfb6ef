import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { freePort } from './ports.js';

/** A real redis-server (Debian's package; .ci/run installs it) on a free loopback port. */
export interface RedisProcess {
  readonly port: number;
  readonly url: string;
  stop(): Promise<void>;
}

/** Starts redis-server (on `port`, or a free one) without persistence, and waits for PONG. */
export async function startRedis(port?: number): Promise<RedisProcess> {
  const p = port ?? (await freePort());
  const child: ChildProcess = spawn('redis-server', ['--port', String(p), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.once('error', () => undefined);
  const deadline = Date.now() + 10_000;
  for (;;) {
    const pong = await new Promise<boolean>((resolve) => {
      const c = net.connect(p, '127.0.0.1', () => c.write('PING\r\n'));
      c.once('data', (d) => (c.destroy(), resolve(d.toString().startsWith('+PONG'))));
      c.once('error', () => resolve(false));
    });
    if (pong) break;
    if (Date.now() > deadline) throw new Error(`redis-server did not answer on port ${p} (is the redis-server package installed?)`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port: p,
    url: `redis://127.0.0.1:${p}`,
    stop: async () => {
      child.kill('SIGKILL');
      await exited;
    },
  };
}
