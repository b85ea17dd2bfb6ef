/**
 * `npm run bench [-- --quick | --picks-only] [--rounds N] [--duration S] [--only proxymity,bare] [--scenarios small,16] [--no-stream] [--observability] [--paired-rounds N | --no-paired]`
 *
 * After the table, Proxymity and the bare script are loaded at the same time for the small and
 * 16 KiB GETs (paired.bench.ts): the steady ratio on a machine whose speed drifts.
 *
 * Then both again at the same fixed request rate, below saturation (fixed-rate.bench.ts, h2load):
 * the ratio of their CPU per request and their latency without wrk's queue. --fixed-rounds N
 * (0 skips), --rate N (requests per second offered to each, default 1920).
 *
 * --no-ws skips, and --ws-only runs only, the WebSocket comparison (messages/s direct vs
 * through Proxymity, test/bench/ws.bench.ts), which otherwise runs at the end.
 *
 * --rate-limit adds Proxymity with a rate limit that never triggers, in memory and in Redis
 * (a redis-server started for the run).
 *
 * --cache adds Proxymity with the response cache on, and nginx with proxy_cache, and two
 * scenarios the origin marks cacheable (Cache-Control: max-age=3600): cache-hit throughput
 * against the uncached proxies and direct to the origin. On the other scenarios (no freshness)
 * the cached Proxymity shows what the cache costs on traffic it cannot store.
 *
 * --undici adds a reference point: the bare proxy with undici's Pool as its upstream client
 * (bare-undici.ts) as a target in the table, and at the fixed rate against the bare http-proxy
 * script (docs/benchmarks.md, "The upstream client").
 *
 * --observability adds two more Proxymity instances: one with metrics off (and no access log),
 * one with metrics on and JSON access logs to a file, so the cost of both can be read off.
 *
 * Side by side on the same origins, interleaved A B C D over several rounds: direct to the
 * origin, Proxymity (dist/main.js, default features on), the bare http-proxy script
 * (bare-http-proxy.ts) and nginx as a proxy (when installed). wrk drives the load (1 thread,
 * 64 connections); CPU and memory come from /proc. Prints one table and writes JSON and
 * markdown into bench-results/. Bounded in time: a full run takes about 7.5 minutes, --quick
 * under 2.
 */
import { spawn, spawnSync, type ChildProcess, execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync, openSync, closeSync, ftruncateSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fixedRateRun, h2loadMissing, renderFixedRate, type FixedRateResult } from './fixed-rate.bench.js';
import { pairedRun, renderPaired, type PairedResult } from './paired.bench.js';
import { benchPicks, type PickResult } from './pick.bench.js';
import { writeProxymityConfig } from './config-file.js';
import { START_FLAGS } from '../../src/heap-tuning.js';
import { cpuSeconds, processTree, rssMiB } from './proc-stats.js';
import { freePort, waitForPort } from '../helpers/ports.js';
import { runWrk, type WrkResult } from './wrk.js';
import { benchWebSocket, type WsBenchResult } from './ws.bench.js';

/** h2load over HTTP/2 (64 clients, 10 streams each) against the HTTPS listener, when h2load is installed. */
async function runH2load(target: Target | undefined, opts: Options): Promise<string | undefined> {
  if (target === undefined) return undefined;
  try {
    execFileSync('h2load', ['--version'], { stdio: 'ignore' });
  } catch {
    return 'h2load is not installed (apt-get install nghttp2-client): HTTP/2 figures left out';
  }
  const lines = ['| h2load (HTTP/2, 64 clients × 10 streams) | req/s | p50 ms |', '|---|---:|---:|'];
  for (let round = 0; round < opts.rounds; round++) {
    const out = execFileSync('h2load', ['-D', String(opts.durationS), '-c', '64', '-m', '10', '-t', '1', `${target.url}/`], { encoding: 'utf8', timeout: (opts.durationS + 30) * 1000 });
    const rps = /finished in [\d.]+\w*, ([\d.]+) req\/s/.exec(out)?.[1];
    const p50 = /time for request:\s+\S+\s+\S+\s+(\S+)/.exec(out)?.[1];
    lines.push(`| round ${round + 1} | ${rps ?? '?'} | ${p50 ?? '?'} |`);
  }
  return lines.join('\n');
}

