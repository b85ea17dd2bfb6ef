/**
 * Data plane: chooses a backend for a request from the registry's current snapshot.
 * Synchronous, never throws, no allocation on the normal path.
 */
import type { IncomingMessage } from 'node:http';
import { Inject, Injectable } from '@nestjs/common';
import { BackendRegistry } from '../backend/backend-registry.service.js';
import type { Backend } from '../backend/backend.js';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import type { LbStrategy } from './strategy.interface.js';
import { STRATEGIES } from './strategy.registry.js';

@Injectable()
export class LoadBalancerService {
  private readonly strategy: LbStrategy;

  constructor(
    private readonly registry: BackendRegistry,
    @Inject(PROXYMITY_CONFIG) cfg: ProxymityConfig,
  ) {
    const factory = STRATEGIES.get(cfg.loadBalancer.strategy);
    // The schema has already rejected unknown names; this guards programmatic misuse.
    if (factory === undefined) throw new Error(`unknown load-balancing strategy "${cfg.loadBalancer.strategy}"`);
    this.strategy = factory({ random: Math.random, now: Date.now });
  }

  /** A backend for this request, or undefined when none is eligible. */
  pick(req: IncomingMessage): Backend | undefined {
    return this.strategy.pick(this.registry.healthy, req);
  }

  /** A backend other than those in `tried` (retries never return to a backend already tried). */
  pickExcluding(req: IncomingMessage, tried: readonly Backend[]): Backend | undefined {
    const pool = this.registry.healthy.filter((b) => !tried.includes(b));
    return this.strategy.pick(pool, req);
  }
}
