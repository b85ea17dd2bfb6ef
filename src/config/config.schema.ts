/**
 * The one schema for config.yaml. Validation, defaults, TypeScript types (`z.infer`) and the
 * field documentation all come from here; the README's config reference mirrors the
 * `.describe()` texts.
 *
 * The seed format (`proxy: {host, port}` + `backend: [{name, url, enabled}]`) is a valid
 * config on its own: every other key is optional and has a default.
 */
import { accessSync, constants as fsConstants } from 'node:fs';
import { isIP } from 'node:net';
import { z } from 'zod';
import { STRATEGY_NAMES } from '../load-balancer/strategy.registry.js';
import { formatDurationMs, parseDurationMs } from './duration.js';

/** A duration such as "10s", "500ms", "2m" or a number of milliseconds, with bounds. */
function duration(opts: { min?: number; max?: number } = {}) {
  const { min = 0, max = 24 * 3_600_000 } = opts;
  return z.union([z.string(), z.number()]).transform((value, ctx) => {
    const ms = parseDurationMs(value);
    if (ms === undefined) {
      ctx.addIssue({ code: 'custom', message: `expected a duration such as "10s", "500ms" or a number of milliseconds, got ${JSON.stringify(value)}` });
      return z.NEVER;
    }
    if (ms < min || ms > max) {
      ctx.addIssue({ code: 'custom', message: `must be between ${formatDurationMs(min)} and ${formatDurationMs(max)} (got ${JSON.stringify(value)})` });
      return z.NEVER;
    }
    return ms;
  });
}

