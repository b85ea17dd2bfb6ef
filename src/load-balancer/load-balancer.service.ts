/**
 * Data plane: chooses a backend for a request from the registry's current snapshots.
 * Synchronous, never throws; with the default config (no caps, no sticky sessions) it
 * allocates nothing.
 *
 * Rules every strategy gets for free: only enabled, healthy backends are offered; backups only
 * while no primary can take the request; a backend at `maxConnections` is skipped (all at cap
 * means no backend, hence 503); sticky sessions go first when configured.
 */
import type { IncomingMessage } from 'node:http';
import { Inject, Injectable } from '@nestjs/common';
import { BackendRegistry } from '../backend/backend-registry.service.js';
import type { Backend } from '../backend/backend.js';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import { StickySessions } from './sticky-sessions.js';
import type { LbStrategy } from './strategy.interface.js';
import { STRATEGIES } from './strategy.registry.js';

const kStickySent = Symbol('proxymity.sticky');
type WithSticky = IncomingMessage & { [kStickySent]?: string };

@Injectable()
export class LoadBalancerService {
  private readonly strategy: LbStrategy;
  private readonly sticky: StickySessions | undefined;
  private readonly hasBackups: boolean;

  constructor(
    private readonly registry: BackendRegistry,
    @Inject(PROXYMITY_CONFIG) cfg: ProxymityConfig,
  ) {
    const factory = STRATEGIES.get(cfg.loadBalancer.strategy);
    // The schema has already rejected unknown names; this guards programmatic misuse.
    if (factory === undefined) throw new Error(`unknown load-balancing strategy "${cfg.loadBalancer.strategy}"`);
    const enabled = registry.all.filter((b) => b.enabled);
    this.strategy = factory(cfg.loadBalancer, { random: Math.random, now: Date.now, backends: enabled });
    this.sticky = cfg.loadBalancer.sticky ? new StickySessions(cfg.loadBalancer.sticky, enabled) : undefined;
    this.hasBackups = enabled.some((b) => b.backup);
  }

  /** A backend for this request, or undefined when none is eligible. */
  pick(req: IncomingMessage): Backend | undefined {
    const b = this.pickFrom(this.registry.healthy, req, false);
    if (b !== undefined || !this.hasBackups) return b;
    return this.pickFrom(this.registry.healthyBackups, req, true);
  }

  /** A backend other than those in `tried` (retries never return to a backend already tried). */
  pickExcluding(req: IncomingMessage, tried: readonly Backend[]): Backend | undefined {
    const b = this.pickFrom(this.registry.healthy.filter((x) => !tried.includes(x)), req, false);
    if (b !== undefined || !this.hasBackups) return b;
    return this.pickFrom(this.registry.healthyBackups.filter((x) => !tried.includes(x)), req, true);
  }

  /** With sticky sessions: the Set-Cookie line the response must carry, if any. */
  stickyCookie(req: IncomingMessage, backend: Backend): string | undefined {
    return this.sticky?.setCookie((req as WithSticky)[kStickySent], backend);
  }

  private pickFrom(pool: readonly Backend[], req: IncomingMessage, backups: boolean): Backend | undefined {
    if (pool.length === 0) return undefined;
    const sticky = this.sticky;
    if (sticky !== undefined) {
      const sent = sticky.read(req);
      (req as WithSticky)[kStickySent] = sent;
      const target = sticky.resolve(sent);
      if (target !== undefined && target.healthy && target.backup === backups && target.inFlight < target.maxConnections && pool.includes(target)) return target;
    }
    const b = this.strategy.pick(pool, req);
    if (b === undefined || b.inFlight < b.maxConnections) return b;
    // Slow path, only when the chosen backend is at its cap: choose among those below theirs.
    const open = pool.filter((x) => x.inFlight < x.maxConnections);
    return open.length === 0 ? undefined : this.strategy.pick(open, req);
  }
}
