/**
 * Paired comparison: Proxymity and the bare http-proxy script loaded at the same time, each by
 * its own wrk with half the connections, for several short rounds. On a shared or throttled
 * machine the speed of the whole box drifts by ±30% from one run to the next, which swamps a
 * sequential A-then-B comparison; loaded together, both proxies see the same machine in the
 * same seconds, so the per-round ratio of their requests per CPU-second is steady. The median
 * of those ratios is the figure the ≥1.0× target is checked against.
 */
import { runWrk } from './wrk.js';
import { cpuSeconds, processTree } from './proc-stats.js';

export interface PairedTarget {
  name: string;
  url: string;
  pid: number | undefined;
}

export interface PairedResult {
  scenario: string;
  rounds: number;
  connectionsEach: number;
  /** Proxymity ÷ bare, requests per CPU-second, one per round. */
  cpuRatios: number[];
  /** Proxymity ÷ bare, p99 latency, one per round. */
  p99Ratios: number[];
}

export async function pairedRun(a: PairedTarget, b: PairedTarget, scenario: { name: string; path: string; script?: string; headers?: string[] }, opts: { rounds: number; durationS: number; connections: number; tmpDir: string }): Promise<PairedResult> {
  const pa = processTree(a.pid as number);
  const pb = processTree(b.pid as number);
  const each = Math.max(1, Math.floor(opts.connections / 2));
  const out: PairedResult = { scenario: scenario.name, rounds: opts.rounds, connectionsEach: each, cpuRatios: [], p99Ratios: [] };
  for (let round = 0; round < opts.rounds; round++) {
    const a0 = cpuSeconds(pa);
    const b0 = cpuSeconds(pb);
    const run = (t: PairedTarget) => runWrk({ url: t.url + scenario.path, durationS: opts.durationS, connections: each, script: scenario.script, headers: scenario.headers, tmpDir: opts.tmpDir });
    // Alternate which wrk starts first, so neither always has the head start.
    const [wa, wb] = round % 2 === 0 ? await Promise.all([run(a), run(b)]) : await Promise.all([run(b), run(a)]).then(([y, x]) => [x, y]);
    const ca = cpuSeconds(pa) - a0;
    const cb = cpuSeconds(pb) - b0;
    if (ca > 0 && cb > 0 && wb.requests > 0) out.cpuRatios.push(wa.requests / ca / (wb.requests / cb));
    if (wb.p99Ms > 0) out.p99Ratios.push(wa.p99Ms / wb.p99Ms);
    process.stdout.write(':');
  }
  return out;
}

export function renderPaired(results: readonly PairedResult[], median: (xs: number[]) => number): string[] {
  if (results.length === 0) return [];
  const r2 = (n: number) => `${n.toFixed(2)}×`;
  const lines = [
    '',
    `| paired: Proxymity and bare http-proxy at the same time (${results[0].connectionsEach} + ${results[0].connectionsEach} connections) | rounds | req/CPU-s, Proxymity ÷ bare: median (min–max) | p99, Proxymity ÷ bare: median |`,
    '|---|---:|---:|---:|',
  ];
  for (const r of results) {
    const c = r.cpuRatios;
    lines.push(`| ${r.scenario} | ${c.length} | ${c.length ? `${r2(median(c))} (${r2(Math.min(...c))}–${r2(Math.max(...c))})` : '—'} | ${r.p99Ratios.length ? r2(median(r.p99Ratios)) : '—'} |`);
  }
  return lines;
}
