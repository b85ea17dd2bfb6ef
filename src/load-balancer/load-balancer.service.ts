/**
 * Data plane: chooses a backend of a pool for a request from the pool's current snapshots.
 * Synchronous, never throws; with the default config (no caps, no sticky sessions) it
 * allocates nothing.
 *
 * Rules every strategy gets for free: only enabled, healthy backends are offered; backups only
 * while no primary can take the request; a backend at `maxConnections` is skipped (all at cap
 * means no backend, hence 503); sticky sessions go first when configured.
 *
 * Control plane: `build(cfg)` makes the pools of a config (at start and on reload); a pool
 * whose definition did not change is kept as it is, strategy position included.
 */
import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { Inject, Injectable } from '@nestjs/common';
import { BackendRegistry } from '../backend/backend-registry.service.js';
import type { Backend } from '../backend/backend.js';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import { Pool } from './pool.js';

const kStickySent = Symbol('proxymity.sticky');
type WithSticky = IncomingMessage & { [kStickySent]?: string };

@Injectable()
export class LoadBalancerService {
  pools: ReadonlyMap<string, Pool> = new Map();
  /** Sticky cookies without a configured secret are signed with this one (per process, kept across reloads). */
  private readonly stickySecret = randomBytes(32).toString('hex');

  constructor(
    private readonly registry: BackendRegistry,
    @Inject(PROXYMITY_CONFIG) cfg: ProxymityConfig,
  ) {
    this.build(cfg);
    registry.onHealthChange((b) => this.pools.get(b.pool)?.rebuild());
  }

  /** Builds the pools of `cfg` from the registry's backends (which must already have applied `cfg`). */
  build(cfg: ProxymityConfig): ReadonlyMap<string, Pool> {
    const next = new Map<string, Pool>();
    for (const pc of Object.values(cfg.pools)) {
      const members = this.registry.all.filter((b) => b.pool === pc.name);
      const old = this.pools.get(pc.name);
      if (old !== undefined && old.signature === Pool.signatureOf(pc, members)) {
        old.rebuild();
        next.set(pc.name, old);
      } else next.set(pc.name, new Pool(pc, members, this.stickySecret));
    }
    this.pools = next;
    return next;
  }

  /** The pool named `name` (routes hold their pool; this is for tests and the control plane). */
  pool(name: string): Pool | undefined {
    return this.pools.get(name);
  }

  /** A backend of `pool` for this request, or undefined when none is eligible. */
  pick(pool: Pool, req: IncomingMessage): Backend | undefined {
    const b = this.pickFrom(pool, pool.eligible, req, false);
    if (b !== undefined || !pool.hasBackups) return b;
    return this.pickFrom(pool, pool.eligibleBackups, req, true);
  }

  /** A backend other than those in `tried` (retries never return to a backend already tried). */
  pickExcluding(pool: Pool, req: IncomingMessage, tried: readonly Backend[]): Backend | undefined {
    const b = this.pickFrom(pool, pool.eligible.filter((x) => !tried.includes(x)), req, false);
    if (b !== undefined || !pool.hasBackups) return b;
    return this.pickFrom(pool, pool.eligibleBackups.filter((x) => !tried.includes(x)), req, true);
  }

  /** With sticky sessions: the Set-Cookie line the response must carry, if any. */
  stickyCookie(pool: Pool, req: IncomingMessage, backend: Backend): string | undefined {
    return pool.sticky?.setCookie((req as WithSticky)[kStickySent], backend);
  }

  private pickFrom(p: Pool, eligible: readonly Backend[], req: IncomingMessage, backups: boolean): Backend | undefined {
    if (eligible.length === 0) return undefined;
    const sticky = p.sticky;
    if (sticky !== undefined) {
      const sent = sticky.read(req);
      (req as WithSticky)[kStickySent] = sent;
      const target = sticky.resolve(sent);
      if (target !== undefined && target.healthy && target.backup === backups && target.inFlight < target.maxConnections && eligible.includes(target)) return target;
    }
    const b = p.strategy.pick(eligible, req);
    if (b === undefined || b.inFlight < b.maxConnections) return b;
    // Slow path, only when the chosen backend is at its cap: choose among those below theirs.
    const open = eligible.filter((x) => x.inFlight < x.maxConnections);
    return open.length === 0 ? undefined : p.strategy.pick(open, req);
  }
}