function renderWs(r: WsBenchResult): string[] {
  const fmt = (n: number) => Math.round(n).toLocaleString('en-US');
  return [
    '',
    `| WebSocket echo (${r.clients} clients, ${r.messageBytes} B messages) | round trips/s | vs direct |`,
    '|---|---:|---:|',
    `| direct to the backend | ${fmt(r.direct)} | 1.00× |`,
    `| through Proxymity | ${fmt(r.proxymity)} | ${(r.proxymity / r.direct).toFixed(2)}× |`,
  ];
}

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '..', '..', '..');
const NGINX = '/usr/sbin/nginx';
const MIB = 1024 * 1024;
/** Helper processes (redis-server) to stop at the end. */
const extraProcs: ChildProcess[] = [];

interface Options {
  quick: boolean;
  rounds: number;
  durationS: number;
  streamMiB: number;
  connections: number;
  only: string[] | undefined;
  /** Scenario name prefixes to run (default: all). */
  scenarios: string[] | undefined;
  noStream: boolean;
  observability: boolean;
  /** Add the bare undici proxy as a reference point (--undici). */
  undici: boolean;
  /** Add Proxymity with a rate limit that never triggers, in memory and in Redis (--rate-limit). */
  rateLimit: boolean;
  /** Add Proxymity and nginx with their caches on, and the cacheable scenarios (--cache). */
  cache: boolean;
  /** Add Proxymity's HTTPS listener as a target (wrk over TLS), and h2load over HTTP/2 when installed (--tls). */
  tls: boolean;
  /** Run the WebSocket messages/s comparison (default: yes; --no-ws skips it, --ws-only runs only it). */
  ws: boolean;
  wsOnly: boolean;
  /** Rounds of the paired Proxymity-and-bare comparison (0 = skip; --paired-rounds N, --no-paired). */
  pairedRounds: number;
  /** Rounds of the fixed-rate comparison (0 = skip; --fixed-rounds N), and the rate offered to each (--rate N, a multiple of 32). */
  fixedRounds: number;
  rate: number;
}

