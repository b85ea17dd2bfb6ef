/**
 * DATA PLANE. The cache's part of one request on a cached route: what the lookup found, and the
 * hooks the engine calls while the request is forwarded (its response, its body, its failure,
 * its end). Allocated only for requests on routes with the cache on.
 */
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import CachePolicy from 'http-cache-semantics';
import { usableOnError } from './freshness.js';
import { StoredResponse, varyNames, varyValues } from './stored-response.js';

/** How the cache took part in a request (label of cache_requests_total, field `cache` of the access log). */
export type CacheResult = 'hit' | 'stale' | 'revalidated' | 'miss' | 'collapsed' | 'bypass';

/** What the lookup decided. */
export type CacheOutcome = 'hit' | 'wait' | 'forward' | 'only-if-cached';

/** Requests waiting for another request's fill of the same key (request collapsing). */
export class Pending {
  readonly waiters: (() => void)[] = [];
  constructor(readonly key: string) {}
}

/** What a transaction needs from the cache it belongs to. */
export interface CacheHost {
  readonly maxObjectSize: number;
  readonly heuristic: number;
  /** A complete response to store (it replaces the variant with the same Vary values). */
  commit(entry: StoredResponse): void;
  /** The fill (or revalidation) of `pending` is over: waiting requests go on. */
  release(pending: Pending): void;
  /** Requests to `key` are not collapsed for a while: its last response could not be stored. */
  markUncacheable(key: string): void;
  /** An unsafe request succeeded: drop what is stored for its URL and its Location/Content-Location. */
  invalidate(key: string, host: string, location: string | undefined, contentLocation: string | undefined): void;
  /** A stored response turned out useless (the backend now forbids storing it). */
  discard(entry: StoredResponse): void;
}

export interface PolicyRequest {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingHttpHeaders;
}

export class CacheTransaction {
  outcome: CacheOutcome = 'forward';
  /** hit: what to serve. forward: the stored response being revalidated, or a stale stand-in for errors. */
  stored: StoredResponse | undefined = undefined;
  /** Our validators went upstream with the request: a 304 refreshes `stored`. */
  conditional = false;
  /** The response may be stored (a GET without Range whose request allows storing). */
  mayStore = false;
  /** The fill this request owns: others for the same key wait for it. */
  leader: Pending | undefined = undefined;
  /** The fill this request waits for (outcome "wait"). */
  waitOn: Pending | undefined = undefined;
  /** An unsafe method: a success invalidates the URL. */
  invalidate = false;
  /** Cache-Status value (RFC 9211) and the result label. */
  cacheStatus: string;
  result: CacheResult;
  /** The client's own conditionals (taken off the forwarded request; the cache answers them). */
  ifNoneMatch: string | undefined = undefined;
  ifModifiedSince: string | undefined = undefined;
  /** The request as the cache keys and judges it (headers copied before the route changes them). */
  request: PolicyRequest | undefined = undefined;
  /** Host of the request (invalidations of Location stay on it), and the scheme the client used. */
  host = '';
  scheme = 'http';

  private policy: CachePolicy | undefined = undefined;
  private capturing = false;
  private buf: Buffer | undefined = undefined;
  private chunks: Buffer[] | undefined = undefined;
  private received = 0;
  private status = 0;
  private statusMessage = '';
  private rawHeaders: readonly string[] = [];

  constructor(
    private readonly cache: CacheHost,
    readonly key: string,
    cacheStatus: string,
    result: CacheResult,
  ) {
    this.cacheStatus = cacheStatus;
    this.result = result;
  }

  /**
   * The backend's response headers arrived. Returns a stored response to serve instead (the
   * backend confirmed it with 304, or failed and stale-if-error allows it), else undefined: the
   * response goes to the client, and is stored while it streams when `storing` is then true.
   */
  onResponse(pres: IncomingMessage): StoredResponse | undefined {
    const status = pres.statusCode ?? 0;
    if (this.invalidate) {
      // RFC 9111 §4.4: a non-error answer to an unsafe method invalidates the target URI.
      if (status < 400) this.cache.invalidate(this.key, this.host, str(pres.headers.location), str(pres.headers['content-location']));
      return undefined;
    }
    const stored = this.stored;
    const request = this.request;
    if (stored !== undefined && request !== undefined) {
      if (status === 304 && this.conditional) {
        const { policy, matches } = stored.policy.revalidatedPolicy(request as never, { status, headers: pres.headers as Record<string, string> });
        if (matches) {
          stored.revalidated(policy, pres.rawHeaders);
          this.cache.commit(stored);
          this.result = 'revalidated';
          this.cacheStatus += '; fwd-status=304';
          this.done();
          return stored;
        }
        // A 304 whose validators do not match what we hold: the client still needs a body and
        // this is the only one at hand (http-cache-semantics' advice), but it is not kept.
        this.cache.discard(stored);
        this.cacheStatus += '; fwd-status=304; detail=validator-mismatch';
        this.done();
        return stored;
      } else if (status >= 500 && usableOnError(stored, stored.age())) {
        this.result = 'stale';
        this.cacheStatus = `${this.cacheStatus}; fwd-status=${status}; detail=stale-if-error`;
        this.done();
        return stored;
      }
    }
    this.cacheStatus += `; fwd-status=${status}`;
    if (!this.mayStore || request === undefined) {
      this.done();
      return undefined;
    }
    const why = this.unstorable(pres, request);
    if (why !== undefined) {
      this.cacheStatus += `; detail=${why}`;
      if (status === 200 && stored !== undefined) this.cache.discard(stored);
      // Not for a failing backend: its next answer may well be storable.
      if (status < 500) this.cache.markUncacheable(this.key);
      this.done();
      return undefined;
    }
    this.cacheStatus += '; stored';
    this.capturing = true;
    this.status = status;
    this.statusMessage = pres.statusMessage ?? '';
    this.rawHeaders = pres.rawHeaders;
    return undefined;
  }

