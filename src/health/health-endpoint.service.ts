/**
 * The proxy's own health endpoint (readiness for orchestrators): 200 while at least one backend
 * is healthy, 503 when none is or while draining, with @nestjs/terminus' result as the body.
 * Served on `proxy.healthPath` of every listener and on the admin listener.
 *
 * Answered on the raw Node request, not through Express. Express replaces the prototype of `req`
 * and `res`, and Node's server-side functions, which every proxied request runs through, then
 * see objects of other shapes. One GET /health under traffic made V8 deoptimise 48 of them and
 * recompile them for both shapes, and an orchestrator polls it all day: 3-6% more CPU per proxied
 * request, measured (docs/benchmarks.md#health-probes-and-the-hot-path). Written here with
 * `sendLikeProxied`, the way a proxied response is written, it leaves those shapes alone.
 */
import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import { Injectable, Logger, ServiceUnavailableException, type OnModuleInit } from '@nestjs/common';
import { HealthCheckService } from '@nestjs/terminus';
import { kOwner, type Owned } from '../backend/upstream-request.js';
import { hstsOf } from '../proxy/hsts.js';
import { ProxyMiddleware } from '../proxy/proxy.middleware.js';
import { BackendsHealthIndicator } from './backends.health.js';

@Injectable()
export class HealthEndpoint implements OnModuleInit {
  private readonly logger = new Logger(HealthEndpoint.name);

  constructor(
    private readonly health: HealthCheckService,
    private readonly backends: BackendsHealthIndicator,
    private readonly proxy: ProxyMiddleware,
  ) {}

  onModuleInit(): void {
    this.proxy.serveOwnPathWith((req, res) => this.serve(req, res));
  }

  /** Answers a request for the health path; never throws. */
  serve(req: IncomingMessage, res: ServerResponse): void {
    markLikeProxied(res);
    const method = req.method;
    if (method !== 'GET' && method !== 'HEAD') {
      send(res, 405, 'text/plain; charset=utf-8', `405 Method Not Allowed: ${method} (use GET or HEAD)\n`, false, ['allow', 'GET, HEAD']);
      return;
    }
    this.health
      .check([() => this.backends.check('backends')])
      .then(
        (result) => send(res, 200, JSON_TYPE, JSON.stringify(result), method === 'HEAD'),
        (err: unknown) => {
          if (err instanceof ServiceUnavailableException) send(res, 503, JSON_TYPE, JSON.stringify(err.getResponse()), method === 'HEAD');
          else {
            this.logger.error(`health check failed: ${(err as Error).stack ?? String(err)}`);
            send(res, 500, 'text/plain; charset=utf-8', '500 Internal Server Error: health check failed\n', method === 'HEAD');
          }
        },
      )
      .catch((err: unknown) => {
        // Writing the answer failed (Node refused a header, say): this request fails, the process stays up.
        this.logger.error(`health answer failed: ${(err as Error).stack ?? String(err)}`);
        res.destroy();
      });
  }
}

const JSON_TYPE = 'application/json; charset=utf-8';

/**
 * Writes an answer the way a proxied response is written (a reason phrase, a header list, the
 * body as a Buffer, then `end()`), so Node's functions see the arguments they were compiled for.
 */
export function sendLikeProxied(res: ServerResponse, status: number, headers: string[], body: string, headOnly: boolean): void {
  if (res.headersSent || res.destroyed) return;
  const bytes = Buffer.from(body);
  headers.push('content-length', String(bytes.length));
  const id = (res.req as IncomingMessage | undefined)?.headers['x-request-id'];
  if (typeof id === 'string') headers.push('x-request-id', id);
  const hsts = res.req !== undefined ? hstsOf(res.req) : undefined;
  if (hsts !== undefined) headers.push('strict-transport-security', hsts);
  // HTTP/2 has no reason phrase (Node warns when one is given), as in the engine.
  if ((res.req as IncomingMessage | undefined)?.httpVersionMajor === 2) res.writeHead(status, headers);
  else res.writeHead(status, STATUS_CODES[status] ?? '', headers);
  if (!headOnly) res.write(bytes);
  res.end();
}

/** A proxied response carries its exchange under `kOwner` from the start; so does this one. */
export function markLikeProxied(res: ServerResponse): void {
  (res as Owned<ServerResponse, object>)[kOwner] = OWN_ENDPOINT;
}

const OWN_ENDPOINT = Object.freeze({ ownEndpoint: true });

function send(res: ServerResponse, status: number, type: string, body: string, headOnly: boolean, extra: readonly string[] = []): void {
  sendLikeProxied(res, status, ['content-type', type, 'cache-control', 'no-store', ...extra], body, headOnly);
}
