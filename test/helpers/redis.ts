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

/** How many clients other than this probe are connected to the redis-server on `port` (CLIENT LIST). */
export function redisClients(port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const c = net.connect(port, '127.0.0.1', () => c.write('CLIENT LIST\r\n'));
    let text = '';
    c.on('data', (d) => {
      text += d.toString();
      // A bulk string: $<length>\r\n<body>\r\n
      const m = /^\$(\d+)\r\n/.exec(text);
      if (m !== null && text.length >= m[0].length + Number(m[1]) + 2) {
        c.destroy();
        const lines = text.slice(m[0].length, m[0].length + Number(m[1])).split('\n').filter((l) => l.startsWith('id='));
        resolve(lines.length - 1);
      }
    });
    c.once('error', reject);
  });
}
