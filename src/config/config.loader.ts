/**
 * The one place that reads, validates and freezes config.yaml. Control plane: runs at boot,
 * may be slow, fails loudly with every problem at once, each with file:line:col and YAML path.
 */
import { readFileSync } from 'node:fs';
import { isMap, isScalar, LineCounter, parseDocument, type Document } from 'yaml';
import type { z } from 'zod';
import { ConfigError, type ConfigIssue } from './config.errors.js';
import { type backendSchema, type BackendConfig, configSchema, crossFieldIssues, DEFAULT_POOL, hostPortOf, type PoolConfig, type ProxymityConfig, type RouteConfig } from './config.schema.js';

/** Where the config comes from: `--config FILE`, else $PROXYMITY_CONFIG, else ./config.yaml. */
export function resolveConfigPath(argv: readonly string[], env: NodeJS.ProcessEnv): string {
  const i = argv.findIndex((a) => a === '--config' || a === '-c' || a.startsWith('--config='));
  if (i >= 0) {
    const arg = argv[i];
    const value = arg.startsWith('--config=') ? arg.slice('--config='.length) : argv[i + 1];
    if (!value) throw new ConfigError('command line', [], `${arg} needs a file name, e.g. --config ./config.yaml`);
    return value;
  }
  return env.PROXYMITY_CONFIG || 'config.yaml';
}

export function loadConfigFile(file: string): ProxymityConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : (err as Error).message;
    throw new ConfigError(file, [], `Cannot read config file ${file}: ${why}`);
  }
  return parseConfig(text, file);
}

/** Parses and validates YAML text; `file` is only used in messages. */
export function parseConfig(text: string, file = 'config.yaml'): ProxymityConfig {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, uniqueKeys: true, prettyErrors: false });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      file,
      doc.errors.map((e) => {
        const pos = lineCounter.linePos(e.pos[0]);
        return { path: '', line: pos.line, col: pos.col, message: `YAML: ${firstLine(e.message)}` };
      }),
    );
  }
  const raw: unknown = doc.toJS() ?? {};
  if (typeof raw !== 'object' || Array.isArray(raw)) {
    throw new ConfigError(file, [{ path: '', line: 1, col: 1, message: 'expected a mapping with "proxy" and "backend" keys' }]);
  }
  const result = configSchema.safeParse(raw);
  if (!result.success) {
    const issues = result.error.issues.flatMap((issue) => toConfigIssues(issue, doc, lineCounter));
    // zod skips object-level refinements once a field fails; report cross-field problems too.
    const seen = new Set(result.error.issues.map((i) => `${formatPath(i.path as (string | number)[])} ${i.message}`));
    for (const c of crossFieldIssues(raw)) {
      if (!seen.has(`${formatPath(c.path)} ${c.message}`)) issues.push({ path: formatPath(c.path), ...valuePosition(doc, lineCounter, c.path), message: c.message });
    }
    issues.sort((a, b) => a.line - b.line || a.col - b.col);
    throw new ConfigError(file, issues);
  }
  return deepFreeze(normalize(result.data)) as ProxymityConfig;
}

/**
 * Fills in what the rest of the proxy relies on: backend names, the `backend` list as the pool
 * "default", each pool's balancing and health-check settings (its own over the top-level
 * ones), and a catch-all route when there are no routes.
 */
function normalize(cfg: z.output<typeof configSchema>): Omit<ProxymityConfig, never> {
  const named = (list: readonly z.output<typeof backendSchema>[]): BackendConfig[] => list.map((b) => ({ ...b, name: b.name ?? hostPortOf(b.url) }));
  const lb = cfg.loadBalancer;
  const pools: Record<string, PoolConfig> = {};
  const backend = named(cfg.backend ?? []);
  if (cfg.backend !== undefined) {
    pools[DEFAULT_POOL] = { name: DEFAULT_POOL, strategy: lb.strategy, hash: lb.hash, sticky: lb.sticky, slowStart: lb.slowStart, healthCheck: cfg.healthCheck, backends: backend };
  }
  for (const [name, p] of Object.entries(cfg.pools ?? {})) {
    pools[name] = {
      name,
      strategy: p.strategy ?? lb.strategy,
      hash: p.hash ?? lb.hash,
      sticky: p.sticky ?? lb.sticky,
      slowStart: p.slowStart ?? lb.slowStart,
      healthCheck: { ...cfg.healthCheck, ...p.healthCheck },
      backends: named(p.backends),
    };
  }
  const routes: RouteConfig[] = (cfg.routes ?? [{ match: {}, pool: Object.keys(pools)[0], hostHeader: 'client' }]).map((r, i) => ({ ...r, name: r.name ?? `route-${i + 1}` }));
  return { ...cfg, backend, pools, routes } as unknown as ProxymityConfig;
}

