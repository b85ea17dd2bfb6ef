/**
 * One stored response (a variant of one cache key): the header list as it will be served, the
 * body in one exactly-sized buffer, and the http-cache-semantics policy that says how fresh it is.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type CachePolicy from 'http-cache-semantics';
import { responseDirectives, type ResponseDirectives } from './cache-control.js';
import { parseAge, parseHttpDate } from './response-view.js';

/** What a stored response costs besides its body and headers (objects, map slots). */
const ENTRY_OVERHEAD = 256;

/**
 * Never stored: connection-level fields (RFC 9110 §7.6.1), those the cache sets itself when it
 * serves (Age, Content-Length), and the request id of the request that filled the entry.
 */
const NOT_STORED = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'proxy-authenticate', 'age', 'content-length', 'x-request-id']);
/**
 * Not taken from a 304 into the stored headers: those that describe the stored body (RFC 9111
 * §3.2), and Set-Cookie, which belongs to the one client whose request was revalidated.
 */
const NOT_UPDATED = new Set([...NOT_STORED, 'content-encoding', 'content-range', 'content-type', 'set-cookie']);
/** Sent with a 304 made from a stored response (RFC 9110 §15.4.5). */
export const NOT_MODIFIED_FIELDS = new Set(['cache-control', 'content-location', 'date', 'etag', 'expires', 'vary', 'last-modified']);

export class StoredResponse {
  /** Header list as served (name, value, ...), with Content-Length set from the body. */
  headers: string[];
  policy: CachePolicy;
  /** Freshness lifetime in seconds (s-maxage, max-age, Expires or the heuristic). */
  lifetime: number;
  directives: ResponseDirectives;
  etag: string | undefined;
  lastModified: string | undefined;
  readonly size: number;
  /** Lowercased names of the request fields the response varies on, or undefined. */
  readonly varyNames: readonly string[] | undefined;
  /** Age when it arrived (seconds), and when that was (ms since the epoch). */
  private initialAge: number;
  private receivedAt: number;

  constructor(
    /** The primary cache key: host and request target. */
    readonly key: string,
    /** The route that stored it: routes may send the same URL to different pools or rewrite it. */
    readonly route: string,
    /** "http" or "https" as the client used it: kept apart, like nginx's default key ($scheme$host$uri). */
    readonly scheme: string,
    readonly status: number,
    readonly statusMessage: string,
    rawHeaders: readonly string[],
    readonly body: Buffer,
    policy: CachePolicy,
    /** The request's values of the Vary fields, normalized (see varyValues). */
    readonly varyKey: string,
    /** When the response headers arrived (ms since the epoch). */
    receivedAt: number,
  ) {
    const headers = storedHeaders(rawHeaders, body.length, status);
    // RFC 9110 §6.6.1: a cache that receives a response without Date adds the time it got it.
    if (field(headers, 'date') === undefined) headers.push('date', new Date(receivedAt).toUTCString());
    this.headers = headers;
    this.policy = policy;
    const h = policy.responseHeaders() as IncomingHttpHeaders;
    this.varyNames = varyNames(h.vary);
    this.lifetime = policy.maxAge();
    this.directives = responseDirectives(h['cache-control']);
    this.etag = field(headers, 'etag');
    this.lastModified = field(headers, 'last-modified');
    this.initialAge = initialAge(rawHeaders, receivedAt);
    this.receivedAt = receivedAt;
    // Headers count twice: the served list, and the policy's copy.
    let size = ENTRY_OVERHEAD + key.length * 2 + varyKey.length * 2 + body.length;
    for (const s of this.headers) size += s.length * 2;
    this.size = size;
  }

  /**
   * Seconds since the origin generated it (RFC 9111 §4.2.3): the larger of its Age field and its
   * apparent age (arrival − Date) when it arrived, plus the time it has been stored since.
   * (http-cache-semantics' own age() counts the Age field only.)
   */
  age(): number {
    return this.initialAge + (Date.now() - this.receivedAt) / 1000;
  }

  /** A 304 answered our conditional request: take its headers and the policy that follows from it (RFC 9111 §4.3.4). */
  revalidated(policy: CachePolicy, rawHeaders: readonly string[], receivedAt: number): void {
    const listed = connectionListed(rawHeaders);
    const replaced = new Set<string>();
    for (let i = 0; i < rawHeaders.length; i += 2) {
      const n = rawHeaders[i].toLowerCase();
      if (!NOT_UPDATED.has(n) && listed?.has(n) !== true) replaced.add(n);
    }
    const next: string[] = [];
    for (let i = 0; i < this.headers.length; i += 2) if (!replaced.has(this.headers[i].toLowerCase())) next.push(this.headers[i], this.headers[i + 1]);
    for (let i = 0; i < rawHeaders.length; i += 2) if (replaced.has(rawHeaders[i].toLowerCase())) next.push(rawHeaders[i], rawHeaders[i + 1]);
    this.headers = next;
    this.policy = policy;
    const h = policy.responseHeaders() as IncomingHttpHeaders;
    this.lifetime = policy.maxAge();
    this.directives = responseDirectives(h['cache-control']);
    this.etag = field(next, 'etag');
    this.lastModified = field(next, 'last-modified');
    this.initialAge = initialAge(rawHeaders, receivedAt);
    this.receivedAt = receivedAt;
  }

