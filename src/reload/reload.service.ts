/**
 * Hot reload (control plane). Triggers: the config file changing on disk (debounced), SIGHUP,
 * and POST /config/reload on the admin listener. The file is read and validated by the same
 * loader as at start-up; a config with any problem is refused, logged with its positions and
 * counted, and the running one stays.
 *
 * Applying is synchronous, so no request is handled half-way through it: backends are
 * updated (unchanged ones keep their object: health, counters, connections), pools rebuilt
 * (unchanged ones keep their strategy state), and the new route table swapped in last.
 * Requests in flight keep the route, pool and policies they started with; removed backends
 * take no new requests and are closed once idle.
 */
import { dirname, resolve } from 'node:path';
import { Inject, Injectable, Logger, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import { BackendRegistry } from '../backend/backend-registry.service.js';
import { ResponseCacheService } from '../cache/response-cache.service.js';
import { ConfigStore, configVersion } from '../config/config-store.js';
import { ConfigError } from '../config/config.errors.js';
import { loadConfigFile } from '../config/config.loader.js';
import { Debounce, DirectoryWatch } from '../config/file-watch.js';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import { LoadBalancerService } from '../load-balancer/load-balancer.service.js';
import { MetricsService } from '../metrics/metrics.service.js';
import { RoutingService } from '../routing/routing.service.js';

/** Top-level keys a reload cannot change (listeners and process-wide settings). */
const RESTART_ONLY = ['proxy', 'admin', 'metrics', 'accessLog', 'websocket'] as const;
/** A change is read once the file has been quiet this long, and at most MAX_WAIT_MS after the first change. */
const DEBOUNCE_MS = 200;
const MAX_WAIT_MS = 2000;

export interface ReloadResult {
  readonly result: 'success' | 'failure' | 'unchanged';
  readonly version: string;
  readonly trigger: string;
  /** What changed, one line each (success), or the problems (failure). */
  readonly details: readonly string[];
}

@Injectable()
export class ReloadService implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger(ReloadService.name);
  /**
   * The config file's directory. Which names in it count is worked out when a watch event names
   * one of them and on every reload, not per event: a log written in the config's directory
   * sends an event per write, and each would otherwise cost a readlink on the main thread.
   */
  private watch: DirectoryWatch | undefined;
  private readonly debounce = new Debounce(() => this.reloadInBackground('file change'), DEBOUNCE_MS, MAX_WAIT_MS);
  private readonly onSighup = (): void => this.reloadInBackground('SIGHUP');

  constructor(
    private readonly store: ConfigStore,
    private readonly registry: BackendRegistry,
    private readonly lb: LoadBalancerService,
    private readonly routing: RoutingService,
    private readonly cache: ResponseCacheService,
    private readonly metrics: MetricsService,
    @Inject(PROXYMITY_CONFIG) private readonly boot: ProxymityConfig,
  ) {}

  onApplicationBootstrap(): void {
    const file = this.store.file;
    if (file === undefined) return;
    process.on('SIGHUP', this.onSighup);
    // Watch the directory: editors and config management replace the file (rename), which a
    // watch on the file itself would lose.
    const watch = new DirectoryWatch(dirname(resolve(file)), [file], () => this.debounce.poke(), this.logger, 'SIGHUP and POST /config/reload still reload');
    if (watch.start()) this.watch = watch;
  }

  onApplicationShutdown(): void {
    process.removeListener('SIGHUP', this.onSighup);
    this.debounce.cancel();
    this.watch?.close();
  }

  /**
   * Reads the config file again and applies it. Never rejects: whatever goes wrong is a refused
   * reload (logged, counted, the running config kept), because SIGHUP and the file watcher
   * call this with nobody to hand an error to.
   */
  async reloadFromFile(trigger: string): Promise<ReloadResult> {
    const file = this.store.file;
    if (file === undefined) return this.fail(trigger, ['this instance was started without a config file']);
    let next: ProxymityConfig;
    try {
      // After a burst of changes (or a SIGHUP after links were swapped), the chain as it now is.
      this.watch?.refresh();
      next = loadConfigFile(file);
    } catch (err) {
      if (err instanceof ConfigError) return this.fail(trigger, err.message.split('\n'));
      // The loader turns every problem with the file into a ConfigError, so this is a bug in
      // it; name the file and keep the stack, but still keep the running config.
      this.logger.error(`config reload (${trigger}): unexpected error reading ${file}: ${(err as Error).stack ?? String(err)}`);
      return this.fail(trigger, [`${file}: ${(err as Error).message ?? String(err)}`]);
    }
    return this.apply(next, trigger);
  }

  /**
   * For the triggers with nobody to answer (the file watcher, SIGHUP). reloadFromFile does not
   * reject; this catch is the last guard, because a rejection here would be unhandled, and
   * cli.ts ends the process on one (exit 70): a bad file on disk must never stop the proxy.
   */
  private reloadInBackground(trigger: string): void {
    this.reloadFromFile(trigger).catch((err: unknown) => {
      this.logger.error(`config reload (${trigger}) failed, keeping version ${this.store.version}: ${(err as Error).stack ?? String(err)}`);
    });
  }

  /** Applies a validated config. Never throws for a bad config: it is refused and counted. */
  apply(next: ProxymityConfig, trigger: string): ReloadResult {
    const version = configVersion(next);
    if (version === this.store.version) return { result: 'unchanged', version, trigger, details: [] };
    const ignored = RESTART_ONLY.filter((k) => JSON.stringify(next[k]) !== JSON.stringify(this.boot[k]));
    try {
      const changes = this.registry.apply(next);
      const pools = this.lb.build(next);
      // Routes take proxy.maxBodySize from `proxy`, which is restart-only (as the warning says):
      // they keep the value the process started with.
      this.routing.build({ ...next, proxy: this.boot.proxy });
      this.cache.configure(next.cache);
      this.store.replace(next);
      const details = [
        ...changes.added.map((b) => `backend "${b.id}" added to pool "${b.pool}"`),
        ...changes.removed.map((b) => `backend "${b.id}" removed (closed once idle)`),
        `${pools.size} pool(s), ${next.routes.length} route(s), ${changes.kept.length} backend(s) kept with their state`,
      ];
      if (ignored.length > 0) details.push(`not applied, need a restart: ${ignored.join(', ')}`);
      this.metrics.recordReload('success');
      this.logger.log(`config reloaded (${trigger}), version ${version}: ${details.join('; ')}`);
      if (ignored.length > 0) this.logger.warn(`config reload: changes to ${ignored.join(', ')} take effect only after a restart`);
      return { result: 'success', version, trigger, details };
    } catch (err) {
      // Validation passed, so this is a bug; the previous config may be partly replaced, so say so loudly.
      this.logger.error(`config reload (${trigger}) failed while applying: ${(err as Error).stack ?? String(err)}`);
      return this.fail(trigger, [(err as Error).message]);
    }
  }

  private fail(trigger: string, problems: string[]): ReloadResult {
    this.metrics.recordReload('failure');
    this.logger.error(`config reload (${trigger}) refused, keeping version ${this.store.version}:\n${problems.join('\n')}`);
    return { result: 'failure', version: this.store.version, trigger, details: problems };
  }
}