  /** Whether the response headers just handled will be stored as the body streams. */
  get storing(): boolean {
    return this.capturing;
  }

  /** Keeps the body as it streams to the client (one copy, into a buffer of the final size when the length is known). */
  capture(pres: IncomingMessage): void {
    const cl = pres.headers['content-length'];
    if (cl !== undefined) this.buf = Buffer.allocUnsafeSlow(Number(cl));
    else this.chunks = [];
    pres.on('data', (chunk: Buffer) => this.onData(chunk));
    pres.once('end', () => this.onEnd(pres));
  }

  /** The request failed before a response (no backend, refused, reset, timeout). Returns a stale stand-in, if allowed. */
  onError(): StoredResponse | undefined {
    const stored = this.stored;
    if (stored !== undefined && !this.invalidate && usableOnError(stored, stored.age())) {
      this.result = 'stale';
      this.cacheStatus += '; detail=stale-if-error';
      this.done();
      return stored;
    }
    this.done();
    return undefined;
  }

  /** The client connection closed: a fill that did not complete lets its waiters go. */
  onClose(): void {
    this.capturing = false;
    this.buf = undefined;
    this.chunks = undefined;
    this.done();
  }

  private onData(chunk: Buffer): void {
    if (!this.capturing) return;
    const at = this.received;
    this.received = at + chunk.length;
    const buf = this.buf;
    if (buf !== undefined) {
      if (this.received > buf.length) return this.abandon('too-large');
      chunk.copy(buf, at);
    } else {
      if (this.received > this.cache.maxObjectSize) return this.abandon('too-large');
      this.chunks?.push(chunk);
    }
  }

  private onEnd(pres: IncomingMessage): void {
    if (!this.capturing) return;
    this.capturing = false;
    const request = this.request;
    const policy = this.policy;
    let body = this.buf;
    if (body === undefined) {
      const chunks = this.chunks ?? [];
      body = Buffer.allocUnsafeSlow(this.received);
      let at = 0;
      for (const c of chunks) at += c.copy(body, at);
    }
    this.buf = undefined;
    this.chunks = undefined;
    if (!pres.complete || this.received !== body.length || request === undefined || policy === undefined) return this.done();
    const names = varyNames(pres.headers.vary);
    this.cache.commit(new StoredResponse(this.key, this.status, this.statusMessage, this.rawHeaders, body, policy, varyValues(names, request.headers), this.scheme));
    this.done();
  }

  private abandon(why: string): void {
    this.capturing = false;
    this.buf = undefined;
    this.chunks = undefined;
    void why;
    this.cache.markUncacheable(this.key);
    this.done();
  }

  /** Why this response is not stored, or undefined when it is. */
  private unstorable(pres: IncomingMessage, request: PolicyRequest): string | undefined {
    const h = pres.headers;
    const policy = new CachePolicy(request as never, { status: pres.statusCode, headers: h as Record<string, string> }, { shared: true, cacheHeuristic: this.cache.heuristic });
    if (!policy.storable()) return 'not-storable';
    // As nginx and Varnish do by default: a response that sets a cookie is one client's.
    if (h['set-cookie'] !== undefined) return 'set-cookie';
    const vary = varyNames(h.vary);
    if (vary?.includes('*') === true) return 'vary-star';
    if (h['content-range'] !== undefined || h.trailer !== undefined) return 'not-storable';
    const cl = h['content-length'];
    if (cl !== undefined && !(Number(cl) <= this.cache.maxObjectSize)) return 'too-large';
    // Useless to keep: no freshness, no stale windows, and nothing to revalidate with.
    if (policy.timeToLive() <= 0 && h.etag === undefined && h['last-modified'] === undefined) return 'no-freshness';
    this.policy = policy;
    return undefined;
  }

  private done(): void {
    const pending = this.leader;
    if (pending === undefined) return;
    this.leader = undefined;
    this.cache.release(pending);
  }
}

function str(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}
