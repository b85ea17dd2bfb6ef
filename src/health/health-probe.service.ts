/**
 * Active health checks (control plane). A once-a-second @Cron tick starts the probes that are
 * due; each backend has at most one probe in flight, each probe has a hard timeout, and probes
 * use their own keep-alive agent so they never queue behind (or starve) proxied traffic.
 * Results go to BackendRegistry, which applies the thresholds and logs transitions.
 */
import http from 'node:http';
import https from 'node:https';
import { Inject, Injectable, Logger, type OnApplicationShutdown } from '@nestjs/common';
import { Cron, CronExpression } from '@nestjs/schedule';
import { upstreamLookup } from '../backend/loopback-lookup.js';
import { BackendRegistry } from '../backend/backend-registry.service.js';
import type { Backend } from '../backend/backend.js';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';

const USER_AGENT = 'proxymity-health-check';

@Injectable()
export class HealthProbeService implements OnApplicationShutdown {
  private readonly logger = new Logger(HealthProbeService.name);
  private readonly httpAgent = new http.Agent({ keepAlive: true, maxSockets: 1, timeout: 30_000 });
  private readonly httpsAgent = new https.Agent({ keepAlive: true, maxSockets: 1, timeout: 30_000 });
  private stopped = false;
  private readonly pending = new Set<http.ClientRequest>();
  private readonly running = new Set<Backend>();
  private readonly dueAt = new Map<Backend, number>();

  constructor(
    private readonly registry: BackendRegistry,
    @Inject(PROXYMITY_CONFIG) private readonly cfg: ProxymityConfig,
  ) {}

  @Cron(CronExpression.EVERY_SECOND, { name: 'backend-probe', waitForCompletion: true })
  tick(): void {
    try {
      const now = Date.now();
      if (!this.cfg.healthCheck.enabled) {
        this.registry.releaseCooledDown(now);
        return;
      }
      for (const b of this.registry.all) {
        if (!b.enabled || this.running.has(b) || (this.dueAt.get(b) ?? 0) > now) continue;
        this.running.add(b);
        void this.probe(b).finally(() => {
          this.running.delete(b);
          this.dueAt.set(b, Date.now() + this.cfg.healthCheck.interval);
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
    const hc = this.cfg.healthCheck;
    let ok = false;
    let detail: string;
    try {
      const status = await this.request(b, hc.path, hc.timeout);
      ok = status >= 200 && status < 400;
      detail = `HTTP ${status}`;
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      detail = e.code === 'PROBE_TIMEOUT' ? e.message : `${e.code ?? e.name}: ${e.message}`;
    }
    if (this.stopped) return;
    this.registry.reportProbe(b, ok, detail, Math.round(performance.now() - started));
  }

  private request(b: Backend, path: string, timeoutMs: number): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      const mod = b.protocol === 'https:' ? https : http;
      const req = mod.request(
        {
          protocol: b.protocol,
          hostname: b.hostname,
          port: b.port,
          path: b.basePath + path,
          method: 'GET',
          agent: b.protocol === 'https:' ? this.httpsAgent : this.httpAgent,
          headers: { host: b.url.host, 'user-agent': USER_AGENT, accept: '*/*' },
          autoSelectFamily: true,
          lookup: upstreamLookup,
        } as http.RequestOptions,
        (res) => {
          res.on('error', reject);
          res.on('end', () => resolve(res.statusCode ?? 0));
          res.resume(); // the body is not inspected, only drained so the socket can be reused
        },
      );
      // A plain timer rather than AbortSignal.timeout/any: on Node 20 a composed signal that
      // nothing else references can be collected before it fires, and the probe would wait
      // for the backend's answer however slow.
      const timer = setTimeout(() => req.destroy(Object.assign(new Error(`timeout after ${timeoutMs}ms`), { code: 'PROBE_TIMEOUT' })), timeoutMs);
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
