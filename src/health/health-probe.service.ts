/**
 * Active health checks (control plane). A once-a-second @Cron tick starts the probes that are
 * due; each backend has at most one probe in flight, each probe has a hard timeout, and probes
 * use each backend's probe agent (one keep-alive connection) so they never queue behind (or
 * starve) proxied traffic.
 * Each backend's check is `healthCheck` merged with its own `backend[].healthCheck` overrides.
 * Results go to BackendRegistry, which applies the thresholds and logs transitions.
 */
import type { ClientRequest, IncomingMessage } from 'node:http';
import { Injectable, Logger, type OnApplicationShutdown } from '@nestjs/common';
import { Cron, CronExpression } from '@nestjs/schedule';
import { BackendRegistry } from '../backend/backend-registry.service.js';
import type { Backend } from '../backend/backend.js';
import { kOwner, sendUpstream, type Owned, type UpstreamListeners } from '../backend/upstream-request.js';

const USER_AGENT = 'proxymity-health-check';
/** Only this much of a probe's body is read when `expectBody` is set. */
const MAX_PROBE_BODY_BYTES = 64 * 1024;

type BodyMatcher = (body: string) => boolean;

@Injectable()
export class HealthProbeService implements OnApplicationShutdown {
  private readonly logger = new Logger(HealthProbeService.name);
  private stopped = false;
  private readonly pending = new Set<ClientRequest>();
  private readonly running = new Set<Backend>();
  /** When each backend's last probe finished, and the jitter drawn for its next one. */
  private readonly last = new Map<Backend, { at: number; jitter: number }>();
  /** expectBody compiled once per text (checks can change on reload). */
  private readonly matchers = new Map<string, BodyMatcher>();

  constructor(private readonly registry: BackendRegistry) {}

  private matcherFor(expectBody: string | undefined): BodyMatcher | undefined {
    if (expectBody === undefined) return undefined;
    let m = this.matchers.get(expectBody);
    if (m === undefined) {
      m = bodyMatcher(expectBody);
      this.matchers.set(expectBody, m);
    }
    return m;
  }

  @Cron(CronExpression.EVERY_SECOND, { name: 'backend-probe', waitForCompletion: true })
  tick(): void {
    try {
      const now = Date.now();
      this.registry.closeIdleRetired();
      for (const b of this.registry.all) {
        if (!b.enabled) continue;
        this.registry.releaseExpiredEjection(b, now);
        if (!b.check.enabled) continue;
        if (this.running.has(b)) continue;
        const last = this.last.get(b);
        // The interval is chosen now, not when the last probe ended: a backend that went down
        // passively in between is probed at unhealthyInterval at once.
        const c = b.check;
        if (last !== undefined && now < last.at + (b.healthy ? c.interval : (c.unhealthyInterval ?? c.interval)) + last.jitter) continue;
        this.running.add(b);
        void this.probe(b).finally(() => {
          this.running.delete(b);
          this.last.set(b, { at: Date.now(), jitter: c.jitter > 0 ? Math.floor(Math.random() * c.jitter) : 0 });
        });
      }
    } catch (err) {
      // A cron handler never rethrows: a bug here must not stop future ticks.
      this.logger.error(`health tick failed: ${(err as Error).stack ?? String(err)}`);
    }
  }

  /** Probes one backend now and reports the outcome; never rejects. */
  async probe(b: Backend): Promise<void> {
    const started = performance.now();
    const c = b.check;
    let ok = false;
    let detail: string;
    try {
      const matcher = this.matcherFor(c.expectBody);
      const { status, body } = await this.request(b, matcher !== undefined);
      const statusOk = c.expectStatus.some(([lo, hi]) => status >= lo && status <= hi);
      ok = statusOk && (matcher === undefined || matcher(body));
      detail = !statusOk ? `HTTP ${status} (expected ${c.expectStatus.map(([lo, hi]) => (lo === hi ? lo : `${lo}-${hi}`)).join(', ')})` : ok ? `HTTP ${status}` : `HTTP ${status}, body does not match ${c.expectBody}`;
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      detail = e.code === 'PROBE_TIMEOUT' ? e.message : `${e.code ?? e.name}: ${e.message}`;
    }
    // Shutting down, or removed by a reload meanwhile (its probe agent was closed under the probe).
    if (this.stopped || b.retired) return;
    this.registry.reportProbe(b, ok, detail, Math.round(performance.now() - started));
  }

