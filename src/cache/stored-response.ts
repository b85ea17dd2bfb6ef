/**
 * One stored response (a variant of one cache key): the header list as it will be served, the
 * body in one exactly-sized buffer, and the http-cache-semantics policy that says how fresh it is.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type CachePolicy from 'http-cache-semantics';
import { responseDirectives, type ResponseDirectives } from './cache-control.js';

/** What a stored response costs besides its body and headers (objects, map slots). */
const ENTRY_OVERHEAD = 256;

/**
 * Never stored: connection-level fields (RFC 9110 §7.6.1), those the cache sets itself when it
 * serves (Age, Content-Length), and the request id of the request that filled the entry.
 */
const NOT_STORED = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'proxy-authenticate', 'age', 'content-length', 'x-request-id']);
/** Not taken from a 304 into the stored headers: they describe the stored body (RFC 9111 §3.2). */
const NOT_UPDATED = new Set([...NOT_STORED, 'content-encoding', 'content-range', 'content-type']);
/** Sent with a 304 made from a stored response (RFC 9110 §15.4.5). */
const NOT_MODIFIED_FIELDS = new Set(['cache-control', 'content-location', 'date', 'etag', 'expires', 'vary', 'last-modified']);

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

  constructor(
    /** The primary cache key: host and request target. */
    readonly key: string,
    readonly status: number,
    readonly statusMessage: string,
    rawHeaders: readonly string[],
    readonly body: Buffer,
    policy: CachePolicy,
    /** The request's values of the Vary fields, normalized (see varyValues). */
    readonly varyKey: string,
    /** "http" or "https" as the client used it: kept apart, like nginx's default key ($scheme$host$uri). */
    readonly scheme: string,
  ) {
    this.headers = storedHeaders(rawHeaders, body.length, status);
    // RFC 9110 §6.6.1: a cache that receives a response without Date adds the time it got it.
    if (!this.headers.some((_, i) => i % 2 === 0 && this.headers[i].toLowerCase() === 'date')) this.headers.push('date', new Date(policy.date()).toUTCString());
    this.policy = policy;
    const h = policy.responseHeaders() as IncomingHttpHeaders;
    this.varyNames = varyNames(h.vary);
    this.lifetime = policy.maxAge();
    this.directives = responseDirectives(h['cache-control']);
    this.etag = str(h.etag);
    this.lastModified = str(h['last-modified']);
    let size = ENTRY_OVERHEAD + key.length * 2 + varyKey.length * 2 + body.length;
    for (const s of this.headers) size += s.length;
    this.size = size;
  }

  /** Seconds since the origin generated it (RFC 9111 §4.2.3, as http-cache-semantics computes it). */
  age(): number {
    return this.policy.age();
  }

  /** A 304 answered our conditional request: take its headers and the policy that follows from it (RFC 9111 §4.3.4). */
  revalidated(policy: CachePolicy, rawHeaders: readonly string[]): void {
    const replaced = new Set<string>();
    for (let i = 0; i < rawHeaders.length; i += 2) {
      const n = rawHeaders[i].toLowerCase();
      if (!NOT_UPDATED.has(n)) replaced.add(n);
    }
    const next: string[] = [];
    for (let i = 0; i < this.headers.length; i += 2) if (!replaced.has(this.headers[i].toLowerCase())) next.push(this.headers[i], this.headers[i + 1]);
    for (let i = 0; i < rawHeaders.length; i += 2) if (replaced.has(rawHeaders[i].toLowerCase())) next.push(rawHeaders[i], rawHeaders[i + 1]);
    this.headers = next;
    this.policy = policy;
    const h = policy.responseHeaders() as IncomingHttpHeaders;
    this.lifetime = policy.maxAge();
    this.directives = responseDirectives(h['cache-control']);
    this.etag = str(h.etag) ?? this.etag;
    this.lastModified = str(h['last-modified']) ?? this.lastModified;
  }

  /** Headers of a 304 made from this response. */
  notModifiedHeaders(): string[] {
    const out: string[] = [];
    for (let i = 0; i < this.headers.length; i += 2) if (NOT_MODIFIED_FIELDS.has(this.headers[i].toLowerCase())) out.push(this.headers[i], this.headers[i + 1]);
    return out;
  }

  /**
   * Whether a client's own conditional GET/HEAD is answered with 304 (RFC 9110 §13.2.2):
   * If-None-Match by weak comparison, else If-Modified-Since against Last-Modified.
   */
  notModifiedFor(ifNoneMatch: string | undefined, ifModifiedSince: string | undefined): boolean {
    if (this.status !== 200) return false;
    if (ifNoneMatch !== undefined) {
      const etag = this.etag;
      if (etag === undefined) return false;
      if (ifNoneMatch.trim() === '*') return true;
      const mine = weak(etag);
      for (const tag of ifNoneMatch.split(',')) if (weak(tag.trim()) === mine) return true;
      return false;
    }
    if (ifModifiedSince !== undefined && this.lastModified !== undefined) {
      const since = Date.parse(ifModifiedSince);
      const modified = Date.parse(this.lastModified);
      return Number.isFinite(since) && Number.isFinite(modified) && modified <= since;
    }
    return false;
  }
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

function storedHeaders(raw: readonly string[], length: number, status: number): string[] {
  let listed: Set<string> | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i].toLowerCase() !== 'connection') continue;
    listed ??= new Set();
    for (const token of raw[i + 1].split(',')) listed.add(token.trim().toLowerCase());
  }
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

function str(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}
