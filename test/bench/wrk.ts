/** Runs wrk and parses its report. */
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface WrkResult {
  requests: number;
  seconds: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
  non2xx: number;
}

export interface WrkOptions {
  url: string;
  durationS: number;
  connections: number;
  /** Lua script text (written to a temp file), e.g. for POST bodies. */
  script?: string;
  headers?: string[];
  tmpDir: string;
}

export function runWrk(opts: WrkOptions): Promise<WrkResult> {
  const args = ['-t1', `-c${opts.connections}`, `-d${opts.durationS}s`, '--latency', '--timeout', '10s'];
  for (const h of opts.headers ?? []) args.push('-H', h);
  if (opts.script) {
    const file = join(opts.tmpDir, `wrk-${Math.abs(hash(opts.script))}.lua`);
    writeFileSync(file, opts.script);
    args.push('-s', file);
  }
  args.push(opts.url);
  return new Promise((resolve, reject) => {
    execFile('wrk', args, { timeout: (opts.durationS + 30) * 1000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`wrk failed: ${err.message}\n${stderr}`));
      try {
        resolve(parseWrk(stdout));
      } catch (e) {
        reject(e);
      }
    });
  });
}

const UNIT: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000 };

function toMs(text: string): number {
  const m = /^([\d.]+)(us|ms|s|m)$/.exec(text.trim());
  if (!m) throw new Error(`cannot read wrk latency "${text}"`);
  return Number(m[1]) * UNIT[m[2]];
}

export function parseWrk(out: string): WrkResult {
  const num = (re: RegExp) => {
    const m = re.exec(out);
    if (!m) throw new Error(`wrk output lacks ${re}:\n${out}`);
    return m;
  };
  const total = num(/(\d+) requests in ([\d.]+)(us|ms|s|m),/);
  const p50 = num(/^\s+50%\s+(\S+)/m)[1];
  const p99 = num(/^\s+99%\s+(\S+)/m)[1];
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(out);
  const requests = Number(total[1]);
  const seconds = toMs(`${total[2]}${total[3]}`) / 1000;
  return {
    requests,
    seconds,
    rps: Number(num(/Requests\/sec:\s+([\d.]+)/)[1]),
    p50Ms: toMs(p50),
    p99Ms: toMs(p99),
    errors: sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0,
    non2xx: non2xx ? Number(non2xx[1]) : 0,
  };
}

function hash(s: string): number {
  let h = 0;
  for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) | 0;
  return h;
}
