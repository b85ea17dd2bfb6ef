/**
 * Keep-alive agents for backends. A proxy needs three socket timeouts where Node's Agent has one:
 * a short one while connecting (connectTimeout), a long one while a request is on the socket
 * (the upstream read timeout), and one below the backend's own keep-alive timeout while the
 * socket sits idle in the pool (so we close it before the backend does and never write a
 * request into a socket that is being closed).
 *
 * Node's way (the agent's `timeout` option) re-arms the socket timer twice per request, each
 * time with a new timer, and adds and removes a timeout listener per request (about 1 µs per
 * request in a profile, `setStreamTimeout` alone).
 * Here every timer and listener is set once per connection instead:
 * - connect: a deadline of connectTimeout from the socket's creation, cleared once it is
 *   connected (for https, once its TLS handshake is done). The socket's own timer is then set
 *   to the read timeout. Node refreshes that timer on every read and write, so it measures
 *   silence; it is also refreshed in place when a pooled socket takes a request.
 * - read: one 'timeout' listener per socket hands the timeout to the request on it (the engine
 *   turns it into a 504, or a cut response once the body began).
 * - idle: pooled sockets are stamped when freed; a sweep, running only while the pool holds idle
 *   sockets, closes those idle for keepAliveTimeout (or the backend's Keep-Alive `timeout=` hint
 *   less a second, as Node does). It closes them up to one sweep interval early, never late.
 *   A pooled socket is also closed by its read timer if the read timeout is the shorter.
 */
import http from 'node:http';
import https from 'node:https';
import type { Socket } from 'node:net';
import { upstreamLookup } from './loopback-lookup.js';
import { rawHeader } from './raw-header.js';

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

/**
 * A pooled socket: when it was freed (performance.now()), how long it may stay idle (ms), and
 * whether it is in the pool now (put there by onFree; taken out by reuseSocket).
 */
type PooledSocket = Socket & {
  freedAt?: number;
  idleLimit?: number;
  pooled?: boolean;
  _httpMessage?: (http.ClientRequest & { res?: http.IncomingMessage | null }) | null;
};

/** Node keeps a second of margin below the backend's announced keep-alive timeout; so do we. */
const KEEP_ALIVE_HINT_MARGIN_MS = 1000;
const KEEP_ALIVE_HINT = /^\s*timeout\s*=\s*(\d+)/i;

/** The socket's timer fired: give it to the request on the socket, if any (free sockets are the agent's). */
function onSocketTimeout(this: PooledSocket): void {
  const req = this._httpMessage;
  if (req == null || req.destroyed) return;
  if (req.listenerCount('timeout') > 0) req.emit('timeout');
  else req.destroy(Object.assign(new Error('upstream socket timeout'), { code: 'ETIMEDOUT' }));
}

/**
 * The socket closed. One case needs telling the request: the backend answered 101 Switching
 * Protocols (with an Upgrade field) to a request that asked for no upgrade. Node's client hands
 * such a socket to a request's 'upgrade' listener, and with none closes it, and the request then
 * hears only 'close': no response, no error, so the client waited forever and the request kept
 * its backend's slot. Here it gets an error (a protocol error, 502). Set once per connection,
 * and ahead of Node's own 'close' listeners: no listener per request.
 */
function onSocketClose(this: PooledSocket): void {
  const req = this._httpMessage as (http.ClientRequest & { res?: (http.IncomingMessage & { upgrade?: boolean }) | null; upgradeOrConnect?: boolean }) | null | undefined;
  if (req == null || req.upgradeOrConnect === true || req.res?.upgrade !== true || req.listenerCount('error') === 0) return;
  req.emit('error', Object.assign(new Error('the backend answered 101 Switching Protocols to a request that asked for no upgrade'), { code: 'HPE_UNEXPECTED_UPGRADE' }));
}

/** connectTimeout ran out before the connection (and its TLS handshake) was up: as the socket's own timeout would. */
function onConnectDeadline(socket: PooledSocket): void {
  if (socket.destroyed) return;
  const req = socket._httpMessage;
  if (req == null || req.destroyed) socket.destroy();
  else socket.emit('timeout');
}

/** What Node's agent hands async hooks as the resource of a reused socket (its ReusedHandle). */
class ReusedHandle {
  constructor(
    readonly type: string,
    readonly handle: unknown,
  ) {}
}

type AsyncHandle = { asyncReset?: (resource: object) => void; getProviderType(): string; getAsyncId(): number };
/** The socket's own copy of its async id, under Node's internal symbol (looked for once, on the first socket; null: none). */
let asyncIdSymbol: symbol | null | undefined;

