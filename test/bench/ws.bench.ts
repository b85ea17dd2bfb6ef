/**
 * WebSocket messages per second, direct to a backend and through Proxymity (a separate
 * process, default config), interleaved over rounds. The backend is the dummies' /ws echo
 * (Node, `ws`) in its own process; each client sends a message, waits for its echo, repeats.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeProxymityConfig } from './config-file.js';
import { START_FLAGS } from '../../src/heap-tuning.js';
import { join } from 'node:path';
import WebSocket from 'ws';
import { freePort, waitForPort } from '../helpers/ports.js';

export interface WsBenchOptions {
  root: string;
  tmp: string;
  rounds: number;
  durationS: number;
  clients: number;
  messageBytes: number;
}

export interface WsBenchResult {
  direct: number;
  proxymity: number;
  clients: number;
  messageBytes: number;
}

/** Echo round trips completed in `durationS` by `clients` ping-pong clients. */
async function measure(url: string, clients: number, durationS: number, payload: Buffer): Promise<number> {
  const sockets = await Promise.all(
    Array.from({ length: clients }, () => new Promise<WebSocket>((resolve, reject) => {
      const ws = new WebSocket(url, { perMessageDeflate: false });
      ws.once('open', () => resolve(ws));
      ws.once('error', reject);
    })),
  );
  let count = 0;
  let running = true;
  for (const ws of sockets) {
    ws.on('message', () => {
      count++;
      if (running) ws.send(payload);
    });
    ws.send(payload);
  }
  await new Promise((r) => setTimeout(r, durationS * 1000));
  running = false;
  const total = count;
  for (const ws of sockets) ws.terminate();
  return total / durationS;
}

export async function benchWebSocket(o: WsBenchOptions): Promise<WsBenchResult> {
  const backendPort = await freePort();
  const procs: ChildProcess[] = [];
  try {
    procs.push(spawn(process.execPath, [join(o.root, 'build', 'dummies', 'main.js'), '--ports', String(backendPort), '--host', '127.0.0.1'], { stdio: 'ignore' }));
    const pxPort = await freePort();
    const cfg = writeProxymityConfig(o.tmp, 'ws-proxymity', `proxy: {host: 127.0.0.1, port: ${pxPort}}\nadmin: {enabled: false}\nbackend:\n  - url: http://127.0.0.1:${backendPort}\n`);
    procs.push(spawn(process.execPath, [...START_FLAGS, join(o.root, 'dist', 'main.js'), '--config', cfg, '--log-level', 'warn'], { stdio: 'ignore' }));
    await waitForPort(backendPort);
    await waitForPort(pxPort);
    const payload = Buffer.alloc(o.messageBytes, 'x');
    const urls = { direct: `ws://127.0.0.1:${backendPort}/ws`, proxymity: `ws://127.0.0.1:${pxPort}/ws` };
    await measure(urls.proxymity, o.clients, 1, payload); // warm-up
    const samples = { direct: [] as number[], proxymity: [] as number[] };
    for (let r = 0; r < o.rounds; r++) {
      const order = r % 2 === 0 ? (['direct', 'proxymity'] as const) : (['proxymity', 'direct'] as const);
      for (const k of order) samples[k].push(await measure(urls[k], o.clients, o.durationS, payload));
    }
    const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
    return { direct: median(samples.direct), proxymity: median(samples.proxymity), clients: o.clients, messageBytes: o.messageBytes };
  } finally {
    for (const p of procs) p.kill('SIGTERM');
  }
}
