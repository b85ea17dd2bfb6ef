/**
 * What `proxymity validate` prints: a summary of the effective config, and what would change
 * against the config a running instance has loaded (`--diff`).
 */
import type { ProxymityConfig } from './config.schema.js';

type Cfg = ProxymityConfig;
type Pool = Cfg['pools'][string];
type Route = Cfg['routes'][number];

const ms = (n: number) => (n % 1000 === 0 ? `${n / 1000}s` : `${n}ms`);
const mib = (n: number) => (n >= 1024 * 1024 ? `${+(n / 1024 / 1024).toFixed(1)} MiB` : `${+(n / 1024).toFixed(1)} KiB`);

export function describeRoute(r: Route): string {
  const m = r.match;
  const conds = [
    m.host !== undefined ? `host ${[m.host].flat().join('|')}` : '',
    m.pathExact !== undefined ? `path = ${m.pathExact}` : m.path !== undefined ? `path ${m.path}*` : '',
    m.methods !== undefined ? `methods ${m.methods.join('|')}` : '',
    m.headers !== undefined ? Object.entries(m.headers).map(([k, v]) => `${k}: ${v}`).join(', ') : '',
  ].filter(Boolean);
  const extras = [
    r.stripPrefix !== undefined ? `strip ${r.stripPrefix}` : '',
    r.addPrefix !== undefined ? `add ${r.addPrefix}` : '',
    r.hostHeader !== 'client' ? `Host ${r.hostHeader}` : '',
    r.cache !== undefined ? `cache ${r.cache ? 'on' : 'off'}` : '',
  ].filter(Boolean);
  return `${conds.length > 0 ? conds.join(', ') : 'every request'} -> ${r.pool}${extras.length > 0 ? ` (${extras.join(', ')})` : ''}`;
}

function describePool(p: Pool): string[] {
  const hc = p.healthCheck;
  return [
    `  ${p.name}: ${p.strategy}${p.sticky ? `, sticky cookie ${p.sticky.cookie}` : ''}; health ${hc.enabled ? `${hc.method} ${hc.path} every ${ms(hc.interval)}` : 'checks off'}`,
    ...p.backends.map((b) => `    - ${b.name} ${b.url} weight ${b.weight}${b.backup ? ' backup' : ''}${b.enabled ? '' : ' (disabled)'}`),
  ];
}

export function summarize(cfg: Cfg, file: string, version: string): string {
  const pools = Object.values(cfg.pools);
  return [
    `${file}: valid (version ${version})`,
    `listener: ${cfg.proxy.host}:${cfg.proxy.port}; admin: ${cfg.admin.enabled ? `${cfg.admin.host}:${cfg.admin.port}` : 'off'}; metrics ${cfg.metrics.enabled ? 'on' : 'off'}; access log ${cfg.accessLog.enabled ? `${cfg.accessLog.format} to ${cfg.accessLog.output}` : 'off'}`,
    `pools (${pools.length}):`,
    ...pools.flatMap(describePool),
    `routes (${cfg.routes.length}, first match wins):`,
    ...cfg.routes.map((r, i) => `  ${i + 1}. ${r.name}: ${describeRoute(r)}`),
    `cache: ${cfg.cache.enabled || cfg.routes.some((r) => r.cache === true) ? `${cfg.cache.enabled ? 'on' : 'on for some routes'}, ${mib(cfg.cache.maxSize)} (objects up to ${mib(cfg.cache.maxObjectSize)})` : 'off'}`,
    `timeouts: connect ${ms(cfg.upstream.connectTimeout)}, idle ${ms(cfg.upstream.timeout)}${cfg.upstream.headerTimeout !== undefined ? `, headers ${ms(cfg.upstream.headerTimeout)}` : ''}${cfg.upstream.totalTimeout > 0 ? `, total ${ms(cfg.upstream.totalTimeout)}` : ''}; retries: ${cfg.retry.attempts ?? cfg.upstream.retries + 1} tries on ${cfg.retry.on.join(', ')}`,
  ].join('\n');
}

/** One line per difference between the running config and the new one; empty when they are the same. */
export function diffConfigs(running: Cfg, next: Cfg): string[] {
  const out: string[] = [];
  const names = [...new Set([...Object.keys(running.pools), ...Object.keys(next.pools)])];
  for (const name of names) {
    const a = running.pools[name];
    const b = next.pools[name];
    if (a === undefined) {
      out.push(`+ pool ${name} (${b.strategy}, ${b.backends.length} backend(s): ${b.backends.map((x) => x.name).join(', ')})`);
      continue;
    }
    if (b === undefined) {
      out.push(`- pool ${name}`);
      continue;
    }
    if (a.strategy !== b.strategy) out.push(`~ pool ${name}: strategy ${a.strategy} -> ${b.strategy}`);
    if (JSON.stringify(a.healthCheck) !== JSON.stringify(b.healthCheck)) out.push(`~ pool ${name}: health check changed`);
    const before = new Map(a.backends.map((x) => [x.name, x]));
    for (const nb of b.backends) {
      const ob = before.get(nb.name);
      before.delete(nb.name);
      if (ob === undefined) out.push(`+ backend ${nb.name} ${nb.url} in pool ${name}`);
      else {
        if (ob.url !== nb.url) out.push(`~ backend ${nb.name}: url ${ob.url} -> ${nb.url}`);
        if (ob.weight !== nb.weight) out.push(`~ backend ${nb.name}: weight ${ob.weight} -> ${nb.weight}`);
        if (ob.enabled !== nb.enabled) out.push(`~ backend ${nb.name}: ${nb.enabled ? 'enabled' : 'disabled'}`);
        if (ob.backup !== nb.backup) out.push(`~ backend ${nb.name}: ${nb.backup ? 'now a backup' : 'now a primary'}`);
      }
    }
    for (const gone of before.values()) out.push(`- backend ${gone.name} from pool ${name}`);
  }
  const n = Math.max(running.routes.length, next.routes.length);
  for (let i = 0; i < n; i++) {
    const a = running.routes[i];
    const b = next.routes[i];
    if (a === undefined) out.push(`+ route ${i + 1} ${b.name}: ${describeRoute(b)}`);
    else if (b === undefined) out.push(`- route ${i + 1} ${a.name}: ${describeRoute(a)}`);
    else if (JSON.stringify(a) !== JSON.stringify(b)) out.push(`~ route ${i + 1} ${b.name}: ${describeRoute(a)}  =>  ${describeRoute(b)}`);
  }
  for (const key of ['proxy', 'admin', 'metrics', 'accessLog', 'websocket'] as const) {
    if (JSON.stringify(running[key]) !== JSON.stringify(next[key])) out.push(`! ${key} changed: needs a restart (a reload does not apply it)`);
  }
  for (const key of ['loadBalancer', 'healthCheck', 'outlierDetection', 'retry', 'upstream', 'rateLimit', 'cache'] as const) {
    if (JSON.stringify(running[key]) !== JSON.stringify(next[key])) out.push(`~ ${key} changed`);
  }
  return out;
}

export const REDACTED = '[REDACTED]';

/** A copy of the config with admin.token and sticky secrets replaced, as GET /config shows it. */
export function redactSecrets(cfg: Cfg): Cfg {
  return JSON.parse(JSON.stringify(cfg), (key, value) => ((key === 'token' || key === 'secret') && typeof value === 'string' ? REDACTED : value)) as Cfg;
}
