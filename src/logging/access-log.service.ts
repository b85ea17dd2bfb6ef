/**
 * Access logs: one line per proxied request, JSON or the combined text format, to
 * stdout, stderr or a file. When `accessLog.enabled` is false the engine never calls in here
 * and builds no record, so logging off costs nothing.
 *
 * Lines go to pino's destination (sonic-boom: buffered, written asynchronously in blocks of at
 * least 32 KiB and at least once a second, so the data plane never blocks on the disk). The pino logger itself is not used for these lines: its
 * `level` and bindings cannot be left out of a line, and an access line is one flat object that
 * JSON.stringify serializes as fast as pino would. The buffer is flushed on shutdown. A file destination is reopened on SIGUSR2, so logrotate
 * can move the file away and signal.
 */
import { closeSync, openSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { Inject, Injectable, Logger, type OnApplicationShutdown } from '@nestjs/common';
import pino from 'pino';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import { clientAddress, normalizeAddress, peerAddress } from '../load-balancer/client-address.js';

/** What the engine knows about a request when it ends. */
export interface RequestSummary {
  readonly req: IncomingMessage;
  /** The request target as received (before any route rewrite). */
  readonly target: string;
  readonly requestId: string;
  /** What the client got; 499 when it closed the connection before the response was complete. */
  readonly status: number;
  readonly durationMs: number;
  readonly bytesIn: number;
  readonly bytesOut: number;
  readonly backend: string | undefined;
  readonly attempts: number;
  /** ms; -1 when no new connection was opened (a pooled one was reused, or none was needed). */
  readonly connectMs: number;
  /** ms from sending the (last) request upstream to its response headers; -1 when none came. */
  readonly headerMs: number;
  readonly termination: string | undefined;
  /** RFC 9209 error type, when the proxy made or cut the response. */
  readonly error: string | undefined;
  /** The response header list as written (name, value, ...), when response headers are logged. */
  readonly responseHeaders: readonly string[] | undefined;
  /** WebSocket tunnels only: why the tunnel closed. */
  readonly closeReason?: string;
  /** Routes with the cache on: how the cache took part (hit, stale, revalidated, miss, collapsed, bypass). */
  readonly cache?: string;
}

type Destination = ReturnType<typeof pino.destination>;

const REDACTED = '[REDACTED]';
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

@Injectable()
export class AccessLogService implements OnApplicationShutdown {
  private readonly logger = new Logger('AccessLog');
  readonly enabled: boolean;
  /** Response headers are kept for the log only when some are asked for. */
  readonly wantsResponseHeaders: boolean;
  private readonly cfg: ProxymityConfig['accessLog'];
  private readonly dest: Destination | undefined;
  private readonly json: boolean = false;
  private readonly statusFilter: ((status: number) => boolean) | undefined;
  private readonly minDurationMs: number;
  private readonly requestHeaders: readonly string[];
  private readonly responseHeaders: ReadonlySet<string>;
  private readonly redact: ReadonlySet<string>;
  private readonly reopen = (): void => this.dest?.reopen();
  private readonly flush = (): void => {
    const dest = this.dest as (Destination & { _len?: number; destroyed?: boolean }) | undefined;
    if (dest !== undefined && dest.destroyed !== true && dest._len !== 0) dest.flush();
  };
  private flushTimer: NodeJS.Timeout | undefined = undefined;
  /** Settles once the destination is open: a file is opened asynchronously, and until then nothing can be flushed. */
  private opened: Promise<void> = Promise.resolve();

  constructor(@Inject(PROXYMITY_CONFIG) config: ProxymityConfig) {
    const cfg = (this.cfg = config.accessLog);
    this.enabled = cfg.enabled;
    this.requestHeaders = cfg.requestHeaders.map((h) => h.toLowerCase());
    this.responseHeaders = new Set(cfg.responseHeaders.map((h) => h.toLowerCase()));
    this.wantsResponseHeaders = this.enabled && this.responseHeaders.size > 0;
    this.redact = new Set(cfg.redact.map((h) => h.toLowerCase()));
    this.minDurationMs = cfg.filter.minDuration;
    this.statusFilter = compileStatusFilter(cfg.filter.status);
    if (!this.enabled) return;
    const target = cfg.output === 'stdout' ? 1 : cfg.output === 'stderr' ? 2 : cfg.output;
    // A file that cannot be opened fails boot here, with its path in the message.
    if (typeof target === 'string') closeSync(openSync(target, 'a'));
    // Written in blocks of at least 32 KiB (one write per ~80 lines), and at least once a second.
    const dest = (this.dest = pino.destination({ dest: target, sync: false, minLength: 32 * 1024, maxWrite: 256 * 1024 }));
    this.opened = new Promise<void>((resolve) => {
      dest.once('ready', resolve);
      dest.once('error', () => resolve());
    });
    this.flushTimer = setInterval(this.flush, 1000).unref();
    this.dest.on('error', (err: Error) => this.logger.error(`access log ${cfg.output}: ${err.message}`));
    if (typeof target === 'string') process.on('SIGUSR2', this.reopen);
    this.json = cfg.format === 'json';
  }

  /** Whether this request is logged: filters first (any match keeps it), then sampling; failures always pass sampling. */
  shouldLog(status: number, durationMs: number, failed: boolean): boolean {
    const byStatus = this.statusFilter;
    const byDuration = this.minDurationMs > 0;
    if (byStatus !== undefined || byDuration) {
      const kept = (byStatus !== undefined && byStatus(status)) || (byDuration && durationMs >= this.minDurationMs);
      if (!kept) return false;
    }
    const sample = this.cfg.sample;
    return failed || sample >= 1 || Math.random() < sample;
  }

  write(r: RequestSummary): void {
    const failed = r.termination !== undefined || r.status >= 500;
    if (!this.shouldLog(r.status, r.durationMs, failed)) return;
    const req = r.req;
    const dest = this.dest;
    if (dest === undefined) return;
    if (!this.json) {
      dest.write(this.combinedLine(r));
      return;
    }
    // Built as one template string: user-controlled values go through JSON.stringify one by
    // one, numbers are written as they are; no intermediate object per line.
    const h = req.headers;
    const peer = peerAddress(req) ?? '';
    let line =
      `{"time":"${isoNow()}","request_id":${JSON.stringify(r.requestId)},"client_ip":${JSON.stringify(clientAddress(req) ?? peer)},"peer_ip":${JSON.stringify(peer)}` +
      `,"method":${JSON.stringify(req.method ?? '')},"host":${jsonOrNull(str(h['x-forwarded-host']) ?? str(h.host))},"path":${JSON.stringify(r.target)},"protocol":"HTTP/${req.httpVersion}"` +
      `,"status":${r.status},"bytes_in":${num(r.bytesIn)},"bytes_out":${num(r.bytesOut)},"duration_ms":${round(r.durationMs)}` +
      `,"upstream_connect_ms":${r.connectMs < 0 ? 'null' : round(r.connectMs)},"upstream_header_ms":${r.headerMs < 0 ? 'null' : round(r.headerMs)}` +
      `,"backend":${jsonOrNull(r.backend)},"attempts":${r.attempts},"termination":${jsonOrNull(r.termination)},"error":${jsonOrNull(r.error)},"user_agent":${jsonOrNull(str(h['user-agent']))}`;
    const tlsSocket = (req.socket ?? {}) as { encrypted?: boolean; getProtocol?: () => string | null; getCipher?: () => { name: string } };
    if (tlsSocket.encrypted === true) line += `,"tls_version":${jsonOrNull(tlsSocket.getProtocol?.() ?? undefined)},"tls_cipher":${jsonOrNull(tlsSocket.getCipher?.()?.name)}`;
    if (r.closeReason !== undefined) line += `,"close_reason":${JSON.stringify(r.closeReason)}`;
    if (r.cache !== undefined) line += `,"cache":"${r.cache}"`;
    if (this.requestHeaders.length > 0) line += `,"request_headers":${JSON.stringify(this.pickRequestHeaders(req))}`;
    if (this.responseHeaders.size > 0 && r.responseHeaders !== undefined) line += `,"response_headers":${JSON.stringify(this.pickResponseHeaders(r.responseHeaders))}`;
    dest.write(`${line}}\n`);
  }

  /** Apache/nginx "combined": `peer - - [time] "METHOD path HTTP/x" status bytes "referer" "agent"`, plus request id and duration. */
  private combinedLine(r: RequestSummary): string {
    const req = r.req;
    const h = req.headers;
    return `${clientAddress(req) ?? normalizeAddress(req.socket.remoteAddress) ?? '-'} - - [${clfTime(new Date())}] "${req.method} ${escapeQuoted(r.target)} HTTP/${req.httpVersion}" ${r.status} ${Number.isFinite(r.bytesOut) ? r.bytesOut : '-'} "${escapeQuoted(str(h.referer) ?? '-')}" "${escapeQuoted(str(h['user-agent']) ?? '-')}" ${r.requestId} ${round(r.durationMs)}ms ${r.backend ?? '-'} ${r.termination ?? '-'}\n`;
  }

  private pickRequestHeaders(req: IncomingMessage): Record<string, string | null> {
    const out: Record<string, string | null> = {};
    for (const name of this.requestHeaders) {
      const v = req.headers[name];
      out[name] = v === undefined ? null : this.redact.has(name) ? REDACTED : Array.isArray(v) ? v.join(', ') : v;
    }
    return out;
  }

  private pickResponseHeaders(raw: readonly string[]): Record<string, string> {
    const out: Record<string, string> = {};
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i].toLowerCase();
      if (!this.responseHeaders.has(name)) continue;
      const v = this.redact.has(name) ? REDACTED : raw[i + 1];
      out[name] = out[name] === undefined ? v : `${out[name]}, ${v}`;
    }
    return out;
  }

  async onApplicationShutdown(): Promise<void> {
    process.removeListener('SIGUSR2', this.reopen);
    if (this.flushTimer !== undefined) clearInterval(this.flushTimer);
    const dest = this.dest;
    if (dest === undefined) return;
    // Shut down right after boot, the file may still be opening: flushSync would throw, and the
    // lines written so far would be lost with the process.
    await this.opened;
    try {
      dest.flushSync();
    } catch {
      // nothing buffered, or the destination is gone: nothing more can be done
    }
    if (this.cfg.output !== 'stdout' && this.cfg.output !== 'stderr') dest.end();
  }
}