function asyncIdKey(socket: Socket): symbol | null {
  return (asyncIdSymbol ??= Object.getOwnPropertySymbols(socket).find((s) => s.description === 'async_id_symbol') ?? null);
}

/**
 * What Node's agent does to a pooled socket as it takes a new request (`asyncResetHandle`, not
 * exported): a new async id, with async hooks' destroy and init run, so async context
 * (AsyncLocalStorage) follows the new request, not the one that opened the socket.
 */
function resetAsyncId(socket: Socket): void {
  const handle = (socket as Socket & { _handle?: AsyncHandle | null })._handle;
  if (handle == null || typeof handle.asyncReset !== 'function') return;
  handle.asyncReset(new ReusedHandle(handle.getProviderType(), handle));
  const key = asyncIdKey(socket);
  if (key !== null) (socket as unknown as Record<symbol, number>)[key] = handle.getAsyncId();
}

/**
 * A pooled socket's error (Node's `freeSocketErrorListener`): the socket is closed and leaves the
 * agent at once. Node adds its listener with once() each time a socket goes into the pool and
 * takes it off each time one is reused; this one is set once per connection and acts only while
 * the socket is in the pool, the same span. Outside it, errors are the request's (its listener
 * is on the socket while it holds it). In the short spans where no request listens (from a
 * response's end to the socket's return to the pool on the next tick, and from a hand-over to
 * the request taking the socket on the next tick), Node would throw an uncaught exception; here
 * the error is dropped, and the socket is destroyed by it (onFree then does not pool it).
 */
function onPooledSocketError(this: PooledSocket): void {
  if (this.pooled !== true) return;
  this.pooled = false;
  this.destroy();
  this.emit('agentRemove');
}

/** Node's agent internals that the free path reads. */
type AgentInternals = { totalSocketCount: number; maxTotalSockets: number; keepAlive: boolean };
type FreeListener = (this: http.Agent, socket: PooledSocket, options: { _agentKey?: string }) => void;

