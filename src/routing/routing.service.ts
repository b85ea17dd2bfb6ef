/**
 * Holds the active route table. The data plane reads `table` once per request; a reload
 * replaces it in one assignment, so requests in flight finish with the routes (and pools and
 * policies) they started with.
 */
import { Inject, Injectable } from '@nestjs/common';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import { LoadBalancerService } from '../load-balancer/load-balancer.service.js';
import { RateLimitService } from '../rate-limit/rate-limit.service.js';
import { RouteTable } from './route-table.js';

@Injectable()
export class RoutingService {
  table: RouteTable;

  private readonly policy: ConstructorParameters<typeof RouteTable>[2];

  constructor(
    private readonly lb: LoadBalancerService,
    private readonly rateLimits: RateLimitService,
    @Inject(PROXYMITY_CONFIG) cfg: ProxymityConfig,
  ) {
    this.policy = (rl, scope) => rateLimits.policy(rl, scope);
    this.table = new RouteTable(cfg, lb.pools, this.policy);
  }

  /**
   * Builds the table of `cfg` over the load balancer's current pools and makes it active; Redis
   * clients only the old table used are closed.
   */
  build(cfg: ProxymityConfig): RouteTable {
    this.table = this.rateLimits.rebuild(() => new RouteTable(cfg, this.lb.pools, this.policy));
    return this.table;
  }
}