/** A TCP port given as a number or a numeric string (the seed writes `port: "8080"`). */
const port = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const n = typeof value === 'number' ? value : /^\d+$/.test(value.trim()) ? Number(value) : NaN;
  if (!Number.isInteger(n) || n < 0 || n > 65535) {
    ctx.addIssue({ code: 'custom', message: `expected a port number from 0 to 65535, got ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return n;
});

const positiveInt = (max: number) => z.number().int().min(1).max(max);

const BYTE_UNITS: Readonly<Record<string, number>> = { b: 1, k: 1024, kb: 1024, kib: 1024, m: 1024 ** 2, mb: 1024 ** 2, mib: 1024 ** 2, g: 1024 ** 3, gb: 1024 ** 3, gib: 1024 ** 3 };

/** A size such as "10MiB", "512k", "1g" (1024-based, as nginx reads them) or a number of bytes. */
const byteSize = z.union([z.string(), z.number()]).transform((value, ctx) => {
  const m = typeof value === 'number' ? null : /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(value.trim());
  const n = typeof value === 'number' ? value : m && BYTE_UNITS[m[2].toLowerCase() || 'b'] !== undefined ? Number(m[1]) * BYTE_UNITS[m[2].toLowerCase() || 'b'] : NaN;
  if (!Number.isFinite(n) || n < 0) {
    ctx.addIssue({ code: 'custom', message: `expected a size such as "10MiB", "512KiB" or a number of bytes, got ${JSON.stringify(value)}` });
    return z.NEVER;
  }
  return Math.floor(n);
});

/** An IP address or CIDR block, IPv4 or IPv6. */
const cidr = z.string().refine((v) => isCidr(v), { error: (iss) => `${JSON.stringify(iss.input)} is not an IP address or CIDR block (e.g. "10.0.0.0/8", "::1")` });

function isCidr(v: string): boolean {
  const [addr, bits, extra] = v.split('/');
  if (extra !== undefined) return false;
  const family = isIP(addr);
  if (family === 0) return false;
  if (bits === undefined) return true;
  if (!/^\d+$/.test(bits)) return false;
  return Number(bits) <= (family === 4 ? 32 : 128);
}

const httpUrl = z.string().transform((value, ctx) => {
  let url: URL | undefined;
  try {
    url = new URL(value);
  } catch {
    url = undefined;
  }
  if (url === undefined || (url.protocol !== 'http:' && url.protocol !== 'https:') || url.hostname === '') {
    ctx.addIssue({ code: 'custom', message: `${JSON.stringify(value)} is not an http(s) URL (write it as "http://host:port")` });
    return z.NEVER;
  }
  if (url.search !== '' || url.hash !== '' || url.username !== '' || url.password !== '') {
    ctx.addIssue({ code: 'custom', message: `${JSON.stringify(value)} must not carry a query, fragment or credentials` });
    return z.NEVER;
  }
  return value;
});

const urlPath = z.string().regex(/^\/[^\s?#]*$/, { message: 'expected an absolute path such as "/health"' });

/** "200-399", 204, or a list of them -> inclusive [low, high] ranges. */
const statusItem = z.union([z.number().int().min(100).max(599), z.string().regex(/^[1-5]\d\d(-[1-5]\d\d)?$/, { message: 'expected a status such as 200 or a range such as "200-399"' })]);
const expectStatus = z.union([statusItem, z.array(statusItem).min(1)]).transform((value) =>
  (Array.isArray(value) ? value : [value]).map((item): [number, number] => {
    if (typeof item === 'number') return [item, item];
    const [lo, hi = lo] = item.split('-').map(Number);
    return [Math.min(lo, hi), Math.max(lo, hi)];
  }),
);
const headerName = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;
/**
 * One header field value as it may be written (RFC 9110 §5.5): visible characters, spaces and
 * tabs inside, no control character, no space at either end. Latin-1 letters (obs-text) pass,
 * as Node writes them (one byte each).
 */
const HEADER_VALUE = /^(?:[\x21-\x7e\x80-\xff](?:[\x20-\x7e\x80-\xff\t]*[\x21-\x7e\x80-\xff])?)?$/;
const HEADER_VALUE_MESSAGE = 'must be one header value: visible ASCII or Latin-1 characters and spaces, no line break or other control character, no space at either end';
const headerValue = z.string().regex(HEADER_VALUE, {
  // A YAML `|` or `>` block keeps its final line break, the likeliest way to get one here.
  error: (iss) => (typeof iss.input === 'string' && iss.input.endsWith('\n') ? `${HEADER_VALUE_MESSAGE} (a YAML | or > block keeps its final line break: write the value in quotes)` : HEADER_VALUE_MESSAGE),
});

/** Fields of a health check, without defaults: `healthCheck` adds them, `backend[].healthCheck` overrides. */
const healthCheckFields = {
  enabled: z.boolean(),
  path: urlPath,
  method: z.enum(['GET', 'HEAD', 'OPTIONS']),
  interval: duration({ min: 1000, max: 3_600_000 }),
  unhealthyInterval: duration({ min: 1000, max: 3_600_000 }),
  timeout: duration({ min: 10, max: 600_000 }),
  jitter: duration({ max: 600_000 }),
  healthyThreshold: positiveInt(100),
  unhealthyThreshold: positiveInt(100),
  expectStatus,
  expectBody: z.string().min(1).refine((v) => compilesIfRegex(v), { error: 'invalid regular expression' }),
  headers: z.record(z.string().regex(headerName, { message: 'expected a header name' }), headerValue),
  port: z.number().int().min(1).max(65535),
  initialState: z.enum(['healthy', 'unknown']),
  cooldown: duration({ min: 100, max: 3_600_000 }),
};

/** `/…/flags` is a regular expression (flags i, m, s, u only); anything else a substring. */
export function compilesIfRegex(v: string): boolean {
  const m = /^\/(.+)\/([imsu]*)$/.exec(v);
  if (!m) return !/^\/.+\/[a-z]*$/.test(v); // "/x/g" and friends: refuse rather than misread
  try {
    new RegExp(m[1], m[2]);
    return true;
  } catch {
    return false;
  }
}

const healthCheckOverride = z.strictObject(healthCheckFields).partial().describe('Per-backend overrides of any healthCheck key.');

/** A file that exists and can be read (certificates, keys). */
const readableFile = z.string().min(1).refine((f) => isReadable(f), { error: (iss) => `cannot read file ${JSON.stringify(iss.input)}` });

function isReadable(file: string): boolean {
  try {
    accessSync(file, fsConstants.R_OK);
    return true;
  } catch {
    return false;
  }
}

const backendTlsSchema = z
  .strictObject({
    servername: z.string().min(1).optional().describe('Name sent in SNI and checked against the backend\'s certificate. Default: the URL\'s host.'),
    ca: readableFile.optional().describe('PEM file with the CA certificate(s) to trust for this backend. Default: the system\'s CAs.'),
    insecureSkipVerify: z.boolean().prefault(false).describe('Accept any certificate (testing only). Default false.'),
    clientCert: readableFile.optional().describe('PEM client certificate for mutual TLS.'),
    clientKey: readableFile.optional().describe('PEM key of clientCert.'),
  })
  .describe('TLS to an https:// backend.');

export const backendSchema = z
  .strictObject({
    name: z.string().min(1).max(128).regex(/^[A-Za-z0-9._:-]+$/, { message: 'use letters, digits, ".", "_", ":" or "-"' })
      .optional().describe('Unique name, used in logs, /health and metrics. Default: the URL\'s host:port.'),
    url: httpUrl.describe('Base URL of the backend, "http://host:port" (https is accepted). A path is prefixed to every proxied path.'),
    enabled: z.boolean().prefault(true).describe('A disabled backend is never picked and never probed. Default true.'),
    weight: z.number().int().min(1).max(1000).prefault(1).describe('Relative share of traffic (1-1000). Default 1.'),
    backup: z.boolean().prefault(false).describe('Used only while no primary (non-backup) backend is eligible. Default false.'),
    maxConnections: z.number().int().min(1).max(1_000_000).optional().describe('Most requests in flight to this backend; at the cap it is skipped, all at cap gives 503. Default: no cap.'),
    slowStart: duration({ max: 3_600_000 }).optional().describe('After recovering, ramp this backend\'s weight from 10% to full over this window. Default: loadBalancer.slowStart.'),
    healthCheck: healthCheckOverride.optional(),
    tls: backendTlsSchema.optional(),
  })
  .describe('One upstream server.');

const tokenName = z.string().regex(/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/, { message: 'expected a cookie name (token characters only)' });

const hashSchema = z
  .strictObject({
    key: z
      .string()
      .regex(/^(client-ip|path|(header|cookie|query):[A-Za-z0-9!#$%&'*+.^_`|~-]+)$/, { message: 'expected client-ip, path, header:NAME, cookie:NAME or query:NAME' })
      .optional()
      .describe('What the hash strategy hashes: client-ip, path, header:NAME, cookie:NAME or query:NAME. Required for "hash"; "ip-hash" always uses client-ip.'),
    balanceFactor: z.number().min(1).max(100).optional().describe('Bounded load: no backend takes more than balanceFactor × the average in-flight load (e.g. 1.25). Default: unbounded.'),
  })
  .describe('Options of the hash and ip-hash strategies.');

const stickySchema = z
  .strictObject({
    cookie: tokenName.describe('Cookie name, e.g. "pxy_srv".'),
    secret: z.string().min(16).optional().describe('HMAC key for cookie values (at least 16 characters). Default: random per process, so cookies do not survive a restart or carry across instances.'),
    maxAge: duration({ max: 10 * 365 * 24 * 3_600_000 }).optional().describe('Cookie Max-Age. Default: a session cookie.'),
    path: z.string().prefault('/').describe('Cookie Path. Default "/".'),
    domain: z.string().optional().describe('Cookie Domain. Default: none (host-only).'),
    secure: z.boolean().prefault(false).describe('Add Secure. Default false.'),
    httpOnly: z.boolean().prefault(true).describe('Add HttpOnly. Default true.'),
    sameSite: z.enum(['Strict', 'Lax', 'None']).prefault('Lax').describe('SameSite attribute. Default "Lax".'),
  })
  .describe('Sticky sessions on top of any strategy. Default: off.');

