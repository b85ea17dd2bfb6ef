/**
 * Cache-Control directives (RFC 9111 §5.2): the few a shared cache acts on beyond what
 * http-cache-semantics evaluates for storing and freshness. Parsed once per stored response and
 * once per lookup that carries the header.
 */

/** Request directives (RFC 9111 §5.2.1) that decide whether a stored response may be used. */
export interface RequestDirectives {
  readonly noCache: boolean;
  readonly noStore: boolean;
  /** Seconds; -1 when absent. */
  readonly maxAge: number;
  /** Seconds; -1 when absent, Infinity for a bare `max-stale`. */
  readonly maxStale: number;
  readonly minFresh: number;
  readonly onlyIfCached: boolean;
}

export const NO_REQUEST_DIRECTIVES: RequestDirectives = Object.freeze({ noCache: false, noStore: false, maxAge: -1, maxStale: -1, minFresh: -1, onlyIfCached: false });

/** Response directives that decide how a stale response may be used (RFC 9111 §5.2.2, RFC 5861). */
export interface ResponseDirectives {
  /** Once stale it must be validated first: must-revalidate, proxy-revalidate, s-maxage (§5.2.2.10) or no-cache. */
  readonly mustRevalidate: boolean;
  /** stale-while-revalidate seconds (0 when absent). */
  readonly staleWhileRevalidate: number;
  /** stale-if-error seconds (0 when absent). */
  readonly staleIfError: number;
}

/** A directive: a token, optionally `=` and a token or a quoted string, no whitespace around `=` (RFC 9111 §5.2). */
const DIRECTIVE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?:=("(?:[^"\\]|\\.)*"|[!#$%&'*+.^_`|~0-9A-Za-z-]+))?$/;

/**
 * Splits a Cache-Control value into lowercased directive names and their values (unquoted, or
 * as written when `raw`). Commas inside quoted strings do not split; malformed directives are
 * left out; of a repeated directive the first is kept (RFC 9111 §4.2.1 calls repeats invalid;
 * the first is the stricter reading in practice, and what nginx uses).
 */
export function parseDirectives(value: string | string[] | undefined, raw = false): Map<string, string> {
  const out = new Map<string, string>();
  if (value === undefined) return out;
  const text = Array.isArray(value) ? value.join(',') : value;
  let start = 0;
  let quoted = false;
  for (let i = 0; i <= text.length; i++) {
    const c = text.charCodeAt(i);
    if (i < text.length) {
      if (c === 34 /* " */) quoted = !quoted;
      else if (c === 92 /* \ */ && quoted) i++;
      if (quoted || c !== 44 /* , */) continue;
    }
    const m = DIRECTIVE.exec(text.slice(start, i).trim());
    start = i + 1;
    if (m === null) continue;
    const name = m[1].toLowerCase();
    let arg = m[2] ?? '';
    if (!raw && arg.startsWith('"')) arg = arg.slice(1, -1).replace(/\\(.)/g, '$1');
    if (!out.has(name)) out.set(name, arg);
  }
  return out;
}

/** Delta-seconds (RFC 9111 §1.2.2); -1 when absent or not a number. */
function seconds(d: Map<string, string>, name: string): number {
  const v = d.get(name);
  if (v === undefined || !/^\d+$/.test(v)) return -1;
  return Number(v);
}

export function requestDirectives(headers: { 'cache-control'?: string | string[]; pragma?: string | string[] }): RequestDirectives {
  const cc = headers['cache-control'];
  if (cc === undefined) {
    // RFC 9111 §5.4: Pragma: no-cache counts only when there is no Cache-Control.
    const pragma = headers.pragma;
    return pragma !== undefined && /no-cache/i.test(String(pragma)) ? { ...NO_REQUEST_DIRECTIVES, noCache: true } : NO_REQUEST_DIRECTIVES;
  }
  const d = parseDirectives(cc);
  const maxStale = d.get('max-stale');
  return {
    noCache: d.has('no-cache'),
    noStore: d.has('no-store'),
    maxAge: seconds(d, 'max-age'),
    maxStale: maxStale === undefined ? -1 : maxStale === '' ? Infinity : seconds(d, 'max-stale'),
    minFresh: seconds(d, 'min-fresh'),
    onlyIfCached: d.has('only-if-cached'),
  };
}

export function responseDirectives(cacheControl: string | string[] | undefined): ResponseDirectives {
  const d = parseDirectives(cacheControl);
  return {
    mustRevalidate: d.has('must-revalidate') || d.has('proxy-revalidate') || d.has('s-maxage') || d.has('no-cache'),
    staleWhileRevalidate: Math.max(0, seconds(d, 'stale-while-revalidate')),
    staleIfError: Math.max(0, seconds(d, 'stale-if-error')),
  };
}
