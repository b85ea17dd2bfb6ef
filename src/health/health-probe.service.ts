/**
 * Active health checks (control plane). A once-a-second @Cron tick starts the probes that are
 * due; each backend has at most one probe in flight, each probe has a hard timeout, and probes
 * use their own keep-alive agent so they never queue behind (or starve) proxied traffic.
 * Each backend's check is `healthCheck` merged with its own `backend[].healthCheck` overrides.
 * Results go to BackendRegistry, which applies the thresholds and logs transitions.
 */
import http from 'node:http';
import https from 'node:https';
import { Injectable, Logger, type OnApplicationShutdown } from '@nestjs/common';
import { Cron, CronExpression } from '@nestjs/schedule';
import { BackendRegistry } from '../backend/backend-registry.service.js';
import type { Backend } from '../backend/backend.js';
import { upstreamLookup } from '../backend/loopback-lookup.js';

const USER_AGENT = 'proxymity-health-check';
/** Only this much of a probe's body is read when `expectBody` is set. */
const MAX_PROBE_BODY_BYTES = 64 * 1024;

type BodyMatcher = (body: string) => boolean;

@Injectable()
export class HealthProbeService implements OnApplicationShutdown {
  private readonly logger = new Logger(HealthProbeService.name);
  private readonly httpAgent = new http.Agent({ keepAlive: true, maxSockets: 1, timeout: 30_000 });
  private readonly httpsAgent = new https.Agent({ keepAlive: true, maxSockets: 1, timeout: 30_000 });
  private stopped = false;
  private readonly pending = new Set<http.ClientRequest>();
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
    if (this.stopped) return;
    this.registry.reportProbe(b, ok, detail, Math.round(performance.now() - started));
  }

  private request(b: Backend, readBody: boolean): Promise<{ status: number; body: string }> {
    const c = b.check;
    return new Promise((resolve, reject) => {
      const mod = b.protocol === 'https:' ? https : http;
      const req = mod.request(
        {
          protocol: b.protocol,
          hostname: b.hostname,
          port: c.port ?? b.port,
          path: b.basePath + c.path,
          method: c.method,
          agent: b.protocol === 'https:' ? this.httpsAgent : this.httpAgent,
          headers: { host: b.url.host, 'user-agent': USER_AGENT, accept: '*/*', ...c.headers },
          autoSelectFamily: true,
          lookup: upstreamLookup,
          ...b.tls,
        } as http.RequestOptions,
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (chunk: Buffer) => {
            // The body is drained so the socket can be reused, but only inspected up to a bound.
            if (readBody && size < MAX_PROBE_BODY_BYTES) {
              chunks.push(chunk);
              size += chunk.length;
            }
          });
          res.on('error', reject);
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: readBody ? Buffer.concat(chunks).subarray(0, MAX_PROBE_BODY_BYTES).toString('utf8') : '' }));
        },
      );
      // A plain timer rather than AbortSignal.timeout/any: on Node 20 a composed signal that
      // nothing else references can be collected before it fires, and the probe would wait
      // for the backend's answer however slow.
      const timer = setTimeout(() => req.destroy(Object.assign(new Error(`timeout after ${c.timeout}ms`), { code: 'PROBE_TIMEOUT' })), c.timeout);
      this.pending.add(req);
      req.on('close', () => {
        clearTimeout(timer);
        this.pending.delete(req);
      });
      req.on('error', reject);
      req.end();
    });
  }

  onApplicationShutdown(): void {
    this.stopped = true;
    for (const req of this.pending) req.destroy();
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
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
