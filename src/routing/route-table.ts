import type { IncomingMessage } from 'node:http';
import type { ProxymityConfig } from '../config/config.schema.js';
import type { Pool } from '../load-balancer/pool.js';
import type { RateLimitPolicy } from '../rate-limit/rate-limit.service.js';
import { Route } from './route.js';


/** The routes of one config, in order. Immutable: a reload builds a new table and swaps it in. */
export class RouteTable {
  readonly routes: readonly Route[];

  /** `policy` compiles a rate limit for a scope ("global" or a route name); omit it for none. */
  constructor(cfg: ProxymityConfig, pools: ReadonlyMap<string, Pool>, policy?: (rl: NonNullable<ProxymityConfig['rateLimit']>, scope: string) => RateLimitPolicy) {
    const global = cfg.rateLimit !== undefined && policy !== undefined ? policy(cfg.rateLimit, 'global') : undefined;
    this.routes = Object.freeze(
      cfg.routes.map((r) => {
        const pool = pools.get(r.pool);
        // The loader has checked that every route names an existing pool.
        if (pool === undefined) throw new Error(`route "${r.name}": no pool named "${r.pool}"`);
        const own = r.rateLimit === false ? undefined : r.rateLimit !== undefined && policy !== undefined ? policy(r.rateLimit, r.name) : global;
        return new Route(r, pool, cfg, own);
      }),
    );
  }

  /** The first route that matches, or undefined (the proxy answers 404). */
  match(req: IncomingMessage): Route | undefined {
    const url = req.url as string;
    const q = url.indexOf('?');
    const path = q < 0 ? url : url.slice(0, q);
    for (const route of this.routes) if (route.matches(req, path)) return route;
    return undefined;
  }
}

