/**
 * DATA PLANE. The cache's part of one request: what the lookup found, and the hooks the engine
 * calls while the request is forwarded (its response, its body, its failure, its end).
 * Allocated only for requests on routes with the cache on (and for unsafe requests while
 * anything is stored, to invalidate).
 */
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import CachePolicy from 'http-cache-semantics';
import { usableOnError } from './freshness.js';
import { cacheView } from './response-view.js';
import { notModified, sameEtag, StoredResponse, varyNames, varyValues } from './stored-response.js';

/** How the cache took part in a request (label of cache_requests_total, field `cache` of the access log). */
export type CacheResult = 'hit' | 'stale' | 'revalidated' | 'miss' | 'collapsed' | 'bypass';

/** What the lookup decided. */
export type CacheOutcome = 'hit' | 'wait' | 'forward' | 'only-if-cached';

/** What the engine does with a backend's response headers. */
export type ResponseVerdict = StoredResponse | 'refetch' | undefined;

/** Requests waiting for another request's fill of the same key (request collapsing). */
export class Pending {
  readonly waiters: ((failed: boolean) => void)[] = [];
  readonly startedAt = Date.now();
  /** The fill failed and a stale response stood in: waiters may take the same stand-in. */
  failed = false;
  constructor(readonly key: string) {}
}

/** What a transaction needs from the cache it belongs to. */
export interface CacheHost {
  readonly maxObjectSize: number;
  readonly heuristic: number;
  /** cache.staleIfError in seconds: how long past freshness a stored response may stand in for a failing backend. */
  readonly graceS: number;
  /** Stores `entry` unless a purge or an invalidation of its key came after `tx` started. */
  commit(entry: StoredResponse, tx: CacheTransaction): void;
  /** The fill (or revalidation) of `pending` is over: waiting requests go on. */
  release(pending: Pending): void;
  /** Requests to `key` are not collapsed for a while: its last response could not be stored. */
  markUncacheable(key: string): void;
  /** An unsafe request succeeded: drop what is stored for its URL and its Location/Content-Location. */
  invalidate(tx: CacheTransaction, location: string | undefined, contentLocation: string | undefined): void;
  /** A stored response turned out useless (the backend now forbids storing it, or contradicts it). */
  discard(entry: StoredResponse): void;
  /** Reserves `bytes` for a body being captured; false when fills in progress already hold too much. */
  reserveCapture(bytes: number): boolean;
  releaseCapture(bytes: number): void;
  /** Counters of purges and invalidations, so commits that started before one can be refused. */
  readonly epoch: number;
}

/** The request as http-cache-semantics judges it: only what it reads, no Cookie or Authorization values. */
export interface PolicyRequest {
  readonly method: string;
  readonly url: string;
  readonly headers: Record<string, string>;
}

