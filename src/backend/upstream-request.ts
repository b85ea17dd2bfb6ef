/**
 * The one way a request is sent to a backend: proxied requests (ProxyEngine) and active health
 * probes (HealthProbeService) both go through `sendUpstream`.
 *
 * Why one way: V8 optimises Node's HTTP client code (the agent, ClientRequest, the response
 * parser, socket reads and writes) for the object shapes it has seen. Probes used to build their
 * own options object, a plain agent and their own listeners; the first probe sent while traffic
 * flowed deoptimised about 50 of those functions, which were then recompiled for two shapes
 * each. With probes on (the default) that cost 5-13% more CPU per proxied request, measured at
 * a fixed request rate (docs/benchmarks.md#health-probes-and-the-hot-path). Sent from here, a
 * probe has the shapes of a proxied request: the same options object, an agent of the same
 * class, the owner stored under the same symbol, the same listeners in the same order.
 */
import http, { type ClientRequest, type IncomingMessage } from 'node:http';
import https from 'node:https';
import type { Backend } from './backend.js';

/** What a request to a backend belongs to (the engine's exchange, or a probe), on the request and on its response. */
export const kOwner = Symbol('proxymity.owner');
export type Owned<T, O> = T & { [kOwner]?: O };

/** The request's listeners: shared functions, found once per module, that find their state through `kOwner`. */
export interface UpstreamListeners {
  response(this: ClientRequest, res: IncomingMessage): void;
  error(this: ClientRequest, err: Error): void;
  /** The agent's connect or read timeout (see upstream-agent.ts). */
  timeout(this: ClientRequest): void;
}

/**
 * Starts a request to `backend` through `agent`; the caller writes the body (or ends it).
 * `headers` is a flat [name, value, ...] list. Throws when Node refuses the method, path or a
 * header (before anything is sent).
 */
export function sendUpstream(
  backend: Backend,
  agent: http.Agent,
  port: number,
  method: string,
  path: string,
  headers: (string | string[])[],
  owner: object,
  on: UpstreamListeners,
): ClientRequest {
  // No `protocol`: http.request and https.request take their agent's. Node copies these options
  // three times per request (twice in ClientRequest, once more in the agent when it opens a
  // connection), so every key costs.
  const options: http.RequestOptions = {
    hostname: backend.hostname,
    port,
    method,
    path,
    headers: headers as unknown as http.OutgoingHttpHeaders,
    agent,
  };
  const up = backend.protocol === 'https:' ? https.request(options) : http.request(options);
  (up as Owned<ClientRequest, object>)[kOwner] = owner;
  up.on('response', on.response);
  up.on('error', on.error);
  up.on('timeout', on.timeout);
  return up;
}
