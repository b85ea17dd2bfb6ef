import type { IncomingMessage } from 'node:http';
import type { ProxymityConfig } from '../config/config.schema.js';
import type { Pool } from '../load-balancer/pool.js';
import { Route } from './route.js';


/** The routes of one config, in order. Immutable: a reload builds a new table and swaps it in. */
export class RouteTable {
  readonly routes: readonly Route[];

  constructor(cfg: ProxymityConfig, pools: ReadonlyMap<string, Pool>) {
    this.routes = Object.freeze(
      cfg.routes.map((r) => {
        const pool = pools.get(r.pool);
        // The loader has checked that every route names an existing pool.
        if (pool === undefined) throw new Error(`route "${r.name}": no pool named "${r.pool}"`);
        return new Route(r, pool, cfg);
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