function parseOptions(argv: string[]): Options {
  const quick = argv.includes('--quick');
  const val = (flag: string) => {
    const i = argv.indexOf(flag);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  return {
    quick,
    rounds: Number(val('--rounds') ?? 3),
    durationS: Math.max(1, Math.round(Number(val('--duration') ?? (quick ? 1 : 5)))),
    streamMiB: Number(val('--stream-mib') ?? 200),
    connections: Number(val('--connections') ?? 64),
    only: val('--only')?.split(','),
    scenarios: val('--scenarios')?.split(','),
    noStream: argv.includes('--no-stream'),
    observability: argv.includes('--observability'),
    undici: argv.includes('--undici'),
    rateLimit: argv.includes('--rate-limit'),
    cache: argv.includes('--cache'),
    tls: argv.includes('--tls'),
    ws: !argv.includes('--no-ws'),
    wsOnly: argv.includes('--ws-only'),
    pairedRounds: argv.includes('--no-paired') ? 0 : Number(val('--paired-rounds') ?? (quick ? 3 : 8)),
    fixedRounds: Number(val('--fixed-rounds') ?? (quick ? 2 : 8)),
    rate: Number(val('--rate') ?? FIXED_RATE_CLIENTS * 60),
  };
}

/** h2load connections per proxy in the fixed-rate comparison. */
const FIXED_RATE_CLIENTS = 32;

interface Target {
  name: string;
  url: string;
  /** The process whose CPU and memory count as the proxy's (undefined for direct). */
  pid: number | undefined;
  proc?: ChildProcess;
}

interface Scenario {
  name: string;
  path: string;
  script?: string;
  headers?: string[];
}

const SCENARIOS: Scenario[] = [
  { name: 'small GET (3 B)', path: '/' },
  { name: '16 KiB GET', path: '/16k' },
  {
    name: '1 MiB POST',
    path: '/upload',
    script: `wrk.method = "POST"\nwrk.body = string.rep("p", 1048576)\nwrk.headers["Content-Type"] = "application/octet-stream"\n`,
  },
  { name: 'short connections', path: '/', headers: ['Connection: close'] },
];

/** With --cache: the same bodies, marked cacheable by the origin. */
const CACHE_SCENARIOS: Scenario[] = [
  { name: 'cacheable small GET (3 B)', path: '/c/small' },
  { name: 'cacheable 16 KiB GET', path: '/c/16k' },
];

interface Row {
  scenario: string;
  target: string;
  rps: number;
  reqPerCpuS: number | undefined;
  p50Ms: number;
  p99Ms: number;
  peakRssMiB: number | undefined;
  errors: number;
  /** Each round's figures, in round order (the JSON only): how far the medians above spread. */
  rounds: { rps: number[]; reqPerCpuS: number[]; p99Ms: number[] };
}

function spawnLogged(cmd: string, args: string[], tmp: string, name: string): ChildProcess {
  const log = openSync(join(tmp, `${name}.log`), 'a');
  const child = spawn(cmd, args, { stdio: ['ignore', log, log] });
  closeSync(log);
  return child;
}

function nginxOrigins(tmp: string, ports: number[], sinkPort: number): string {
  const root = join(tmp, 'www');
  mkdirSync(root, { recursive: true });
  // nginx workers run as an unprivileged user; mkdtemp makes the folder 0700.
  chmodSync(tmp, 0o755);
  chmodSync(root, 0o755);
  writeFileSync(join(root, '16k'), Buffer.alloc(16 * 1024, 'k'));
  const big = openSync(join(root, '200m'), 'w');
  ftruncateSync(big, 200 * MIB);
  closeSync(big);
  const servers = ports
    .map(
      (p) => `  server {
    listen 127.0.0.1:${p} reuseport backlog=4096;
    keepalive_requests 1000000;
    location = /16k { root ${root}; }
    location = /c/16k { add_header Cache-Control "max-age=3600"; alias ${root}/16k; }
    location = /c/small { add_header Cache-Control "max-age=3600"; return 200 "ok\\n"; }
    location = /200m { root ${root}; }
    # A bare \`return\` would answer before reading the body; uploads go on to a Node sink
    # that reads every byte before answering, as a real upload handler does.
    location = /upload { client_max_body_size 0; proxy_pass http://sink; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_request_buffering off; }
    location / { return 200 "ok\\n"; }
  }`,
    )
    .join('\n');
  return nginxConf(tmp, 'origin', `  upstream sink { server 127.0.0.1:${sinkPort}; keepalive 64; }\n${servers}`, 2);
}

function nginxProxy(tmp: string, port: number, origins: number[], cache = false): string {
  // proxy_cache: a memory zone for keys, bodies in files (the page cache, on this machine).
  const cacheConf = cache ? `\n      proxy_cache hot;\n      proxy_cache_lock on;\n      proxy_cache_revalidate on;` : '';
  const body = `${cache ? `  proxy_cache_path ${tmp}/nginx-cache keys_zone=hot:10m max_size=256m inactive=1h use_temp_path=off;\n` : ''}  upstream origins {
${origins.map((p) => `    server 127.0.0.1:${p};`).join('\n')}
    keepalive 64;
  }
  server {
    listen 127.0.0.1:${port} backlog=4096;
    keepalive_requests 1000000;
    client_max_body_size 0;
    location / {
      proxy_pass http://origins;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_request_buffering off;${cacheConf}
    }
  }`;
  return nginxConf(tmp, cache ? 'proxy-cache' : 'proxy', body, 1);
}

function nginxConf(tmp: string, name: string, servers: string, workers: number): string {
  const dir = join(tmp, `nginx-${name}`);
  mkdirSync(dir, { recursive: true });
  const conf = `worker_processes ${workers};
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_timeout 75s;
${servers}
}
`;
  const file = join(dir, 'nginx.conf');
  writeFileSync(file, conf);
  return file;
}

async function startTargets(tmp: string, opts: Options): Promise<{ origins: number[]; originKind: string; originProc: ChildProcess; sinkProc: ChildProcess | undefined; targets: Target[] }> {
  const haveNginx = existsSync(NGINX);
  const origins = [await freePort(), await freePort(), await freePort()];
  let originProc: ChildProcess;
  let sinkProc: ChildProcess | undefined;
  if (haveNginx) {
    const sinkPort = await freePort();
    sinkProc = spawnLogged(process.execPath, [join(HERE, 'node-origin.js'), '--ports', String(sinkPort)], tmp, 'sink');
    await waitForPort(sinkPort);
    originProc = spawnLogged(NGINX, ['-c', nginxOrigins(tmp, origins, sinkPort), '-p', tmp], tmp, 'origin');
  } else {
    originProc = spawnLogged(process.execPath, [join(HERE, 'node-origin.js'), '--ports', origins.join(',')], tmp, 'origin');
  }
  await Promise.all(origins.map((p) => waitForPort(p)));
  const originUrls = origins.map((p) => `http://127.0.0.1:${p}`);

  const targets: Target[] = [{ name: 'direct', url: originUrls[0], pid: undefined }];

  const variants: [name: string, extra: string, tlsPort?: number][] = [['proxymity', '']];
  if (opts.tls) {
    const tlsPort = await freePort();
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(tmp, 'tls.key'), '-out', join(tmp, 'tls.crt'), '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'], { stdio: 'ignore' });
    variants.push(['proxymity (https)', `listeners: [{port: ${tlsPort}, host: 127.0.0.1, protocol: https, certificates: [{cert: "${join(tmp, 'tls.crt')}", key: "${join(tmp, 'tls.key')}"}]}]\n`, tlsPort]);
  }
  if (opts.observability) {
    variants.push(['proxymity (metrics off)', 'metrics: {enabled: false}\n']);
    variants.push(['proxymity (metrics + access log)', `accessLog: {enabled: true, output: ${join(tmp, 'access.log')}}\n`]);
  }
  if (opts.cache) variants.push(['proxymity (cache)', 'cache: {enabled: true, maxSize: 64MiB}\n']);
  if (opts.rateLimit) {
    const redisPort = await freePort();
    const redis = spawnLogged('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], tmp, 'redis');
    extraProcs.push(redis);
    await waitForPort(redisPort);
    const never = 'rate: 1000000, per: 1s, key: client-ip';
    variants.push(['proxymity (rate limit, memory)', `rateLimit: {${never}}\n`]);
    variants.push(['proxymity (rate limit, redis)', `rateLimit: {${never}, store: redis, redis: {url: "redis://127.0.0.1:${redisPort}"}}\n`]);
  }
  for (const [name, extra, tlsPort] of variants) {
    const pxPort = await freePort();
    const cfg = writeProxymityConfig(tmp, name.replace(/\W+/g, '-'), `proxy: {host: 127.0.0.1, port: ${pxPort}}\nadmin: {port: 0}\n${extra}backend:\n${originUrls.map((u, i) => `  - name: origin-${i + 1}\n    url: ${u}\n`).join('')}`);
    const px = spawnLogged(process.execPath, [...START_FLAGS, join(ROOT, 'dist', 'main.js'), '--config', cfg, '--log-level', 'warn'], tmp, name.replace(/\W+/g, '-'));
    targets.push({ name, url: tlsPort !== undefined ? `https://127.0.0.1:${tlsPort}` : `http://127.0.0.1:${pxPort}`, pid: px.pid, proc: px });
  }

  const barePort = await freePort();
  // Started with the same node flags as Proxymity: without them, whichever proxy V8's memory
  // reducer collects while idle (the idle-memory wait below) runs about 5% slower for good
  // (docs/benchmarks.md, "The memory reducer and an idle start"), and the ratio would be luck.
  const bare = spawnLogged(process.execPath, [...START_FLAGS, join(HERE, 'bare-http-proxy.js'), '--port', String(barePort), '--targets', originUrls.join(',')], tmp, 'bare');
  targets.push({ name: 'bare http-proxy', url: `http://127.0.0.1:${barePort}`, pid: bare.pid, proc: bare });
  if (opts.undici) {
    const port = await freePort();
    const proc = spawnLogged(process.execPath, [...START_FLAGS, join(HERE, 'bare-undici.js'), '--port', String(port), '--targets', originUrls.join(',')], tmp, 'bare-undici');
    targets.push({ name: 'bare undici', url: `http://127.0.0.1:${port}`, pid: proc.pid, proc });
  }

  if (haveNginx) {
    const ngPort = await freePort();
    const ng = spawnLogged(NGINX, ['-c', nginxProxy(tmp, ngPort, origins), '-p', tmp], tmp, 'nginx-proxy');
    targets.push({ name: 'nginx', url: `http://127.0.0.1:${ngPort}`, pid: ng.pid, proc: ng });
    if (opts.cache) {
      const ncPort = await freePort();
      const nc = spawnLogged(NGINX, ['-c', nginxProxy(tmp, ncPort, origins, true), '-p', tmp], tmp, 'nginx-proxy-cache');
      targets.push({ name: 'nginx (cache)', url: `http://127.0.0.1:${ncPort}`, pid: nc.pid, proc: nc });
    }
  }
  await Promise.all(targets.map((t) => waitForPort(Number(new URL(t.url).port))));
  const chosen = opts.only ? targets.filter((t) => t.name === 'direct' || opts.only!.some((o) => t.name.startsWith(o))) : targets;
  for (const t of targets) if (!chosen.includes(t)) t.proc?.kill('SIGTERM');
  return { origins, originKind: haveNginx ? `nginx ${nginxVersion()} (uploads: nginx, then a Node sink that reads the whole body)` : 'Node (nginx not installed)', originProc, sinkProc, targets: chosen };
}