function compileStatusFilter(items: readonly string[]): ((status: number) => boolean) | undefined {
  if (items.length === 0) return undefined;
  const classes = new Set<number>();
  const exact = new Set<number>();
  for (const item of items) {
    if (item.endsWith('xx')) classes.add(Number(item[0]));
    else exact.add(Number(item));
  }
  return (status) => exact.has(status) || classes.has((status / 100) | 0);
}

const round = (ms: number): number => Math.round(ms * 1000) / 1000;
const jsonOrNull = (v: string | undefined): string => (v === undefined ? 'null' : JSON.stringify(v));
/** A count, or null where the connection cannot tell (bytes_out of an HTTP/2 stream). */
const num = (n: number): string => (Number.isFinite(n) ? String(n) : 'null');

let isoMs = 0;
let isoText = '';
/** `new Date().toISOString()`, computed at most once per millisecond. */
function isoNow(): string {
  const now = Date.now();
  if (now !== isoMs) {
    isoMs = now;
    isoText = new Date(now).toISOString();
  }
  return isoText;
}
const str = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v.join(', ') : v);
const escapeQuoted = (s: string): string => s.replace(/["\\\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
const pad = (n: number): string => (n < 10 ? `0${n}` : String(n));

/** `10/Oct/2000:13:55:36 +0000` (UTC, as nginx writes $time_local on a UTC host). */
function clfTime(d: Date): string {
  return `${pad(d.getUTCDate())}/${MONTHS[d.getUTCMonth()]}/${d.getUTCFullYear()}:${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} +0000`;
}