  private request(b: Backend, readBody: boolean): Promise<{ status: number; body: string }> {
    const c = b.check;
    return new Promise((resolve, reject) => {
      let req: ClientRequest | undefined;
      const settled = (): void => {
        clearTimeout(probe.timer);
        if (req !== undefined) this.pending.delete(req);
      };
      const probe = new Probe(readBody, (r) => (settled(), resolve(r)), (err) => (settled(), reject(err)));
      // Sent the way proxied requests are (upstream-request.ts), so probes leave the shapes V8
      // optimised Node's HTTP client for as they were: no listener of their own on the request.
      req = sendUpstream(b, b.probeAgent, c.port ?? b.port, c.method, b.basePath + c.path, probeHeaders(b, c.headers), probe, PROBE_LISTENERS);
      probe.timer = setTimeout(onCheckTimeout, c.timeout, req, c.timeout);
      this.pending.add(req);
      req.end();
    });
  }

  onApplicationShutdown(): void {
    this.stopped = true;
    // With an error, so each probe's promise settles (as a failure nobody reports: stopped is set).
    for (const req of this.pending) req.destroy(Object.assign(new Error('shutting down'), { code: 'PROBE_CLOSED' }));
  }
}

/** `expectBody`: "/regex/flags" is a regular expression, anything else a substring. */
export function bodyMatcher(spec: string): BodyMatcher {
  const m = /^\/(.+)\/([imsu]*)$/.exec(spec);
  if (m) {
    const re = new RegExp(m[1], m[2]);
    return (body) => re.test(body);
  }
  return (body) => body.includes(spec);
}

/** One probe in flight: settles its promise once, with the status and (when asked for) the body. */
class Probe {
  timer: NodeJS.Timeout | undefined = undefined;
  private settled = false;
  private readonly chunks: Buffer[] = [];
  private size = 0;
  private status = 0;

  constructor(
    private readonly readBody: boolean,
    private readonly resolve: (r: { status: number; body: string }) => void,
    private readonly reject: (err: Error) => void,
  ) {}

  answered(status: number): void {
    this.status = status;
  }

  data(chunk: Buffer): void {
    // The body is drained so the connection can be reused, but only inspected up to a bound.
    if (this.readBody && this.size < MAX_PROBE_BODY_BYTES) {
      this.chunks.push(chunk);
      this.size += chunk.length;
    }
  }

  done(): void {
    if (this.settled) return;
    this.settled = true;
    this.resolve({ status: this.status, body: this.readBody ? Buffer.concat(this.chunks).subarray(0, MAX_PROBE_BODY_BYTES).toString('utf8') : '' });
  }

  fail(err: Error): void {
    if (this.settled) return;
    this.settled = true;
    this.reject(err);
  }
}

type ProbeOwned<T> = Owned<T, Probe>;

/** The probe's request headers as a flat list; the check's own `headers` replace the defaults of the same name. */
function probeHeaders(b: Backend, extra: Record<string, string>): string[] {
  const h: Record<string, string> = { host: b.url.host, 'user-agent': USER_AGENT, accept: '*/*' };
  for (const name in extra) h[name.toLowerCase()] = extra[name];
  const out: string[] = [];
  for (const name in h) out.push(name, h[name]);
  return out;
}

function onProbeResponse(this: ProbeOwned<ClientRequest>, res: IncomingMessage): void {
  const probe = this[kOwner] as Probe;
  probe.answered(res.statusCode ?? 0);
  (res as ProbeOwned<IncomingMessage>)[kOwner] = probe;
  res.on('error', onProbeBodyError);
  res.on('data', onProbeData);
  res.on('end', onProbeEnd);
}

function onProbeError(this: ProbeOwned<ClientRequest>, err: Error): void {
  this[kOwner]?.fail(err);
}

/** The agent's connect or read timeout (upstream.connectTimeout / upstream.timeout). */
function onAgentTimeout(this: ClientRequest): void {
  this.destroy(Object.assign(new Error('connect or read timeout (upstream settings)'), { code: 'ETIMEDOUT' }));
}

function onProbeData(this: ProbeOwned<IncomingMessage>, chunk: Buffer): void {
  this[kOwner]?.data(chunk);
}

function onProbeEnd(this: ProbeOwned<IncomingMessage>): void {
  this[kOwner]?.done();
}

function onProbeBodyError(this: ProbeOwned<IncomingMessage>, err: Error): void {
  this[kOwner]?.fail(err);
}

/** healthCheck.timeout: the whole probe took too long. */
function onCheckTimeout(req: ClientRequest, ms: number): void {
  req.destroy(Object.assign(new Error(`timeout after ${ms}ms`), { code: 'PROBE_TIMEOUT' }));
}

const PROBE_LISTENERS: UpstreamListeners = { response: onProbeResponse, error: onProbeError, timeout: onAgentTimeout };
