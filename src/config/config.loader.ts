/**
 * The one place that reads, validates and freezes config.yaml. Control plane: runs at boot,
 * may be slow, fails loudly with every problem at once, each with file:line:col and YAML path.
 */
import { readFileSync } from 'node:fs';
import { isAlias, isMap, isPair, isScalar, isSeq, LineCounter, parseDocument, visit, type Document } from 'yaml';
import type { z } from 'zod';
import { ConfigError, type ConfigIssue } from './config.errors.js';
import { type backendSchema, type BackendConfig, configSchema, crossFieldIssues, DEFAULT_POOL, editDistance, hostPortOf, type PoolConfig, type ProxymityConfig, type RouteConfig } from './config.schema.js';

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
export function parseConfig(text: string, file = 'config.yaml', env: NodeJS.ProcessEnv = process.env): ProxymityConfig {
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
  const aliasIssues = unresolvedAliases(doc, lineCounter);
  if (aliasIssues.length > 0) throw new ConfigError(file, aliasIssues);
  const envIssues = interpolateEnv(doc, lineCounter, env);
  if (envIssues.length > 0) throw new ConfigError(file, envIssues);
  const raw = toPlain(doc, file);
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
 * How far YAML aliases may expand: copies of one anchored value, the anchor and each alias
 * counting 1, multiplied by the copies nested inside it (the yaml library's own count and
 * default, made explicit). It refuses an alias bomb (a few lines of nested anchors that expand
 * to millions of nodes) before it takes the memory of a running proxy on reload. The price:
 * an anchor with 100 aliases or more is refused too, which a config never needs.
 */
export const MAX_ALIAS_COUNT = 100;

/**
 * The document as plain values. The yaml library throws plain errors from here (an alias
 * bomb, or anything `unresolvedAliases` did not foresee); they become a ConfigError so that a
 * reload refuses the file and keeps the running config instead of crashing the process.
 */
function toPlain(doc: Document, file: string): object {
  let raw: unknown;
  try {
    raw = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT }) ?? {};
  } catch (err) {
    const message = (err as Error).message ?? String(err);
    const why = /excessive alias count/i.test(message)
      ? `YAML: aliases expand too far: more than ${MAX_ALIAS_COUNT} copies of an anchored value (the anchor and each alias count 1, nested anchors multiply)`
      : `YAML: ${firstLine(message)}`;
    throw new ConfigError(file, [{ path: '', line: 0, col: 0, message: why }]);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ConfigError(file, [{ path: '', line: 1, col: 1, message: 'expected a mapping with "proxy" and "backend" keys' }]);
  }
  return raw;
}

/**
 * Aliases with no anchor of their name before them. The yaml library reports them only by
 * throwing from `toJS()`, without a position, and one at a time; this finds them all, where
 * they are. "Before" is the library's rule: earlier in the document, or an enclosing node.
 */
function unresolvedAliases(doc: Document, lc: LineCounter): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const anchors = new Set<string>();
  visit(doc, {
    Node(_key, node, ancestors) {
      if (isAlias(node)) {
        if (anchors.has(node.source)) return;
        const pos = lc.linePos(node.range?.[0] ?? 0);
        issues.push({ path: formatPath(keyPath(ancestors, node)), line: pos.line, col: pos.col, message: `YAML: alias *${node.source} has no anchor &${node.source} before it` });
      } else if (node.anchor) anchors.add(node.anchor);
    },
  });
  return issues;
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

const ENV_REF = /\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;
const WHOLE_REF = /^\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\}$/;

/**
 * `${NAME}` and `${NAME:-default}` in values (never in keys) are replaced from the environment.
 * A value that is exactly one reference takes the type its text reads as (a number, true or
 * false), so `port: ${PORT}` and `weight: ${W:-1}` work; `$${` writes a literal `${`. A missing
 * variable without a default is an error at its position.
 */
function interpolateEnv(doc: Document, lc: LineCounter, env: NodeJS.ProcessEnv): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  visit(doc, {
    Scalar(key, node, ancestors) {
      if (key === 'key' || typeof node.value !== 'string' || !node.value.includes('${')) return;
      const text = node.value;
      const missing: string[] = [];
      const replaced = text
        .split('$${')
        .map((part) =>
          part.replace(ENV_REF, (_m, name: string, fallback: string | undefined) => {
            const v = env[name];
            if (v !== undefined && v !== '') return v;
            if (fallback !== undefined) return fallback;
            missing.push(name);
            return '';
          }),
        )
        .join('${');
      if (missing.length > 0) {
        const pos = lc.linePos(node.range?.[0] ?? 0);
        const where = formatPath(keyPath(ancestors, node));
        for (const name of missing) issues.push({ path: where, line: pos.line, col: pos.col, message: `environment variable ${name} is not set (write \${${name}:-default} to give a default)` });
        return;
      }
      node.value = WHOLE_REF.test(text) ? typed(replaced) : replaced;
    },
  });
  return issues;
}

/** The key path of a node from the visitor's ancestors (map keys and sequence indexes). */
function keyPath(ancestors: readonly unknown[], node: unknown): (string | number)[] {
  const out: (string | number)[] = [];
  const chain = [...ancestors, node];
  for (let i = 0; i < chain.length - 1; i++) {
    const a = chain[i];
    if (isPair(a) && isScalar(a.key)) out.push(String(a.key.value));
    else if (isSeq(a)) out.push(a.items.indexOf(chain[i + 1] as never));
  }
  return out;
}

function typed(v: string): string | number | boolean {
  if (/^-?\d+(\.\d+)?$/.test(v)) return Number(v);
  if (v === 'true' || v === 'false') return v === 'true';
  return v;
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
    else if (def?.type === 'record' && typeof seg === 'string') node = def.valueType;
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
