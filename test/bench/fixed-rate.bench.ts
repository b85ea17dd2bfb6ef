/**
 * Fixed-rate paired comparison: Proxymity and the bare http-proxy script loaded at the same time,
 * each by its own h2load (HTTP/1.1) sending the same fixed number of requests per second, well
 * below what either can serve. Both then do the same work in the same seconds on the same
 * machine, so the ratio of their CPU time is the ratio of their cost per request, free of the
 * two things that blur the saturated figures on a small machine: the speed of the box drifting
 * between runs (±30% here), and a saturated process batching more work per wake-up the less CPU
 * it gets. Latency at a fixed rate is the proxy's own, not the queue wrk builds up.
 *
 * Needs h2load (Debian: nghttp2-client); without it the section is left out, saying why.
 */
import { execFile, execFileSync } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { cpuSeconds, processTree } from './proc-stats.js';
import type { PairedTarget } from './paired.bench.js';

export interface FixedRateOptions {
  rounds: number;
  durationS: number;
  /** h2load clients (connections) per proxy. */
  clients: number;
  /** Requests per second per client. */
  rpsPerClient: number;
  tmpDir: string;
}

export interface FixedRateResult {
  scenario: string;
  /** Requests per second offered to each proxy. */
  rate: number;
  rounds: number;
  /** The first target (Proxymity, or the undici reference) ÷ bare, requests per CPU-second, one per round. */
  cpuRatios: number[];
  /** Latency percentiles (ms) over all rounds: [first target, bare]. */
  p50Ms: [number, number];
  p99Ms: [number, number];
  /** Requests answered with 2xx, and all others (non-2xx, failed, errored): [first target, bare]. */
  ok: [number, number];
  failed: [number, number];
  /**
   * Requests per second each proxy was actually sent over the measured rounds: [first target, bare].
   * h2load sends HTTP/1.1 requests one at a time per connection, so a proxy slower than
   * 1 / (requests per second per connection) is sent fewer, and the rate is not held.
   */
  sent: [number, number];
}

/** Below this share of the offered rate, the row says the rate was not held. */
export const RATE_HELD = 0.95;

export interface H2loadRun {
  ok: number;
  failed: number;
  /** Per-request latencies of the 2xx answers, in microseconds. */
  latenciesUs: number[];
}

/** h2load's count of requests done (answered, failed or errored) in its summary. */
export function h2loadDone(stdout: string): number {
  const m = /^requests: \d+ total, \d+ started, (\d+) done/m.exec(stdout);
  if (!m) throw new Error(`h2load output lacks its requests line:\n${stdout}`);
  return Number(m[1]);
}

export function h2loadMissing(): string | undefined {
  try {
    execFileSync('h2load', ['--version'], { stdio: 'ignore' });
    return undefined;
  } catch {
    return 'h2load is not installed (apt-get install nghttp2-client): the fixed-rate comparison is left out';
  }
}

/**
 * h2load's per-request log: tab-separated start time (µs since the epoch), status code (-1 for a
 * failed stream), and µs until the end of the response. `failed` counts the entries that are not
 * 2xx; runH2load also takes h2load's own count of requests done into account.
 */
export function parseH2loadLog(text: string): H2loadRun {
  const run: H2loadRun = { ok: 0, failed: 0, latenciesUs: [] };
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const [, status, us] = line.split('\t');
    const code = Number(status);
    const t = Number(us);
    if (!Number.isFinite(code) || !Number.isFinite(t)) throw new Error(`cannot read h2load log line "${line}"`);
    if (code >= 200 && code < 300) {
      run.ok++;
      run.latenciesUs.push(t);
    } else run.failed++;
  }
  return run;
}