const IGNORED = 'ignored';

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
  /** On a route without the cache (invalidation only): no Cache-Status, not counted. */
  quiet = false;
  /** Cache-Status value (RFC 9211) and the result label. */
  cacheStatus: string;
  result: CacheResult;
  /** The client's own conditionals (taken off the forwarded request; the cache answers them). */
  ifNoneMatch: string | undefined = undefined;
  ifModifiedSince: string | undefined = undefined;
  /** The request as the storing decision sees it. */
  request: PolicyRequest | undefined = undefined;
  /** The request's headers as received, until the response says which ones it varies on. */
  snapshot: IncomingHttpHeaders | undefined = undefined;
  /** Host and target of the request (invalidations of Location resolve against them), the client's scheme, the route. */
  host = '';
  target = '';
  scheme = 'http';
  route = '';
  /** The cache's epoch when the lookup ran. */
  epoch = 0;
  /** Headers for this client only, added to a response served from the cache (a 304's Set-Cookie). */
  extraHeaders: string[] | undefined = undefined;
  /** The backend's 200 matches the client's own conditionals: the client gets a 304 instead. */
  notModifiedToClient = false;
  /** The body was stored in full. */
  committed = false;

  private policy: CachePolicy | undefined = undefined;
  private varyKey = '';
  private receivedAt = 0;
  private capturing = false;
  private reserved = 0;
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
   * backend confirmed it with 304, or failed and stale-if-error allows it), 'refetch' when the
   * backend's 304 contradicts what we hold (ask again without validators), or undefined: the
   * response goes to the client, and is stored while it streams when `storing` is then true.
   */
  onResponse(pres: IncomingMessage): ResponseVerdict {
    const status = pres.statusCode ?? 0;
    if (this.invalidate) {
      // RFC 9111 §4.4: a non-error answer to an unsafe method invalidates the target URI.
      if (status < 400) this.cache.invalidate(this, str(pres.headers.location), str(pres.headers['content-location']));
      return undefined;
    }
    const stored = this.stored;
    const request = this.request;
    const h = pres.headers;
    if (stored !== undefined && request !== undefined) {
      if (status === 304 && this.conditional) {
        // We sent this entry's validators only: a 304 confirms it unless it names another one.
        const confirmed = h.etag !== undefined ? stored.etag !== undefined && sameEtag(h.etag, stored.etag) : h['last-modified'] === undefined || stored.lastModified === undefined || h['last-modified'] === stored.lastModified;
        if (!confirmed) {
          this.cache.discard(stored);
          this.stored = undefined;
          this.conditional = false;
          this.cacheStatus += '; detail=validator-mismatch';
          return 'refetch';
        }
        const view = cacheView(h, pres.rawHeaders);
        if (stored.etag !== undefined) view.etag ??= stored.etag;
        if (stored.lastModified !== undefined) view['last-modified'] ??= stored.lastModified;
        const { policy } = stored.policy.revalidatedPolicy(request, { status, headers: view as Record<string, string> });
        const cookies = h['set-cookie'];
        if (cookies !== undefined) this.extraHeaders = cookies.flatMap((c) => ['set-cookie', c]);
        stored.revalidated(policy, pres.rawHeaders, Date.now());
        this.cache.commit(stored, this);
        this.result = 'revalidated';
        this.cacheStatus += '; fwd-status=304';
        this.done();
        return stored;
      }
      if (isErrorStatus(status) && usableOnError(stored, stored.age(), this.cache.graceS)) return this.standIn(`; fwd-status=${status}`);
    }
    this.cacheStatus += `; fwd-status=${status}`;
    this.notModifiedToClient = notModified(status, str(h.etag), str(h['last-modified']), this.ifNoneMatch, this.ifModifiedSince);
    if (!this.mayStore || request === undefined) {
      this.done();
      return undefined;
    }
    const why = this.unstorable(pres, request);
    if (why !== undefined) {
      this.cacheStatus += `; detail=${why}`;
      if (why !== IGNORED && status < 500) {
        // The response itself forbids storing: what was stored for this request is obsolete, and
        // collapsing requests for it would only queue them.
        if (stored !== undefined && status === 200) this.cache.discard(stored);
        this.cache.markUncacheable(this.key);
      }
      this.done();
      return undefined;
    }
    const cl = h['content-length'];
    const expected = cl !== undefined ? Number(cl) : this.cache.maxObjectSize;
    if (!this.cache.reserveCapture(expected)) {
      this.cacheStatus += '; detail=busy';
      this.done();
      return undefined;
    }
    this.reserved = expected;
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

  /** Keeps the body as it streams (one copy, into a buffer of the final size when the length is known). */
  capture(pres: IncomingMessage): void {
    const cl = pres.headers['content-length'];
    if (cl !== undefined) this.buf = Buffer.allocUnsafeSlow(Number(cl));
    else this.chunks = [];
    pres.on('data', (chunk: Buffer) => this.onData(chunk));
    pres.once('end', () => this.onEnd(pres));
    // Cut or destroyed before its end: nothing is stored, and waiters go on.
    pres.once('close', () => this.abandon());
  }

  /** The request failed before a response (no backend, refused, reset, timeout). Returns a stale stand-in, if allowed. */
  onError(): StoredResponse | undefined {
    const stored = this.stored;
    if (stored !== undefined && !this.invalidate && usableOnError(stored, stored.age(), this.cache.graceS)) return this.standIn('');
    this.done();
    return undefined;
  }

  /** The client connection closed: a fill that is not storing a body lets its waiters go. */
  onClose(): void {
    if (!this.capturing) this.done();
  }

  private standIn(fwdStatus: string): StoredResponse | undefined {
    this.result = 'stale';
    this.cacheStatus += `${fwdStatus}; detail=stale-if-error`;
    if (this.leader !== undefined) this.leader.failed = true;
    this.done();
    return this.stored;
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
    const request = this.request;
    const policy = this.policy;
    let body = this.buf;
    if (body === undefined) {
      body = Buffer.allocUnsafeSlow(this.received);
      let at = 0;
      for (const c of this.chunks ?? []) at += c.copy(body, at);
    }
    if (!pres.complete || this.received !== body.length || request === undefined || policy === undefined) return this.abandon();
    this.cache.commit(new StoredResponse(this.key, this.route, this.scheme, this.status, this.statusMessage, this.rawHeaders, body, policy, this.varyKey, this.receivedAt), this);
    this.committed = true;
    this.stopCapture();
    this.done();
  }

  /** Stops storing this response (cut, too large, or the client left before the end). */
  private abandon(why?: string): void {
    if (!this.capturing) return;
    this.stopCapture();
    if (why !== undefined) this.cache.markUncacheable(this.key);
    this.done();
  }

  private stopCapture(): void {
    this.capturing = false;
    this.buf = undefined;
    this.chunks = undefined;
    this.cache.releaseCapture(this.reserved);
    this.reserved = 0;
  }

  /**
   * Why this response is not stored, or undefined when it is. IGNORED: because of the request
   * (Authorization, no-store), which says nothing about the response for other clients.
   */
  private unstorable(pres: IncomingMessage, request: PolicyRequest): string | undefined {
    const h = pres.headers;
    const status = pres.statusCode ?? 0;
    // immutableMinTimeToLive 0: http-cache-semantics would otherwise give `immutable` a day of freshness over Expires.
    const view = cacheView(h, pres.rawHeaders) as Record<string, string>;
    const policy = new CachePolicy(request, { status, headers: view }, { shared: true, cacheHeuristic: this.cache.heuristic, immutableMinTimeToLive: 0 });
    if (!policy.storable()) {
      const rh = request.headers;
      if (rh.authorization !== undefined || /no-store/i.test(rh['cache-control'] ?? '')) {
        // Would it be storable for a plain request? Then the request, not the response, is the reason.
        const plain = new CachePolicy({ ...request, headers: { host: rh.host } }, { status, headers: view }, { shared: true });
        if (plain.storable()) return IGNORED;
      }
      return 'not-storable';
    }
    // As nginx and Varnish do by default: a response that sets a cookie is one client's.
    if (h['set-cookie'] !== undefined) return 'set-cookie';
    const vary = varyNames(h.vary);
    if (vary?.includes('*') === true) return 'vary-star';
    if (h.trailer !== undefined) return 'not-storable';
    const cl = h['content-length'];
    if (cl !== undefined && !(Number(cl) <= this.cache.maxObjectSize)) return 'too-large';
    // Useless to keep: no freshness, no stale windows, and nothing to revalidate with.
    if (policy.timeToLive() <= 0 && h.etag === undefined && h['last-modified'] === undefined) return 'no-freshness';
    this.policy = policy;
    this.receivedAt = Date.now();
    // The values of the fields it varies on, as the client sent them (before any route changed them).
    this.varyKey = varyValues(vary, this.snapshot ?? {});
    this.snapshot = undefined;
    return undefined;
  }

  private done(): void {
    this.snapshot = undefined;
    const pending = this.leader;
    if (pending === undefined) return;
    this.leader = undefined;
    this.cache.release(pending);
  }
}

/** The statuses stale-if-error stands in for (RFC 5861 §4). */
function isErrorStatus(status: number): boolean {
  return status === 500 || status === 502 || status === 503 || status === 504;
}

function str(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}