const strategyName = z.string().refine((name) => STRATEGY_NAMES.includes(name), { error: (iss) => `unknown ${JSON.stringify(iss.input)}; expected one of ${STRATEGY_NAMES.join(', ')}` });

const retryFields = {
  attempts: positiveInt(10).describe('Most tries of one request, the first included, each on a different backend. Default: upstream.retries + 1 (3).'),
  on: z
    .array(z.enum(['connect-failure', 'reset', 'timeout', '5xx', 'gateway-error']))
    .describe('What is retried: connect-failure (refused, connect timeout, DNS: any method), and for `methods` only: reset (before any answer), timeout (no answer in time), 5xx, gateway-error (502/503/504). Default [connect-failure, reset].'),
  methods: z.array(z.string().regex(/^[A-Za-z]+$/).transform((m) => m.toUpperCase())).describe('Methods that may be retried after the request reached a backend. Default: the idempotent ones.'),
  bufferBody: byteSize
    .refine((n) => n <= 16 * 1024 * 1024, { message: 'must be at most 16MiB' })
    .describe('A request body of a method in `methods` up to this size is kept while it streams, so that the request can still be retried after it reached a backend. 0 = bodies are never replayed. Default 64KiB.'),
};

const headerOps = z
  .strictObject({
    set: z.record(z.string().regex(headerName, { message: 'expected a header name' }), headerValue).prefault({}).describe('Headers set (replacing any value).'),
    add: z.record(z.string().regex(headerName, { message: 'expected a header name' }), headerValue).prefault({}).describe('Headers added (after any existing value).'),
    remove: z.array(z.string().regex(headerName, { message: 'expected a header name' })).prefault([]).describe('Headers removed.'),
  })
  .describe('Header changes: remove, then set, then add.');