function nginxVersion(): string {
  // nginx -v prints to stderr.
  return spawnSync(NGINX, ['-v'], { encoding: 'utf8' }).stderr.trim().replace('nginx version: nginx/', '');
}

async function measure(target: Target, scenario: Scenario, opts: Options, tmp: string): Promise<{ wrk: WrkResult; cpuS: number | undefined; peakRss: number | undefined }> {
  const pids = target.pid ? processTree(target.pid) : [];
  const cpu0 = pids.length ? cpuSeconds(pids) : 0;
  let peak = pids.length ? rssMiB(pids) : 0;
  const sampler = setInterval(() => {
    if (pids.length) peak = Math.max(peak, rssMiB(pids));
  }, 100);
  try {
    const wrk = await runWrk({ url: target.url + scenario.path, durationS: opts.durationS, connections: opts.connections, script: scenario.script, headers: scenario.headers, tmpDir: tmp });
    const cpuS = pids.length ? cpuSeconds(pids) - cpu0 : undefined;
    return { wrk, cpuS, peakRss: pids.length ? peak : undefined };
  } finally {
    clearInterval(sampler);
  }
}

interface StreamRow {
  target: string;
  direction: 'upload' | 'download';
  mib: number;
  seconds: number;
  rssGrowthMiB: number;
}

