/**
 * Keep-alive agents for backends. Node's Agent has one `timeout` for every phase of a socket's
 * life; a proxy needs three: a short one while connecting (connectTimeout), a long one while a
 * request is on the socket (the upstream read timeout), and one below the backend's own
 * keep-alive timeout while the socket sits idle in the pool (so we close it before the backend
 * does and never write a request into a socket that is being closed).
 *
 * Setting the agent's `timeout` option also makes every ClientRequest forward socket timeouts
 * as its own `timeout` event, which ProxyEngine listens to.
 */
import http from 'node:http';
import https from 'node:https';
import type { Socket } from 'node:net';
import { upstreamLookup } from './loopback-lookup.js';

export interface UpstreamAgentOptions {
  connectTimeoutMs: number;
  readTimeoutMs: number;
  idleTimeoutMs: number;
  maxSockets: number;
  maxFreeSockets: number;
}

/** A socket the agent opened, stamped with how long its connect took (ms). */
export type ConnectTimed = Socket & { connectMs?: number };

/** The agent's connect observer, as metrics set it. */
export type ConnectObserved = http.Agent & { onConnect: ((ms: number) => void) | undefined };

type AgentClass = new (...args: any[]) => http.Agent;

function withPhaseTimeouts<TBase extends AgentClass>(Base: TBase) {
  return class PhasedAgent extends Base {
    readonly phase: UpstreamAgentOptions;
    /** Called with the connect time (ms) of every new connection (metrics set it; control plane). */
    onConnect: ((ms: number) => void) | undefined = undefined;

    constructor(...args: any[]) {
      const opts = args[0] as UpstreamAgentOptions & https.AgentOptions;
      super({
        ...opts,
        keepAlive: true,
        keepAliveMsecs: 1000,
        timeout: opts.readTimeoutMs,
        maxSockets: opts.maxSockets,
        maxFreeSockets: opts.maxFreeSockets,
        maxTotalSockets: Infinity,
        // LIFO keeps the hottest sockets busy and lets the cold ones time out (HAProxy does the same).
        scheduling: 'lifo',
        // Happy eyeballs: "localhost" works whether the backend listens on 127.0.0.1 or ::1.
        autoSelectFamily: true,
        lookup: upstreamLookup,
      } as http.AgentOptions);
      this.phase = opts;
    }

    override createConnection(options: any, cb?: any): Socket {
      const socket = (super.createConnection as any)(options, cb) as Socket;
      if (socket) {
        socket.setTimeout(this.phase.connectTimeoutMs);
        const readMs = this.phase.readTimeoutMs;
        const started = performance.now();
        socket.once(options.protocol === 'https:' ? 'secureConnect' : 'connect', () => {
          socket.setTimeout(readMs);
          const ms = performance.now() - started;
          (socket as ConnectTimed).connectMs = ms;
          this.onConnect?.(ms);
        });
      }
      return socket;
    }

    override keepSocketAlive(socket: Socket): any {
      const keep = (super.keepSocketAlive as (s: Socket) => boolean)(socket);
      if (keep) socket.setTimeout(this.phase.idleTimeoutMs);
      return keep;
    }

    override reuseSocket(socket: Socket, req: http.ClientRequest): void {
      super.reuseSocket(socket, req);
      socket.setTimeout(this.phase.readTimeoutMs);
    }
  };
}

export const UpstreamHttpAgent = withPhaseTimeouts(http.Agent);
export const UpstreamHttpsAgent = withPhaseTimeouts(https.Agent as unknown as AgentClass);

export function createUpstreamAgent(protocol: string, opts: UpstreamAgentOptions, tls?: object): http.Agent {
  return protocol === 'https:' ? new UpstreamHttpsAgent({ ...opts, ...stripUndefined(tls ?? {}) }) : new UpstreamHttpAgent(opts);
}

function stripUndefined(o: object): object {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
}
