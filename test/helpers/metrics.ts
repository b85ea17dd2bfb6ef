import { request } from './http-client.js';

/** One scrape of a Prometheus text endpoint: `name{a="1",b="2"}` (labels sorted) -> value. */
export type Scrape = ReadonlyMap<string, number>;

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

export function parseMetrics(text: string): Scrape {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = LINE.exec(line);
    if (m === null) throw new Error(`not a Prometheus sample line: ${JSON.stringify(line)}`);
    const labels = [...(m[2] ?? '').matchAll(LABEL)].map(([, k, v]) => [k, v] as const).sort(([a], [b]) => a.localeCompare(b));
    out.set(seriesKey(m[1], Object.fromEntries(labels)), Number(m[3]));
  }
  return out;
}

export function seriesKey(name: string, labels: Readonly<Record<string, string>> = {}): string {
  const parts = Object.keys(labels)
    .sort()
    .map((k) => `${k}="${labels[k]}"`);
  return parts.length === 0 ? name : `${name}{${parts.join(',')}}`;
}

/** A series' value, 0 when absent (a counter that never moved has no series yet). */
export function sample(scrape: Scrape, name: string, labels: Readonly<Record<string, string>> = {}): number {
  return scrape.get(seriesKey(name, labels)) ?? 0;
}

export function delta(before: Scrape, after: Scrape, name: string, labels: Readonly<Record<string, string>> = {}): number {
  return sample(after, name, labels) - sample(before, name, labels);
}

/** Series of one metric name, as label objects with their values. */
export function seriesOf(scrape: Scrape, name: string): string[] {
  return [...scrape.keys()].filter((k) => k === name || k.startsWith(`${name}{`));
}

export async function scrape(adminUrl: string, token?: string): Promise<Scrape> {
  const res = await request(`${adminUrl}/metrics`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  if (res.status !== 200) throw new Error(`GET /metrics: ${res.status} ${res.body}`);
  return parseMetrics(res.body);
}