async function stream(target: Target, direction: 'upload' | 'download', mib: number): Promise<StreamRow> {
  const pids = target.pid ? processTree(target.pid) : [];
  const base = rssMiB(pids);
  let peak = base;
  const sampler = setInterval(() => (peak = Math.max(peak, rssMiB(pids))), 20);
  const start = performance.now();
  try {
    await new Promise<void>((resolvePromise, reject) => {
      if (direction === 'download') {
        http
          .get(`${target.url}/200m`, { agent: false }, (res) => {
            let got = 0;
            res.on('data', (c: Buffer) => (got += c.length));
            res.on('end', () => (got === 200 * MIB ? resolvePromise() : reject(new Error(`${target.name}: downloaded ${got} bytes`))));
            res.on('error', reject);
          })
          .on('error', reject);
        return;
      }
      const block = Buffer.alloc(MIB, 'u');
      const req = http.request(`${target.url}/upload`, { method: 'POST', agent: false, headers: { 'content-length': String(mib * MIB) } }, (res) => {
        res.resume();
        res.on('end', () => {
          if (res.statusCode !== 200) reject(new Error(`${target.name}: upload status ${res.statusCode}`));
          else if (left > 0) reject(new Error(`${target.name}: answered before reading the whole upload`));
          else resolvePromise();
        });
      });
      req.on('error', (e) => reject(new Error(`${target.name}: upload failed: ${e.message}`)));
      let left = mib;
      const pump = () => {
        while (left > 0) {
          left--;
          if (!req.write(block)) return void req.once('drain', pump);
        }
        req.end();
      };
      pump();
    });
  } finally {
    clearInterval(sampler);
  }
  return { target: target.name, direction, mib: direction === 'download' ? 200 : mib, seconds: (performance.now() - start) / 1000, rssGrowthMiB: Math.max(0, peak - base) };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

function fmt(n: number | undefined, digits = 0): string {
  if (n === undefined || !Number.isFinite(n)) return '—';
  return n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function ratio(a: number | undefined, b: number | undefined): string {
  return a !== undefined && b !== undefined && b > 0 ? `${(a / b).toFixed(2)}×` : '—';
}

async function main(): Promise<void> {
  const opts = parseOptions(process.argv.slice(2));
  for (const [flag, value, min] of [['--rounds', opts.rounds, 1], ['--paired-rounds', opts.pairedRounds, 0], ['--fixed-rounds', opts.fixedRounds, 0], ['--rate', opts.rate / FIXED_RATE_CLIENTS, 1], ['--connections', opts.connections, 2], ['--stream-mib', opts.streamMiB, 1]] as const) {
    if (!Number.isInteger(value) || value < min) {
      if (flag === '--rate') console.error(`--rate must be a multiple of ${FIXED_RATE_CLIENTS} (one rate per h2load connection; got ${String(opts.rate)})`);
      else console.error(`${flag} must be a whole number of at least ${min} (got ${String(value)})`);
      process.exit(2);
    }
  }
  if (process.argv.includes('--picks-only')) {
    console.log(renderPicks(benchPicks(400)).join('\n'));
    return;
  }
  try {
    execFileSync('wrk', ['--version'], { stdio: 'ignore' });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      console.error('wrk is not installed: apt-get install wrk (Debian) and run again');
      process.exit(2);
    }
  }
  if (!existsSync(join(ROOT, 'dist', 'main.js'))) {
    console.error('dist/main.js is missing: run `npm run build` first (npm run bench does)');
    process.exit(2);
  }
  const tmp = mkdtempSync(join(os.tmpdir(), 'proxymity-bench-'));
  if (opts.wsOnly) {
    console.log(renderWs(await benchWebSocket({ root: ROOT, tmp, rounds: opts.rounds, durationS: opts.durationS, clients: 64, messageBytes: 64 })).join('\n'));
    removeTemp(tmp);
    return;
  }
  const started = Date.now();
  const { originKind, originProc, sinkProc, targets } = await startTargets(tmp, opts);
  let done = false;
  const idleRss = await idleMemory(targets.find((t) => t.name === 'proxymity'), tmp);
  console.log(`origins: ${originKind}; targets: ${targets.map((t) => t.name).join(', ')}; ${opts.rounds} rounds × ${opts.durationS}s × ${SCENARIOS.length + (opts.cache ? CACHE_SCENARIOS.length : 0)} scenarios; wrk -t1 -c${opts.connections}`);

  try {
    // Warm-up: JIT and connection pools, not measured.
    for (const t of targets) await runWrk({ url: `${t.url}/`, durationS: 1, connections: opts.connections, tmpDir: tmp });

    const samples = new Map<string, { rps: number[]; rpcs: number[]; p50: number[]; p99: number[]; peak: number[]; errors: number }>();
    const all = opts.cache ? [...SCENARIOS, ...CACHE_SCENARIOS] : SCENARIOS;
    const scenarios = opts.scenarios ? all.filter((x) => opts.scenarios!.some((p) => x.name.startsWith(p))) : all;
    for (let round = 0; round < opts.rounds; round++) {
      for (const scenario of scenarios) {
        // Rotate the order each round so no target always runs first (A B C D, B C D A, ...).
        const order = targets.map((_, i) => targets[(i + round) % targets.length]);
        for (const t of order) {
          const m = await measure(t, scenario, opts, tmp);
          const key = `${scenario.name}\u0000${t.name}`;
          const s = samples.get(key) ?? { rps: [], rpcs: [], p50: [], p99: [], peak: [], errors: 0 };
          s.rps.push(m.wrk.rps);
          if (m.cpuS !== undefined && m.cpuS > 0) s.rpcs.push(m.wrk.requests / m.cpuS);
          s.p50.push(m.wrk.p50Ms);
          s.p99.push(m.wrk.p99Ms);
          if (m.peakRss !== undefined) s.peak.push(m.peakRss);
          s.errors += m.wrk.errors + m.wrk.non2xx;
          samples.set(key, s);
          process.stdout.write('.');
        }
      }
    }
    process.stdout.write('\n');

    const rows: Row[] = [];
    for (const scenario of scenarios) {
      for (const t of targets) {
        const s = samples.get(`${scenario.name}\u0000${t.name}`)!;
        rows.push({
          scenario: scenario.name,
          target: t.name,
          rps: median(s.rps),
          reqPerCpuS: s.rpcs.length ? median(s.rpcs) : undefined,
          p50Ms: median(s.p50),
          p99Ms: median(s.p99),
          peakRssMiB: s.peak.length ? Math.max(...s.peak) : undefined,
          errors: s.errors,
          rounds: { rps: s.rps, reqPerCpuS: s.rpcs, p99Ms: s.p99 },
        });
      }
    }

    const paired: PairedResult[] = [];
    const px = targets.find((t) => t.name === 'proxymity');
    const bare = targets.find((t) => t.name === 'bare http-proxy');
    if (opts.pairedRounds > 0 && px?.pid !== undefined && bare?.pid !== undefined) {
      for (const scenario of scenarios.filter((x) => x.name === 'small GET (3 B)' || x.name === '16 KiB GET')) {
        paired.push(await pairedRun(px, bare, scenario, { rounds: opts.pairedRounds, durationS: opts.quick ? 1 : 3, connections: opts.connections, tmpDir: tmp }));
      }
      process.stdout.write('\n');
    }

    const fixed: FixedRateResult[] = [];
    const fixedUndici: FixedRateResult[] = [];
    const noH2load = opts.fixedRounds > 0 ? h2loadMissing() : undefined;
    const undici = targets.find((t) => t.name === 'bare undici');
    for (const [a, into] of [[px, fixed], [undici, fixedUndici]] as const) {
      if (opts.fixedRounds === 0 || noH2load !== undefined || a?.pid === undefined || bare?.pid === undefined) continue;
      for (const scenario of scenarios.filter((x) => x.name === 'small GET (3 B)' || x.name === '16 KiB GET')) {
        into.push(await fixedRateRun(a, bare, scenario, { rounds: opts.fixedRounds, durationS: opts.quick ? 1 : 4, clients: FIXED_RATE_CLIENTS, rpsPerClient: opts.rate / FIXED_RATE_CLIENTS, tmpDir: tmp }));
      }
      process.stdout.write('\n');
    }

    const streams: StreamRow[] = [];
    for (const t of opts.noStream ? [] : targets.filter((x) => x.pid !== undefined)) {
      streams.push(await stream(t, 'upload', opts.streamMiB));
      streams.push(await stream(t, 'download', 200));
    }

    const picks = benchPicks(opts.quick ? 200 : 400);
    const h2 = opts.tls ? await runH2load(targets.find((t) => t.name === 'proxymity (https)'), opts) : undefined;
    const ws = opts.ws ? await benchWebSocket({ root: ROOT, tmp, rounds: opts.rounds, durationS: opts.durationS, clients: 64, messageBytes: 64 }) : undefined;
    const md = [render(rows, streams, picks, { originKind, idleRss, opts, seconds: (Date.now() - started) / 1000 }), ...renderPaired(paired, median), ...renderFixedRate(fixed, median), ...renderFixedRate(fixedUndici, median, 'bare undici'), ...(noH2load ? ['', noH2load] : []), ...(h2 ? ['', h2] : []), ...(ws ? renderWs(ws) : [])].join('\n');
    console.log(md);
    const dir = join(ROOT, 'bench-results');
    mkdirSync(dir, { recursive: true });
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    writeFileSync(join(dir, `${stamp}.json`), JSON.stringify({ date: new Date().toISOString(), machine: machine(), originKind, idleRssMiB: idleRss, options: opts, rows, paired, fixedRate: fixed, fixedRateUndici: fixedUndici, streams, picks, websocket: ws }, null, 2));
    writeFileSync(join(dir, `${stamp}.md`), md);
    console.log(`written: bench-results/${stamp}.json and .md`);
    done = true;
  } finally {
    for (const t of targets) t.proc?.kill('SIGTERM');
    originProc.kill('SIGTERM');
    sinkProc?.kill('SIGTERM');
    for (const p of extraProcs) p.kill('SIGTERM');
    // The processes' logs and configs: kept when the run failed, for reading.
    if (done) removeTemp(tmp);
    else console.error(`logs of the run kept in ${tmp}`);
  }
}

/** Removes the run's temp directory; children may still be writing there as they exit, so a failure only leaves it. */
function removeTemp(tmp: string): void {
  try {
    rmSync(tmp, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
  } catch (err) {
    console.error(`could not remove ${tmp}: ${(err as Error).message}`);
  }
}

function machine(): string {
  return `${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'}, ${Math.round(os.totalmem() / 1024 ** 3)} GiB, Node ${process.version}, ${os.type()} ${os.release()}`;
}

interface IdleRss {
  /** Proxymity right after start, and after 30 s without traffic. */
  proxymityBoot: number;
  proxymityIdle: number;
  /** The same for a bare Nest 12 app (bare-nest.ts). */
  nestBoot: number;
  nestIdle: number;
}

/**
 * RSS right after start and once idle: V8 grows the young generation while a Nest app boots and
 * its memory reducer gives it back after some seconds without allocation (about 15 s here), so
 * the idle figure is read 30 s after start, for Proxymity and for a bare Nest app alike.
 * Proxymity runs as `npm start` runs it, without the memory reducer (START_FLAGS), and keeps its
 * young generation small while it boots instead (src/heap-tuning.ts); the bare Nest app runs with
 * node's defaults.
 */
async function idleMemory(px: Target | undefined, tmp: string): Promise<IdleRss | undefined> {
  if (px?.pid === undefined) return undefined;
  const port = await freePort();
  const nest = spawnLogged(process.execPath, [join(HERE, 'bare-nest.js'), '--port', String(port)], tmp, 'bare-nest');
  try {
    await waitForPort(port);
    const proxymityBoot = rssMiB(processTree(px.pid));
    const nestBoot = rssMiB(processTree(nest.pid as number));
    await new Promise((r) => setTimeout(r, 30_000));
    return { proxymityBoot, proxymityIdle: rssMiB(processTree(px.pid)), nestBoot, nestIdle: rssMiB(processTree(nest.pid as number)) };
  } finally {
    nest.kill('SIGTERM');
  }
}

function render(rows: Row[], streams: StreamRow[], picks: PickResult[], meta: { originKind: string; idleRss: IdleRss | undefined; opts: Options; seconds: number }): string {
  const lines: string[] = [];
  lines.push(`Date: ${new Date().toISOString()}  `, `Machine: ${machine()}  `, `Origins: ${meta.originKind}; load: wrk -t1 -c${meta.opts.connections}, ${meta.opts.rounds} interleaved rounds × ${meta.opts.durationS}s, medians; run took ${meta.seconds.toFixed(0)}s`, '');
  lines.push('| scenario | target | req/s | req per proxy CPU-s | p50 ms | p99 ms | peak RSS MiB | errors | req/CPU-s vs bare | vs nginx | p99 vs bare |');
  lines.push('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    const bare = rows.find((x) => x.scenario === r.scenario && x.target === 'bare http-proxy');
    const ng = rows.find((x) => x.scenario === r.scenario && x.target === 'nginx');
    const isProxy = r.target !== 'direct';
    lines.push(
      `| ${r.scenario} | ${r.target} | ${fmt(r.rps)} | ${fmt(r.reqPerCpuS)} | ${fmt(r.p50Ms, 2)} | ${fmt(r.p99Ms, 2)} | ${fmt(r.peakRssMiB, 1)} | ${r.errors} | ${isProxy ? ratio(r.reqPerCpuS, bare?.reqPerCpuS) : '—'} | ${isProxy ? ratio(r.reqPerCpuS, ng?.reqPerCpuS) : '—'} | ${isProxy ? ratio(r.p99Ms, bare?.p99Ms) : '—'} |`,
    );
  }
  const m = meta.idleRss;
  if (m !== undefined) lines.push('', `RSS: Proxymity ${fmt(m.proxymityBoot, 1)} MiB after start, ${fmt(m.proxymityIdle, 1)} MiB idle (30 s after start); a bare Nest 12 app: ${fmt(m.nestBoot, 1)} and ${fmt(m.nestIdle, 1)} MiB`, '');
  lines.push('| streaming | target | MiB | seconds | MiB/s | RSS growth MiB |', '|---|---|---:|---:|---:|---:|');
  for (const s of streams) lines.push(`| ${s.direction} | ${s.target} | ${s.mib} | ${s.seconds.toFixed(2)} | ${fmt(s.mib / s.seconds)} | ${s.rssGrowthMiB.toFixed(1)} |`);
  lines.push('', ...renderPicks(picks));
  return lines.join('\n');
}

function renderPicks(picks: PickResult[]): string[] {
  const lines = ['| strategy | backends | pick() per second |', '|---|---:|---:|'];
  for (const p of picks) lines.push(`| ${p.strategy} | ${p.backends} | ${fmt(p.picksPerSecond)} |`);
  return lines;
}

// Bounded in time whatever happens: a stuck run ends itself (children are killed by the group).
setTimeout(() => {
  console.error('benchmark exceeded 15 minutes; giving up');
  process.exit(1);
}, 15 * 60_000).unref();

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