function withPhaseTimeouts<TBase extends AgentClass>(Base: TBase) {
  const plain = (Base as unknown) === http.Agent;
  return class PhasedAgent extends Base {
    readonly phase: UpstreamAgentOptions;
    /** Called with the connect time (ms) of every new connection (metrics set it; control plane). */
    onConnect: ((ms: number) => void) | undefined = undefined;
    private readonly sweepEveryMs: number;
    private sweeper: NodeJS.Timeout | undefined = undefined;

    constructor(...args: any[]) {
      const { connectTimeoutMs, readTimeoutMs, idleTimeoutMs, maxSockets, maxFreeSockets, ...tls } = args[0] as UpstreamAgentOptions & https.AgentOptions;
      // Node copies the agent's options into every request's options (addRequest): only what
      // the agent needs goes in; the rest has Node's defaults (LIFO scheduling, which keeps the
      // hottest sockets busy and lets cold ones time out, as HAProxy does). The connect options
      // are added in createConnection.
      super({
        ...tls,
        keepAlive: true,
        maxSockets,
        maxFreeSockets,
        // Plain HTTP has no SNI: '' spares Node parsing the Host header for it on every request.
        ...(plain ? { servername: '' } : {}),
      } as http.AgentOptions);
      const opts = { connectTimeoutMs, readTimeoutMs, idleTimeoutMs, maxSockets, maxFreeSockets };
      this.phase = opts;
      this.sweepEveryMs = Math.max(50, Math.min(1000, Math.floor(opts.idleTimeoutMs / 4)));
      // Node's agent registers its one 'free' handler in its constructor: ours takes the common
      // case and hands the rest to Node's (see onFree). Only when Node's is the one listener, as
      // in the Node versions tested (the spec checks that the swap happened).
      const listeners = this.listeners('free');
      if (plain && listeners.length === 1) {
        this.nodeFree = listeners[0] as FreeListener;
        this.removeListener('free', this.nodeFree);
        this.on('free', this.onFree);
      }
    }

    /** Node's own 'free' handler, for what onFree leaves to it. */
    private nodeFree: FreeListener = () => undefined;

    /**
     * A plain-HTTP socket's response has ended (Node's 'free' handler, for less): it goes back to
     * the pool, with Node's checks, in Node's order. Node's handler works out the pool key again
     * (a string built from the options), stores the pool list again, lists the keys of the
     * request queues (removeSocket), and adds a once() error listener that reuseSocket takes off
     * again: in a profile at a fixed request rate, the free path was 4.6% of the proxy's CPU
     * samples with Node's handler and 2.1% with this one. Here the key is the one Node stored
     * on the socket's options when it opened the connection, and the error listener is set once
     * per connection. When a request is queued (for any host), or the socket cannot be written
     * or its key is unknown, Node's handler runs instead. removeSocket's part for a writable
     * socket with no request waiting is done here, not called (NODE_DEBUG=http shows no
     * `agent.on(free)` line for these).
     */
    private onFree(socket: PooledSocket, options: { _agentKey?: string }): void {
      const name = options._agentKey;
      if (name === undefined || !socket.writable || hasEntries(this.requests)) return void this.nodeFree.call(this, socket, options);
      const req = socket._httpMessage;
      const self = this as unknown as AgentInternals;
      if (req == null || !req.shouldKeepAlive || !self.keepAlive) return void socket.destroy();
      const pools = this.freeSockets as Record<string, PooledSocket[] | undefined>;
      const busyPools = this.sockets as Record<string, Socket[] | undefined>;
      const free = pools[name];
      const busy = busyPools[name];
      const freeLen = free === undefined ? 0 : free.length;
      const count = freeLen + (busy === undefined ? 0 : busy.length);
      if (self.totalSocketCount > self.maxTotalSockets || count > this.maxSockets || freeLen >= this.maxFreeSockets || !this.keepSocketAlive(socket)) return void socket.destroy();
      const key = asyncIdKey(socket);
      if (key !== null) (socket as unknown as Record<symbol, number>)[key] = -1;
      socket._httpMessage = null;
      // Out of the busy list (Node's removeSocket, for a writable socket with no request waiting).
      if (busy !== undefined) {
        const i = busy.lastIndexOf(socket);
        if (i !== -1) busy.splice(i, 1);
        if (busy.length === 0) delete busyPools[name];
      }
      socket.pooled = true;
      if (free === undefined) pools[name] = [socket];
      else free.push(socket);
    }

    override createConnection(options: any, cb?: any): Socket {
      // Happy eyeballs: "localhost" works whether the backend listens on 127.0.0.1 or ::1.
      options.autoSelectFamily = true;
      options.lookup = upstreamLookup;
      const socket = (super.createConnection as any)(options, cb) as Socket;
      if (socket) {
        const connectMs = this.phase.connectTimeoutMs;
        socket.setTimeout(connectMs);
        // The socket's timer measures silence, and through an https agent a silent TLS handshake
        // fired it only after twice connectTimeout. A deadline from the start bounds the whole
        // connect, TLS handshake included: one timer per new connection, none per request.
        const deadline = setTimeout(onConnectDeadline, connectMs, socket);
        socket.once('close', () => clearTimeout(deadline));
        socket.on('timeout', onSocketTimeout);
        socket.on('close', onSocketClose);
        socket.setKeepAlive(true, 1000);
        if (plain) {
          (socket as PooledSocket).pooled = false;
          socket.on('error', onPooledSocketError);
        }
        const readMs = this.phase.readTimeoutMs;
        const started = performance.now();
        socket.once(plain ? 'connect' : 'secureConnect', () => {
          clearTimeout(deadline);
          socket.setTimeout(readMs);
          const ms = performance.now() - started;
          (socket as ConnectTimed).connectMs = ms;
          this.onConnect?.(ms);
        });
      }
      return socket;
    }

    /**
     * A request takes a pooled socket without Node's per-request copy of its options: Node's
     * `addRequest` spreads the request's options and the agent's into a new null-prototype
     * object, which V8 builds through its slow runtime path (`Runtime_CopyDataProperties`,
     * about 6% of the proxy's CPU per request in a profile). For plain HTTP the pool key reads
     * only the request's host and port (the agent's options hold none of the keys it reads),
     * so the key and the socket are found from the request's options as they are, and the
     * socket is handed over as Node does: LIFO, destroyed sockets skipped, async id reset,
     * `reuseSocket`, `onSocket`. A request with no pooled socket (a new connection, a queue),
     * and every HTTPS request (whose key holds the TLS options and a per-request servername),
     * goes through Node's own path.
     */
    addRequest(req: http.ClientRequest, options: http.ClientRequestArgs): void {
      if (plain && (this as { scheduling?: string }).scheduling !== 'fifo') {
        const name = this.getName(options);
        const pools = this.freeSockets as Record<string, Socket[] | undefined>;
        const free = pools[name];
        if (free !== undefined) {
          while (free.length > 0 && free[0]!.destroyed) free.shift();
          const socket = free.pop();
          if (free.length === 0) delete pools[name];
          if (socket !== undefined) {
            resetAsyncId(socket);
            this.reuseSocket(socket, req);
            (req as http.ClientRequest & { onSocket(s: Socket): void }).onSocket(socket);
            const timeout = (req as { timeout?: number }).timeout;
            if (timeout !== undefined && timeout !== 0) socket.setTimeout(timeout);
            ((this.sockets as Record<string, Socket[] | undefined>)[name] ??= []).push(socket);
            return;
          }
        }
      }
      (Base.prototype as unknown as { addRequest: (this: http.Agent, req: http.ClientRequest, options: http.ClientRequestArgs) => void }).addRequest.call(this, req, options);
    }

    /** Called as a socket goes back to the pool; false closes it instead. No timers are touched. */
    override keepSocketAlive(socket: PooledSocket): boolean {
      let limit = this.phase.idleTimeoutMs;
      const raw = socket._httpMessage?.res?.rawHeaders;
      const hint = raw === undefined ? undefined : rawHeader(raw, 'keep-alive');
      if (hint !== undefined) {
        const m = KEEP_ALIVE_HINT.exec(hint);
        if (m !== null) {
          const hinted = Number(m[1]) * 1000 - KEEP_ALIVE_HINT_MARGIN_MS;
          if (hinted <= 0) return false;
          if (hinted < limit) limit = hinted;
        }
      }
      socket.unref();
      socket.freedAt = performance.now();
      socket.idleLimit = limit;
      if (this.sweeper === undefined) {
        this.sweeper = setInterval(sweep, this.sweepEveryMs, this);
        this.sweeper.unref();
      }
      return true;
    }

    /**
     * A pooled socket takes a request. Its read timer last restarted when the previous response
     * ended; restart it now, so the new request gets the whole read timeout even before its
     * first write (a request with a body is written with the body's first chunk). `_unrefTimer`
     * refreshes the existing timer in place, which costs far less than `setTimeout`.
     */
    override reuseSocket(socket: PooledSocket, req: http.ClientRequest): void {
      socket.pooled = false;
      super.reuseSocket(socket, req);
      (socket as Socket & { _unrefTimer?: () => void })._unrefTimer?.();
    }

    /** Closes the pooled sockets that are due, and stops when the pool is empty. */
    sweepIdle(): void {
      const now = performance.now() + this.sweepEveryMs; // due before the next sweep: close now
      if (this.closePooled((s) => now - (s.freedAt ?? 0) >= (s.idleLimit ?? 0)) === 0) this.stopSweeping();
    }

    /**
     * Closes the pooled sockets freed by `freedBy` (performance.now(); all when undefined), so
     * that the next request opens a new connection: used when a pooled connection turned out
     * closed by the backend as it was reused, which the ones that have idled as long likely are too.
     */
    dropIdle(freedBy?: number): void {
      this.closePooled((s) => freedBy === undefined || (s.freedAt ?? 0) <= freedBy);
    }

    /**
     * Closes the pooled sockets `due` picks, out of the pool at once (Node would hand out a
     * destroyed socket until its 'close'). Returns how many stay pooled.
     */
    private closePooled(due: (s: PooledSocket) => boolean): number {
      let left = 0;
      const pools = this.freeSockets as Record<string, PooledSocket[] | undefined>;
      for (const name in pools) {
        const free = pools[name];
        if (free === undefined) continue;
        for (let i = free.length - 1; i >= 0; i--) {
          const s = free[i]!;
          if (due(s)) {
            free.splice(i, 1);
            s.pooled = false;
            s.destroy();
          } else left++;
        }
        if (free.length === 0) delete pools[name];
      }
      return left;
    }

    stopSweeping(): void {
      if (this.sweeper !== undefined) clearInterval(this.sweeper);
      this.sweeper = undefined;
    }

    override destroy(): void {
      this.stopSweeping();
      super.destroy();
    }
  };
}

/** Whether a null-prototype map (the agent's request queues) has a key. */
function hasEntries(map: object): boolean {
  for (const _ in map) return true;
  return false;
}

function sweep(agent: { sweepIdle(): void }): void {
  agent.sweepIdle();
}

export const UpstreamHttpAgent = withPhaseTimeouts(http.Agent);
export const UpstreamHttpsAgent = withPhaseTimeouts(https.Agent as unknown as AgentClass);

export function createUpstreamAgent(protocol: string, opts: UpstreamAgentOptions, tls?: object): http.Agent {
  return protocol === 'https:' ? new UpstreamHttpsAgent({ ...opts, ...stripUndefined(tls ?? {}) }) : new UpstreamHttpAgent(opts);
}

function stripUndefined(o: object): object {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined));
}