/** The p-th percentile (0-100) of values, nearest rank. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

function runH2load(url: string, log: string, opts: FixedRateOptions): Promise<H2loadRun> {
  const args = ['--h1', '-c', String(opts.clients), '--rps', String(opts.rpsPerClient), '-D', String(opts.durationS), '-t', '1', `--log-file=${log}`, url];
  return new Promise((resolve, reject) => {
    execFile('h2load', args, { timeout: (opts.durationS + 30) * 1000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) {
        rmSync(log, { force: true });
        return reject(new Error(`h2load failed: ${err.message}\n${stderr}`));
      }
      try {
        const run = parseH2loadLog(readFileSync(log, 'utf8'));
        run.failed = Math.max(run.failed, h2loadDone(stdout) - run.ok);
        resolve(run);
      } catch (e) {
        reject(e);
      } finally {
        rmSync(log, { force: true });
      }
    });
  });
}

export async function fixedRateRun(a: PairedTarget, b: PairedTarget, scenario: { name: string; path: string }, opts: FixedRateOptions): Promise<FixedRateResult> {
  const pa = processTree(a.pid as number);
  const pb = processTree(b.pid as number);
  const la: number[] = [];
  const lb: number[] = [];
  const out: FixedRateResult = { scenario: scenario.name, rate: opts.clients * opts.rpsPerClient, rounds: opts.rounds, cpuRatios: [], p50Ms: [NaN, NaN], p99Ms: [NaN, NaN], ok: [0, 0], failed: [0, 0], sent: [0, 0] };
  const run = (t: PairedTarget, side: string, round: number) => runH2load(t.url + scenario.path, join(opts.tmpDir, `h2load-${side}-${round}.log`), opts);
  // One unmeasured round: the proxies' upstream connections open and their JIT settles at this rate.
  await Promise.all([run(a, 'a', -1), run(b, 'b', -1)]);
  for (let round = 0; round < opts.rounds; round++) {
    const a0 = cpuSeconds(pa);
    const b0 = cpuSeconds(pb);
    // Alternate which load starts first, so neither always has the head start.
    const [ra, rb] = round % 2 === 0 ? await Promise.all([run(a, 'a', round), run(b, 'b', round)]) : await Promise.all([run(b, 'b', round), run(a, 'a', round)]).then(([y, x]) => [x, y]);
    const ca = cpuSeconds(pa) - a0;
    const cb = cpuSeconds(pb) - b0;
    if (ca > 0 && cb > 0 && ra.ok > 0 && rb.ok > 0) out.cpuRatios.push(ra.ok / ca / (rb.ok / cb));
    out.ok[0] += ra.ok;
    out.ok[1] += rb.ok;
    out.failed[0] += ra.failed;
    out.failed[1] += rb.failed;
    la.push(...ra.latenciesUs);
    lb.push(...rb.latenciesUs);
    process.stdout.write('~');
  }
  const seconds = opts.rounds * opts.durationS;
  out.sent = [(out.ok[0] + out.failed[0]) / seconds, (out.ok[1] + out.failed[1]) / seconds];
  out.p50Ms = [percentile(la, 50) / 1000, percentile(lb, 50) / 1000];
  out.p99Ms = [percentile(la, 99) / 1000, percentile(lb, 99) / 1000];
  return out;
}

/** `a` names the target the results compare with the bare http-proxy script (fixedRateRun's first). */
export function renderFixedRate(results: readonly FixedRateResult[], median: (xs: number[]) => number, a = 'Proxymity'): string[] {
  if (results.length === 0) return [];
  const r2 = (n: number) => `${n.toFixed(2)}×`;
  const ms = (n: number) => n.toFixed(2);
  const lines = [
    '',
    `| fixed rate: ${a} and bare http-proxy at the same time, h2load ${results[0].rate.toLocaleString('en-US')} req/s offered to each | rounds | req/CPU-s, ${a} ÷ bare: median (min–max) | req/s sent, ${a} / bare | p50 ms, ${a} / bare | p99 ms, ${a} / bare | p99 ÷ bare | not 2xx, ${a} / bare |`,
    '|---|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of results) {
    const c = r.cpuRatios;
    const held = r.sent.every((x) => x >= RATE_HELD * r.rate);
    const sent = `${r.sent.map((x) => Math.round(x).toLocaleString('en-US')).join(' / ')}${held ? '' : ' (rate not held: the ratios compare unequal loads)'}`;
    lines.push(
      `| ${r.scenario} | ${c.length} | ${c.length ? `${r2(median(c))} (${r2(Math.min(...c))}–${r2(Math.max(...c))})` : '—'} | ${sent} | ${ms(r.p50Ms[0])} / ${ms(r.p50Ms[1])} | ${ms(r.p99Ms[0])} / ${ms(r.p99Ms[1])} | ${r2(r.p99Ms[0] / r.p99Ms[1])} | ${r.failed[0]} / ${r.failed[1]} |`,
    );
  }
  return lines;
}