const rateKeyPart = z.string().regex(/^(client-ip|route|(header|cookie):[A-Za-z0-9!#$%&'*+.^_`|~-]+)$/, { message: 'expected client-ip, route, header:NAME or cookie:NAME' });

export const rateLimitSchema = z
  .strictObject({
    rate: z.number().int().min(1).max(1_000_000).describe('Requests allowed per `per` on average.'),
    per: duration({ min: 1, max: 24 * 3_600_000 }).prefault('1s').describe('The period of `rate`. Default 1s.'),
    burst: z.number().int().min(1).max(1_000_000).optional().describe('How many requests may arrive at once (the bucket size). Default: rate.'),
    key: z.union([rateKeyPart, z.array(rateKeyPart).min(1)]).prefault('client-ip').describe('What a bucket belongs to: client-ip, route, header:NAME, cookie:NAME, or a list of them (combined). Default client-ip.'),
    ipv6Prefix: z.number().int().min(1).max(128).prefault(64).describe('IPv6 client addresses in the same prefix share a bucket. Default 64.'),
    missingKey: z.enum(['shared', 'allow', 'deny']).prefault('shared').describe('Requests without the key\'s header or cookie: "shared" (one bucket for all of them), "allow" (not limited) or "deny" (429). Default "shared".'),
    allow: z.array(cidr).prefault([]).describe('Client addresses or CIDR blocks never limited. Default none.'),
    maxConcurrent: z.number().int().min(1).max(1_000_000).optional().describe('Most requests in flight per key on this instance (429 above). Default: no cap.'),
    headers: z.boolean().prefault(false).describe('Also send RateLimit-Policy and RateLimit (remaining quota) on allowed responses. Default false (429s always carry them).'),
    dryRun: z.boolean().prefault(false).describe('Count and log what would be limited, but let it through. Default false.'),
    store: z.enum(['memory', 'redis']).prefault('memory').describe('Where buckets live: "memory" (this instance) or "redis" (shared by every instance). Default "memory".'),
    redis: z
      .strictObject({
        url: z.string().regex(/^rediss?:\/\//, { message: 'expected redis://host:port or rediss://...' }).describe('e.g. "redis://127.0.0.1:6379/0".'),
        prefix: z.string().prefault('proxymity:rl:').describe('Key prefix. Default "proxymity:rl:".'),
        timeout: duration({ min: 1, max: 10_000 }).prefault('100ms').describe('A decision that takes longer is a store error. Default 100ms.'),
      })
      .optional()
      .describe('The Redis store (required when store is "redis").'),
    onStoreError: z.enum(['allow', 'deny']).prefault('allow').describe('When Redis cannot answer: let requests through ("allow") or answer 503 ("deny"). Default "allow".'),
    maxKeys: z.number().int().min(100).max(10_000_000).prefault(100_000).describe('Memory store: most buckets kept; the least recently used are evicted first. Default 100000.'),
  })
  .describe('Rate limiting (GCRA).');

const hostPattern = z.string().regex(/^(\*\.)?[A-Za-z0-9.-]+$/, { message: 'expected a host name such as "api.example.com" or "*.example.com"' });

export const poolSchema = z
  .strictObject({
    strategy: strategyName.optional().describe('Strategy of this pool. Default: loadBalancer.strategy.'),
    hash: hashSchema.optional().describe('Hash options of this pool. Default: loadBalancer.hash.'),
    sticky: stickySchema.optional().describe('Sticky sessions for this pool. Default: loadBalancer.sticky.'),
    slowStart: duration({ max: 3_600_000 }).optional().describe('Slow-start window of this pool. Default: loadBalancer.slowStart.'),
    healthCheck: z.strictObject(healthCheckFields).partial().optional().describe('Overrides of the top-level healthCheck for this pool (backends can override again).'),
    backends: z.array(backendSchema).min(1, { message: 'a pool needs at least one backend' }).describe('The pool\'s upstream servers.'),
  })
  .describe('A named group of backends with its own balancing and health checks.');

export const routeSchema = z
  .strictObject({
    name: z.string().min(1).max(128).optional().describe('Name used in logs. Default: "route-N" (its position).'),
    match: z
      .strictObject({
        host: z.union([hostPattern, z.array(hostPattern).min(1)]).optional().describe('Host (port ignored, case-insensitive): exact "api.example.com" or wildcard "*.example.com" (any subdomain). Default: any.'),
        path: z.string().regex(/^\//, { message: 'expected a path starting with "/"' }).optional().describe('Path prefix, compared as a plain string prefix ("/api" also matches "/apix"; write "/api/" to avoid it). Default: any.'),
        pathExact: z.string().regex(/^\//, { message: 'expected a path starting with "/"' }).optional().describe('Exact path (the query string is ignored).'),
        methods: z.array(z.string().regex(/^[A-Za-z]+$/).transform((m) => m.toUpperCase())).min(1).optional().describe('Methods matched. Default: any.'),
        headers: z.record(z.string().regex(headerName, { message: 'expected a header name' }), z.string()).optional().describe('Request headers that must have exactly these values ("*": present with any value).'),
      })
      .prefault({})
      .describe('What the route matches; every condition given must hold. Default: everything.'),
    pool: z.string().min(1).describe('The pool this route sends to.'),
    stripPrefix: z.string().regex(/^\//, { message: 'expected a path starting with "/"' }).optional().describe('Removed from the start of the path before forwarding, when present.'),
    addPrefix: z.string().regex(/^\/.*[^/]$|^\/$/, { message: 'expected a path starting with "/" and not ending with "/"' }).optional().describe('Put in front of the path (after stripPrefix).'),
    hostHeader: z.string().min(1).prefault('client').describe('Host header sent upstream: "client" (as received), "backend" (the backend URL\'s host:port) or a literal host. Default "client".'),
    requestHeaders: headerOps.optional().describe('Changes to the request headers sent upstream.'),
    responseHeaders: headerOps.optional().describe('Changes to the response headers sent to the client.'),
    timeouts: z
      .strictObject({
        headerTimeout: duration({ min: 10, max: 3_600_000 }).optional().describe('As upstream.headerTimeout, for this route.'),
        totalTimeout: duration({ max: 24 * 3_600_000 }).optional().describe('As upstream.totalTimeout, for this route.'),
      })
      .optional()
      .describe('Timeouts of this route. Default: upstream\'s.'),
    retry: z.strictObject(retryFields).partial().optional().describe('Overrides of the top-level retry policy for this route.'),
    maxBodySize: byteSize.optional().describe('As proxy.maxBodySize, for this route.'),
    rateLimit: z.union([z.literal(false), rateLimitSchema]).optional().describe('This route\'s rate limit, or false for none. Default: the top-level rateLimit.'),
    cache: z.boolean().optional().describe('Cache responses on this route (true) or not (false). Default: cache.enabled.'),
  })
  .describe('Sends matching requests to a pool.');

export const configSchema = z
  .strictObject({
    proxy: z
      .strictObject({
        host: z.string().min(1).prefault('0.0.0.0').describe('Address the proxy listens on. Default "0.0.0.0".'),
        port: port.prefault(8080).describe('Port the proxy listens on, number or string; 0 picks a free port. Default 8080.'),
        healthPath: urlPath.prefault('/health').describe('Path of the proxy\'s own health endpoint. Default "/health".'),
        shutdownTimeout: duration({ max: 3_600_000 }).prefault('30s').describe('How long in-flight requests may run after SIGTERM before their connections are cut. Default 30s.'),
        shutdownDelay: duration({ max: 600_000 }).prefault(0).describe('How long /health reports 503 before the listener closes on SIGTERM (lets load balancers drop the instance first). Default 0.'),
        keepAliveTimeout: duration({ min: 0, max: 3_600_000 }).prefault('75s').describe('How long an idle client keep-alive connection stays open. Default 75s (nginx keepalive_timeout).'),
        headersTimeout: duration({ min: 1000, max: 600_000 }).prefault('60s').describe('A client must send its complete request headers within this time. Default 60s.'),
        sendTimeout: duration({ min: 10, max: 3_600_000 }).prefault('60s').describe('Longest a client may take none of a response the proxy has ready for it; then its connection is closed (logged as client_send_timeout). The backend\'s silence meanwhile is not held against it. Default 60s (nginx send_timeout).'),
        trustedProxies: z.array(cidr).prefault([]).describe('Peers (addresses or CIDR blocks) whose X-Forwarded-*/Forwarded headers are kept and whose X-Forwarded-For gives the client address. Default: none.'),
        forwarded: z.boolean().prefault(false).describe('Also send the RFC 7239 Forwarded header. Default false.'),
        maxHeaderSize: byteSize.prefault('16KiB').refine((n) => n >= 1024 && n <= 1024 * 1024, { message: 'must be between 1KiB and 1MiB' }).describe('Largest request header section accepted (request line included); larger gets 431. Default 16KiB (Node\'s).'),
        maxUrlLength: z.number().int().min(256).max(1_048_576).prefault(8192).describe('Longest request target accepted; longer gets 414. Default 8192.'),
        maxBodySize: byteSize.prefault(0).describe('Largest request body accepted, e.g. "10MiB"; larger gets 413. 0 = no limit. Default 0.'),
      })
      .prefault({})
      .describe('The listener.'),
    backend: z.array(backendSchema).min(1, { message: 'at least one backend is required' }).optional().describe('The upstream servers of the seed format: the pool "default". Required unless pools are given.'),
    pools: z.record(z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, { message: 'use letters, digits, ".", "_" or "-"' }), poolSchema).optional().describe('Named pools of backends.'),
    routes: z.array(routeSchema).optional().describe('Routes, matched in order; the first match wins. Default: one catch-all route to the only pool.'),
    loadBalancer: z
      .strictObject({
        hash: hashSchema.prefault({}),
        sticky: stickySchema.optional(),
        slowStart: duration({ max: 3_600_000 }).prefault(0).describe('Default slow-start window for every backend (see backend slowStart). Default 0 (off).'),
        strategy: strategyName
          .prefault('round-robin')
          .describe(`How a backend is chosen: ${STRATEGY_NAMES.join(', ')}. Default "round-robin".`),
      })
      .prefault({})
      .describe('Load-balancing policy.'),
    healthCheck: z
      .strictObject({
        enabled: healthCheckFields.enabled.prefault(true).describe('Run active health checks. Default true. Passive marking applies either way.'),
        path: healthCheckFields.path.prefault('/health').describe('Path probed on each enabled backend. Default "/health".'),
        method: healthCheckFields.method.prefault('GET').describe('GET, HEAD or OPTIONS. Default GET.'),
        interval: healthCheckFields.interval.prefault('10s').describe('Time between probes of a healthy backend; at least 1s (probes are scheduled by a once-a-second cron tick). Default 10s.'),
        unhealthyInterval: healthCheckFields.unhealthyInterval.optional().describe('Time between probes of an unhealthy backend (probe faster while down). Default: interval.'),
        timeout: healthCheckFields.timeout.prefault('2s').describe('A probe that has no complete answer within this time fails. Default 2s.'),
        jitter: healthCheckFields.jitter.prefault(0).describe('Random extra delay (0..jitter) added to each interval, so probes from many instances spread out. Default 0.'),
        healthyThreshold: healthCheckFields.healthyThreshold.prefault(2).describe('Consecutive passing probes that bring an unhealthy backend back. Default 2.'),
        unhealthyThreshold: healthCheckFields.unhealthyThreshold.prefault(3).describe('Consecutive failing probes that take a healthy backend out. Default 3.'),
        expectStatus: healthCheckFields.expectStatus.prefault('200-399').describe('Statuses that pass: 200, "200-299", or a list of them. Default "200-399".'),
        expectBody: healthCheckFields.expectBody.optional().describe('The body must contain this text, or match "/regex/flags". Default: not checked.'),
        headers: healthCheckFields.headers.prefault({}).describe('Extra request headers for probes (e.g. Host). Default none.'),
        port: healthCheckFields.port.optional().describe('Probe this port instead of the backend URL\'s. Default: the URL\'s port.'),
        initialState: healthCheckFields.initialState.prefault('healthy').describe('"healthy": traffic flows at once; "unknown": no traffic until the first passing probe. Default "healthy".'),
        cooldown: healthCheckFields.cooldown.prefault('10s').describe('How long a passively ejected backend rests before it is tried again (the default of outlierDetection.baseEjectionTime). Default 10s.'),
      })
      .prefault({})
      .describe('Active and passive health checking.'),
    outlierDetection: z
      .strictObject({
        consecutiveFailures: positiveInt(1000).prefault(1).describe('Connection-level failures in a row (refused, reset, connect timeout, invalid response; 5xx with consider5xx) that eject a backend. Default 1: at once.'),
        consider5xx: z.boolean().prefault(false).describe('Count 5xx answers as failures too. Default false.'),
        baseEjectionTime: duration({ min: 100, max: 3_600_000 }).optional().describe('An ejection lasts baseEjectionTime × the number of times the backend was ejected, up to maxEjectionTime. Default: healthCheck.cooldown (10s).'),
        maxEjectionTime: duration({ min: 100, max: 24 * 3_600_000 }).prefault('300s').describe('Longest ejection; also how long a backend must stay up before its ejection count is forgotten. Default 300s.'),
        maxEjectionPercent: z.number().int().min(0).max(100).prefault(100).describe('Never eject more than this share of the enabled backends at once (at least one can always be ejected). Default 100.'),
      })
      .prefault({})
      .describe('Passive health (Envoy-style outlier detection) from proxied traffic.'),
    retry: z
      .strictObject({
        attempts: retryFields.attempts.optional(),
        on: retryFields.on.prefault(['connect-failure', 'reset']),
        methods: retryFields.methods.prefault(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']),
        bufferBody: retryFields.bufferBody.prefault('64KiB'),
        backoff: z
          .strictObject({
            base: duration({ max: 60_000 }).prefault(0).describe('First retry waits a random time up to base; each further one doubles it, up to max. Default 0 (retry at once: it goes to another backend).'),
            max: duration({ max: 60_000 }).prefault('250ms').describe('Longest wait between tries. Default 250ms.'),
          })
          .prefault({}),
        budget: z
          .strictObject({
            percent: z.number().min(0).max(100).prefault(20).describe('Requests being retried may be at most this share of the requests in flight. Default 20.'),
            minRetries: z.number().int().min(0).max(100_000).prefault(3).describe('Retries always allowed in flight, whatever the share. Default 3.'),
          })
          .prefault({})
          .describe('Retry budget (Envoy): a failing pool cannot set off a retry storm.'),
      })
      .prefault({})
      .describe('Retry policy.'),
    upstream: z
      .strictObject({
        connectTimeout: duration({ min: 10, max: 600_000 }).prefault('5s').describe('Time allowed to open a connection to a backend, the TLS handshake included for https backends; then 504. Default 5s.'),
        timeout: duration({ min: 10, max: 3_600_000 }).prefault('60s').describe('Idle timeout: longest silence from a backend while waiting for or reading its response; then 504 (or a cut connection once the response began). Default 60s.'),
        headerTimeout: duration({ min: 10, max: 3_600_000 }).optional().describe('Time from sending the request to the response headers (time to first byte), however busy the upload; then 504. Default: only the idle timeout applies.'),
        totalTimeout: duration({ max: 24 * 3_600_000 }).prefault(0).describe('Longest time for a whole exchange, upload and download included; then 504, or a cut connection once the response began. 0 = no limit. Default 0.'),
        keepAliveTimeout: duration({ min: 100, max: 600_000 }).prefault('4s').describe('Idle keep-alive connections to a backend are closed after this. Keep it below the backend\'s own idle timeout (Node\'s is 5s). Default 4s.'),
        maxSockets: positiveInt(65_536).prefault(512).describe('Most connections open to one backend; further requests queue. Default 512.'),
        maxFreeSockets: positiveInt(65_536).prefault(64).describe('Most idle keep-alive connections kept per backend. Default 64.'),
        retries: z.number().int().min(0).max(10).prefault(2).describe('How many other backends a failed request may be retried on, when that is safe (no body byte sent yet; see README). Default 2.'),
      })
      .prefault({})
      .describe('How the proxy talks to backends.'),
    listeners: z
      .array(
        z.strictObject({
          name: z.string().min(1).max(64).optional().describe('Name in logs and metrics. Default: "PROTOCOL-PORT".'),
          host: z.string().min(1).prefault('0.0.0.0').describe('Address. Default "0.0.0.0".'),
          port: port.describe('Port; 0 picks a free one.'),
          protocol: z.enum(['https', 'redirect']).describe('"https": TLS termination (HTTP/2 and HTTP/1.1); "redirect": plain HTTP answering 308 to https.'),
          certificates: z
            .array(
              z.strictObject({
                cert: readableFile.describe('PEM certificate chain (leaf first).'),
                key: readableFile.describe('PEM private key.'),
                passphraseEnv: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/).optional().describe('Environment variable holding the key\'s passphrase.'),
              }),
            )
            .optional()
            .describe('https: certificates, chosen by SNI (exact name, then wildcard, then the first one). Reloaded when the files change and on SIGHUP.'),
          http2: z.boolean().prefault(true).describe('https: offer HTTP/2 (ALPN h2) besides HTTP/1.1. Default true.'),
          hsts: headerValue
            .min(1, { error: 'must not be empty (leave hsts out to send none)' })
            .optional()
            .describe('https: Strict-Transport-Security value added to responses, e.g. "max-age=31536000; includeSubDomains". Default: none.'),
          redirectPort: port.prefault(443).describe('redirect: the https port in Location (omitted when 443). Default 443.'),
        }),
      )
      .prefault([])
      .describe('Listeners besides proxy.host:proxy.port (plain HTTP): HTTPS with HTTP/2, and HTTP-to-HTTPS redirects.'),
    rateLimit: rateLimitSchema.optional().describe('Rate limit for every route that does not set its own. Default: none.'),
    cache: z
      .strictObject({
        enabled: z.boolean().prefault(false).describe('Cache responses on every route that does not set routes[].cache. Default false.'),
        maxSize: byteSize.prefault('64MiB').refine((n) => n >= 1024, { message: 'must be at least 1KiB' }).describe('Memory for stored responses (bodies, headers and bookkeeping); the least recently used go first. Default 64MiB.'),
        maxObjectSize: byteSize.prefault('1MiB').describe('Largest response body stored; larger ones are streamed through uncached. Default 1MiB.'),
        collapse: z.boolean().prefault(true).describe('Concurrent misses for the same URL wait for one backend request instead of each sending their own. Default true.'),
        lockTimeout: duration({ max: 600_000 }).prefault('5s').describe('Longest a collapsed request waits for the first one\'s response; then it goes to a backend itself. Default 5s (nginx proxy_cache_lock_timeout).'),
        staleIfError: duration({ max: 7 * 24 * 3_600_000 }).prefault(0).describe('Serve a stored response up to this long past its freshness when the backend fails (5xx, refused, reset, timeout, none available), as if it said stale-if-error (nginx proxy_cache_use_stale, Varnish grace); never one that must be revalidated. Default 0 (only what the response allows).'),
        heuristic: z.number().min(0).max(1).prefault(0.1).describe('Heuristic freshness (RFC 9111 §4.2.2) for responses without explicit expiry: this share of the time since Last-Modified; 0 = none. Default 0.1.'),
      })
      .refine((c) => c.maxObjectSize <= c.maxSize, { path: ['maxObjectSize'], message: 'must not be larger than cache.maxSize' })
      .prefault({})
      .describe('The response cache (RFC 9111 shared cache, in memory).'),
    websocket: z
      .strictObject({
        enabled: z.boolean().prefault(true).describe('Proxy WebSocket (and other HTTP/1.1 Upgrade) requests. Default true.'),
        idleTimeout: duration({ min: 1000, max: 24 * 3_600_000 }).prefault('1h').describe('A tunnel with no data either way for this long is closed. Default 1h.'),
        maxLifetime: duration({ max: 7 * 24 * 3_600_000 }).prefault(0).describe('Longest life of a tunnel; then it gets a close frame (1001). 0 = no limit. Default 0.'),
        closeDelay: duration({ max: 600_000 }).prefault(0).describe('On shutdown, how long after the listener closes open tunnels get a close frame (1001 Going Away). Default 0.'),
      })
      .prefault({})
      .describe('WebSocket proxying.'),
    admin: z
      .strictObject({
        enabled: z.boolean().prefault(true).describe('Serve the admin listener (metrics, state, health). Default true.'),
        host: z.string().min(1).prefault('127.0.0.1').describe('Address of the admin listener. Default "127.0.0.1" (loopback only).'),
        port: port.prefault(9901).describe('Port of the admin listener; 0 picks a free port. Default 9901.'),
        token: z.string().min(16).optional().describe('Bearer token required on every admin endpoint except /health. Required when host is not a loopback address. Default: $PROXYMITY_ADMIN_TOKEN, else none.'),
      })
      .prefault({})
      .describe('The admin listener: /metrics, /backends, /config, /health.'),
    metrics: z
      .strictObject({
        enabled: z.boolean().prefault(true).describe('Record and serve Prometheus metrics at GET /metrics on the admin listener. Default true.'),
        processMetrics: z.boolean().prefault(true).describe('Include prom-client\'s Node process metrics (CPU, memory, heap, GC, event-loop lag). Default true.'),
        eventLoopResolution: duration({ min: 1, max: 1000 })
          .prefault('10ms')
          .describe(
            'How often the event-loop delay (nodejs_eventloop_lag_*) is sampled, 1ms-1s. Each sample is the time between two samples, so the lag metrics never read below this. Default 10ms (prom-client\'s, so Node dashboards read as usual); 50ms halves an idle proxy\'s CPU.',
          ),
      })
      .prefault({})
      .describe('Prometheus metrics.'),
    accessLog: z
      .strictObject({
        enabled: z.boolean().prefault(false).describe('Write one line per proxied request. Default false.'),
        format: z.enum(['json', 'combined']).prefault('json').describe('"json" (one JSON object per line) or "combined" (Apache/nginx combined text format). Default "json".'),
        output: z.string().min(1).prefault('stdout').describe('"stdout", "stderr" or a file path (appended to; reopened on SIGUSR2 for log rotation). Default "stdout".'),
        sample: z.number().min(0).max(1).prefault(1).describe('Share of requests logged (0..1). Requests that ended in an error (a termination reason or a 5xx) are always logged. Default 1.'),
        filter: z
          .strictObject({
            status: z
              .array(z.union([z.number().int().min(100).max(599).transform(String), z.string().regex(/^[1-5]xx$|^[1-5]\d\d$/, { message: 'expected a status class such as "5xx" or a status such as 404' })]))
              .prefault([]).describe('Log only these statuses or classes, e.g. ["4xx", "5xx", 499]. Default: all.'),
            minDuration: duration({ max: 3_600_000 }).prefault(0).describe('Also log (with status set) or only log (alone) requests at least this slow. Default 0.'),
          })
          .prefault({})
          .describe('When set, a request is logged if it matches any of the filters (Traefik semantics).'),
        requestHeaders: z.array(z.string().regex(headerName)).prefault([]).describe('Request headers to include (field request_headers). Default none.'),
        responseHeaders: z.array(z.string().regex(headerName)).prefault([]).describe('Response headers to include (field response_headers). Default none.'),
        redact: z
          .array(z.string().regex(headerName))
          .prefault(['authorization', 'proxy-authorization', 'cookie', 'set-cookie'])
          .describe('Header values replaced by "[REDACTED]" when included. Default authorization, proxy-authorization, cookie, set-cookie.'),
      })
      .prefault({})
      .describe('Access logs (pino).'),
  })
  .superRefine((cfg, ctx) => {
    for (const issue of crossFieldIssues(cfg)) ctx.addIssue({ code: 'custom', ...issue });
  })
  .describe('config.yaml');

/**
 * Checks that span several fields. Written against the raw input (every access is defensive)
 * so that the loader can report them alongside field errors, which stop zod's own refinements.
 */
export function crossFieldIssues(raw: unknown): { path: (string | number)[]; message: string }[] {
  const issues: { path: (string | number)[]; message: string }[] = [];
  const r = (raw ?? {}) as { backend?: unknown; pools?: unknown; routes?: unknown; loadBalancer?: { strategy?: unknown; hash?: { key?: unknown } } };
  const lists: { path: (string | number)[]; list: unknown[]; pool: string; strategy: unknown; hashKey: unknown }[] = [];
  const lbStrategy = r.loadBalancer?.strategy;
  const lbKey = r.loadBalancer?.hash?.key;
  if (Array.isArray(r.backend)) lists.push({ path: ['backend'], list: r.backend, pool: DEFAULT_POOL, strategy: lbStrategy, hashKey: lbKey });
  const pools = r.pools !== null && typeof r.pools === 'object' && !Array.isArray(r.pools) ? (r.pools as Record<string, { backends?: unknown; strategy?: unknown; hash?: { key?: unknown } } | null>) : undefined;
  if (r.backend === undefined && pools === undefined) issues.push({ path: [], message: 'no backends: give a "backend" list (the seed format) or "pools"' });
  if (pools !== undefined) {
    if (Array.isArray(r.backend) && pools[DEFAULT_POOL] !== undefined) issues.push({ path: ['pools', DEFAULT_POOL], message: `the "backend" list already is the pool "${DEFAULT_POOL}"; rename this pool` });
    for (const [name, pool] of Object.entries(pools)) {
      if (Array.isArray(pool?.backends)) lists.push({ path: ['pools', name, 'backends'], list: pool.backends, pool: name, strategy: pool.strategy ?? lbStrategy, hashKey: pool.hash?.key ?? lbKey });
    }
  }
  const seen = new Map<string, string>();
  for (const { path, list, pool, strategy, hashKey } of lists) {
    list.forEach((b, i) => {
      const e = b as { name?: unknown; url?: unknown } | null;
      const name = typeof e?.name === 'string' ? e.name : typeof e?.url === 'string' ? safeHostPort(e.url) : undefined;
      if (name === undefined) return;
      const first = seen.get(name);
      if (first !== undefined) issues.push({ path: [...path, i, typeof e?.name === 'string' ? 'name' : 'url'], message: `duplicate backend name "${name}" (also ${first})${pools !== undefined ? '; names are unique across pools' : ''}` });
      else seen.set(name, `${formatPathForMessage(path)}[${i}]`);
    });
    const where = pool === DEFAULT_POOL && path[0] === 'backend' ? '' : ` in pool "${pool}"`;
    if (list.length > 0 && list.every((b) => (b as { enabled?: unknown } | null)?.enabled === false)) issues.push({ path, message: `every backend${where} is disabled; enable at least one` });
    const enabled = list.filter((b) => (b as { enabled?: unknown } | null)?.enabled !== false);
    if (enabled.length > 0 && enabled.every((b) => (b as { backup?: unknown } | null)?.backup === true)) issues.push({ path, message: `every enabled backend${where} is a backup; at least one must be a primary` });
    if (strategy === 'hash' && hashKey === undefined) {
      issues.push({ path: path[0] === 'backend' ? ['loadBalancer', 'strategy'] : ['pools', pool, 'strategy'], message: 'strategy "hash" needs hash.key (client-ip, path, header:NAME, cookie:NAME or query:NAME)' });
    }
  }
  const admin = (raw as { admin?: { enabled?: unknown; host?: unknown; token?: unknown } })?.admin;
  if (admin !== undefined && admin !== null && admin.enabled !== false && typeof admin.host === 'string' && !isLoopbackHost(admin.host) && admin.token === undefined && !process.env.PROXYMITY_ADMIN_TOKEN) {
    issues.push({ path: ['admin', 'host'], message: `the admin listener on "${admin.host}" is reachable beyond this machine: set admin.token (or $PROXYMITY_ADMIN_TOKEN), or bind it to 127.0.0.1` });
  }
  const rls: { path: (string | number)[]; rl: unknown }[] = [{ path: ['rateLimit'], rl: (raw as { rateLimit?: unknown })?.rateLimit }];
  if (Array.isArray(r.routes)) r.routes.forEach((route, i) => rls.push({ path: ['routes', i, 'rateLimit'], rl: (route as { rateLimit?: unknown } | null)?.rateLimit }));
  for (const { path, rl } of rls) {
    const x = rl as { store?: unknown; redis?: unknown } | undefined | null | false;
    if (x && x.store === 'redis' && x.redis === undefined) issues.push({ path: [...path, 'store'], message: 'store "redis" needs redis: {url: "redis://host:port"}' });
  }
  const listeners = (raw as { listeners?: unknown })?.listeners;
  if (Array.isArray(listeners)) {
    listeners.forEach((l, i) => {
      const x = l as { protocol?: unknown; certificates?: unknown } | null;
      if (x?.protocol === 'https' && (!Array.isArray(x.certificates) || x.certificates.length === 0)) issues.push({ path: ['listeners', i, 'protocol'], message: 'an https listener needs certificates: [{cert: FILE, key: FILE}]' });
    });
  }
  const poolNames = lists.map((l) => l.pool);
  if (Array.isArray(r.routes)) {
    r.routes.forEach((route, i) => {
      const target = (route as { pool?: unknown } | null)?.pool;
      if (typeof target === 'string' && !poolNames.includes(target)) {
        const hint = poolNames.find((n) => n.toLowerCase() === target.toLowerCase()) ?? poolNames.find((n) => editDistance(n, target) <= 2);
        issues.push({ path: ['routes', i, 'pool'], message: `no pool named "${target}"${hint ? `; did you mean "${hint}"?` : poolNames.length > 0 ? ` (pools: ${poolNames.join(', ')})` : ''}` });
      }
    });
  } else if (poolNames.length > 1) {
    issues.push({ path: ['routes'], message: `${poolNames.length} pools (${poolNames.join(', ')}) but no routes: add routes that say which requests go where` });
  }
  return issues;
}

function formatPathForMessage(path: readonly (string | number)[]): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? p : `.${p}`)).join('');
}

/** Levenshtein distance, for "did you mean" hints (short strings only). */
export function editDistance(a: string, b: string): number {
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

/** 127.0.0.0/8, ::1 and "localhost": the admin listener needs no token there. */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || host === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

function safeHostPort(url: string): string | undefined {
  try {
    return hostPortOf(url);
  } catch {
    return undefined;
  }
}

export function hostPortOf(url: string): string {
  const u = new URL(url);
  return u.port ? `${u.hostname}:${u.port}` : `${u.hostname}:${u.protocol === 'https:' ? 443 : 80}`;
}

/** The pool the seed format's `backend` list becomes. */
export const DEFAULT_POOL = 'default';

export type BackendConfig = Omit<z.output<typeof backendSchema>, 'name'> & { name: string };
type HealthCheckConfig = z.output<typeof configSchema>['healthCheck'];
type LoadBalancerConfig = z.output<typeof configSchema>['loadBalancer'];

/** A pool with every default filled in (the `backend` list is the pool "default"). */
export interface PoolConfig {
  name: string;
  strategy: string;
  hash: LoadBalancerConfig['hash'];
  sticky: LoadBalancerConfig['sticky'];
  slowStart: number;
  healthCheck: HealthCheckConfig;
  backends: BackendConfig[];
}

/** A route with its name filled in (no routes = one catch-all route to the only pool). */
export type RouteConfig = Omit<z.output<typeof routeSchema>, 'name'> & { name: string };

/** The validated config as consumers see it (frozen, durations in ms, names and defaults filled in). */
export type ProxymityConfig = DeepReadonly<Omit<z.output<typeof configSchema>, 'backend' | 'pools' | 'routes'> & { backend: BackendConfig[]; pools: Record<string, PoolConfig>; routes: RouteConfig[] }>;

type DeepReadonly<T> = T extends (infer U)[] ? readonly DeepReadonly<U>[] : T extends object ? { readonly [K in keyof T]: DeepReadonly<T[K]> } : T;