function toConfigIssues(issue: z.core.$ZodIssue, doc: Document, lc: LineCounter): ConfigIssue[] {
  const path = issue.path as (string | number)[];
  if (issue.code === 'unrecognized_keys') {
    const known = knownKeysAt(configSchema, path);
    return issue.keys.map((key) => {
      const hint = suggest(key, known);
      const pos = keyPosition(doc, lc, path, key);
      const where = formatPath([...path, key]);
      return { path: where, ...pos, message: `unknown key${hint ? `; did you mean "${hint}"?` : known.length ? ` (expected one of ${known.join(', ')})` : ''}` };
    });
  }
  const pos = valuePosition(doc, lc, path);
  let message = issue.message;
  if (issue.code === 'invalid_type') {
    const node = doc.getIn(path, true);
    message = node === undefined ? `required (expected ${issue.expected})` : `expected ${issue.expected}, got ${JSON.stringify(isScalar(node) ? node.value : doc.getIn(path))}`;
  } else if (issue.code === 'too_small' || issue.code === 'too_big' || issue.code === 'invalid_format') {
    const value = doc.getIn(path);
    if (isScalarValue(value)) message = `${issue.message} (got ${JSON.stringify(value)})`;
  }
  return [{ path: formatPath(path), ...pos, message }];
}

function isScalarValue(v: unknown): boolean {
  return v === null || ['string', 'number', 'boolean'].includes(typeof v);
}

function valuePosition(doc: Document, lc: LineCounter, path: (string | number)[]): { line: number; col: number } {
  // Walk up until a node exists: a missing key is reported at its parent.
  for (let n = path.length; n >= 0; n--) {
    const node = n === 0 ? doc.contents : (doc.getIn(path.slice(0, n), true) as { range?: [number, number, number] } | undefined);
    const range = (node as { range?: [number, number, number] } | null | undefined)?.range;
    if (range) return lc.linePos(range[0]);
  }
  return { line: 0, col: 0 };
}

function keyPosition(doc: Document, lc: LineCounter, path: (string | number)[], key: string): { line: number; col: number } {
  const map = path.length === 0 ? doc.contents : doc.getIn(path, true);
  if (isMap(map)) {
    for (const pair of map.items) {
      const k = pair.key as { value?: unknown; range?: [number, number, number] };
      if (isScalar(k) && k.value === key && k.range) return lc.linePos(k.range[0]);
    }
  }
  return valuePosition(doc, lc, path);
}

export function formatPath(path: readonly (string | number | symbol)[]): string {
  let out = '';
  for (const p of path) out += typeof p === 'number' ? `[${p}]` : out ? `.${String(p)}` : String(p);
  return out;
}

/** Object keys the schema allows at `path` (for "did you mean"). */
function knownKeysAt(schema: z.ZodType, path: (string | number)[]): string[] {
  let node: any = schema;
  const unwrap = () => {
    for (;;) {
      const def = node?._zod?.def;
      if (!def) return;
      if (def.type === 'pipe') node = def.in;
      else if (['optional', 'default', 'prefault', 'nullable', 'readonly', 'catch'].includes(def.type)) node = def.innerType;
      else return;
    }
  };
  unwrap();
  for (const seg of path) {
    const def = node?._zod?.def;
    if (def?.type === 'array' && typeof seg === 'number') node = def.element;
    else if (def?.type === 'object' && typeof seg === 'string') node = def.shape[seg];
    else return [];
    unwrap();
  }
  const def = node?._zod?.def;
  return def?.type === 'object' ? Object.keys(def.shape) : [];
}

/** The closest known key within a small edit distance, or undefined. */
export function suggest(key: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of known) {
    const d = editDistance(key.toLowerCase(), k.toLowerCase());
    if (d < bestD) {
      bestD = d;
      best = k;
    }
  }
  return best !== undefined && bestD <= Math.max(2, Math.floor(best.length / 3)) ? best : undefined;
}

function editDistance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0];
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = prev[j];
      prev[j] = Math.min(prev[j] + 1, prev[j - 1] + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = tmp;
    }
  }
  return prev[b.length];
}

function firstLine(s: string): string {
  return s.split('\n')[0];
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