  /** Headers of a 304 made from this response. */
  notModifiedHeaders(): string[] {
    const out: string[] = [];
    for (let i = 0; i < this.headers.length; i += 2) if (NOT_MODIFIED_FIELDS.has(this.headers[i].toLowerCase())) out.push(this.headers[i], this.headers[i + 1]);
    return out;
  }

  /** Whether a client's own conditional GET/HEAD is answered with 304 (see notModified). */
  notModifiedFor(ifNoneMatch: string | undefined, ifModifiedSince: string | undefined): boolean {
    return notModified(this.status, this.etag, this.lastModified, ifNoneMatch, ifModifiedSince);
  }
}

/**
 * RFC 9110 §13.2.2 for a GET/HEAD whose selected response has `status`, `etag` and
 * `lastModified`: If-None-Match by weak comparison, else If-Modified-Since against Last-Modified.
 */
export function notModified(status: number, etag: string | undefined, lastModified: string | undefined, ifNoneMatch: string | undefined, ifModifiedSince: string | undefined): boolean {
  if (status !== 200) return false;
  if (ifNoneMatch !== undefined) {
    if (etag === undefined) return false;
    if (ifNoneMatch.trim() === '*') return true;
    const mine = weak(etag);
    for (const tag of ifNoneMatch.split(',')) if (weak(tag.trim()) === mine) return true;
    return false;
  }
  if (ifModifiedSince !== undefined && lastModified !== undefined) {
    // An If-Modified-Since that is not an HTTP-date is ignored (RFC 9110 §13.1.3).
    const since = parseHttpDate(ifModifiedSince.trim());
    const modified = parseHttpDate(lastModified.trim());
    return since !== undefined && modified !== undefined && modified <= since;
  }
  return false;
}

/** Whether two entity tags are the same by weak comparison (RFC 9110 §8.8.3.2). */
export function sameEtag(a: string, b: string): boolean {
  return weak(a.trim()) === weak(b.trim());
}

/** The Vary field names of a response; ["*"] for Vary: *. */
export function varyNames(vary: string | string[] | undefined): readonly string[] | undefined {
  if (vary === undefined) return undefined;
  const names = (Array.isArray(vary) ? vary.join(',') : vary).split(',').map((s) => s.trim().toLowerCase()).filter(Boolean);
  return names.length === 0 ? undefined : names;
}

/**
 * A request's values of the fields a response varies on, normalized (RFC 9111 §4.1: list
 * whitespace removed), one line per field; an absent field differs from an empty one.
 */
export function varyValues(names: readonly string[] | undefined, headers: IncomingHttpHeaders): string {
  if (names === undefined) return '';
  let out = '';
  for (const name of names) {
    const v = headers[name];
    out += v === undefined ? '\u0001\n' : `${(Array.isArray(v) ? v.join(',') : v).trim().replace(/\s*,\s*/g, ',')}\n`;
  }
  return out;
}

/** The first value of header `name` in a flat list (case-insensitive). */
function field(list: readonly string[], name: string): string | undefined {
  for (let i = 0; i < list.length; i += 2) if (list[i].length === name.length && list[i].toLowerCase() === name) return list[i + 1];
  return undefined;
}

/** max(Age, arrival − Date) of a response as it arrived, in seconds (RFC 9111 §4.2.3). */
function initialAge(raw: readonly string[], receivedAt: number): number {
  const date = parseHttpDate((field(raw, 'date') ?? '').trim());
  // In whole seconds, as the RFC's clock and Date's resolution are: a response dated this second is 0 s old.
  const apparent = date !== undefined ? Math.max(0, Math.floor(receivedAt / 1000) - date / 1000) : 0;
  return Math.max(apparent, parseAge(field(raw, 'age')) ?? 0);
}

function connectionListed(raw: readonly string[]): Set<string> | undefined {
  let listed: Set<string> | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i].toLowerCase() !== 'connection') continue;
    listed ??= new Set();
    for (const token of raw[i + 1].split(',')) listed.add(token.trim().toLowerCase());
  }
  return listed;
}

function storedHeaders(raw: readonly string[], length: number, status: number): string[] {
  const listed = connectionListed(raw);
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const n = raw[i].toLowerCase();
    if (NOT_STORED.has(n) || listed?.has(n) === true) continue;
    out.push(raw[i], raw[i + 1]);
  }
  // 204 and 304 carry no body and no Content-Length.
  if (status !== 204 && status !== 304) out.push('content-length', String(length));
  return out;
}

function weak(tag: string): string {
  return tag.startsWith('W/') ? tag.slice(2) : tag;
}
