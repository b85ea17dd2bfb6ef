/**
 * The response headers as the cache judges them (not as they are forwarded): strict parsing
 * where http-cache-semantics is lenient, so freshness follows RFC 9111 and not Date.parse.
 *
 * - Expires: an HTTP-date (IMF-fixdate, RFC 850, asctime; RFC 9110 §5.6.7) or it means "already
 *   expired" (RFC 9111 §5.3), as does more than one Expires field. RFC 850's two-digit years
 *   more than 50 years ahead are in the past century.
 * - Date, Last-Modified: dropped when not an HTTP-date (the cache then uses its own clock, and
 *   no heuristic).
 * - Age: dropped unless delta-seconds (RFC 9111 §5.1: "7200.0" is not an Age).
 * - Cache-Control: directive names lowercased, the first of a repeated directive kept (the
 *   stricter reading, §4.2.1), malformed directives (spaces around "=") ignored.
 * - CDN-Cache-Control (RFC 9213), when present and valid, replaces Cache-Control and Expires:
 *   this cache is the CDN it targets.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { parseDirectives } from './cache-control.js';

const MONTHS: Readonly<Record<string, number>> = { Jan: 0, Feb: 1, Mar: 2, Apr: 3, May: 4, Jun: 5, Jul: 6, Aug: 7, Sep: 8, Oct: 9, Nov: 10, Dec: 11 };
const IMF = /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d{2}) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT$/;
const RFC850 = /^(Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (\d{2})-(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)-(\d{2}) (\d{2}):(\d{2}):(\d{2}) GMT$/;
const ASCTIME = /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ( \d|\d{2}) (\d{2}):(\d{2}):(\d{2}) (\d{4})$/;
const DELTA_SECONDS = /^\d+$/;

/** Milliseconds since the epoch of an HTTP-date (RFC 9110 §5.6.7), or undefined when it is not one. */
export function parseHttpDate(value: string, now = Date.now()): number | undefined {
  let y: number, mo: number, d: number, h: number, mi: number, s: number;
  let m = IMF.exec(value);
  if (m !== null) [y, mo, d, h, mi, s] = [Number(m[4]), MONTHS[m[3]], Number(m[2]), Number(m[5]), Number(m[6]), Number(m[7])];
  else if ((m = RFC850.exec(value)) !== null) {
    y = 2000 + Number(m[4]);
    // A two-digit year more than 50 years in the future is in the past century.
    if (y > new Date(now).getUTCFullYear() + 50) y -= 100;
    [mo, d, h, mi, s] = [MONTHS[m[3]], Number(m[2]), Number(m[5]), Number(m[6]), Number(m[7])];
  } else if ((m = ASCTIME.exec(value)) !== null) [y, mo, d, h, mi, s] = [Number(m[7]), MONTHS[m[2]], Number(m[3].trim()), Number(m[4]), Number(m[5]), Number(m[6])];
  else return undefined;
  if (h > 23 || mi > 59 || s > 60 || d < 1 || d > 31) return undefined;
  const t = Date.UTC(y, mo, d, h, mi, s);
  // Day 31 of a 30-day month rolls over: not a date.
  return new Date(t).getUTCDate() === d ? t : undefined;
}

/** A valid delta-seconds Age (of a list, the first member: RFC 9111 §5.1), or undefined. */
export function parseAge(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const first = value.split(',')[0].trim();
  return DELTA_SECONDS.test(first) ? Number(first) : undefined;
}

/** One member of a Structured Field Dictionary (RFC 8941 §3.2): key, then `=` and a bare item with parameters, or parameters only. */
const SF_MEMBER = /^([a-z*][a-z0-9_.*-]*)(?:=(-?\d{1,15}(?:\.\d{1,3})?|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"|[A-Za-z*][!#$%&'*+.^_`|~0-9A-Za-z:/-]*|:[A-Za-z0-9+/=]*:|\?[01]))?((?:;[ ]*[a-z*][a-z0-9_.*-]*(?:=(?:-?\d{1,15}(?:\.\d{1,3})?|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"|[A-Za-z*][!#$%&'*+.^_`|~0-9A-Za-z:/-]*|:[A-Za-z0-9+/=]*:|\?[01]))?)*)$/;
/** CDN-Cache-Control directives whose value must be an Integer (RFC 9213 §2.1). */
const SF_INTEGER_DIRECTIVES = new Set(['max-age', 's-maxage', 'stale-while-revalidate', 'stale-if-error']);

/**
 * A CDN-Cache-Control value as a Cache-Control string, or undefined when it is not a valid
 * Structured Field Dictionary or a known directive has the wrong type (the field is then
 * ignored, RFC 9213 §2.1).
 */
export function cdnCacheControl(value: string): string | undefined {
  const out: string[] = [];
  const seen = new Set<string>();
  for (const raw of value.split(',')) {
    const m = SF_MEMBER.exec(raw.trim());
    if (m === null) return undefined;
    const [, key, item] = m;
    if (SF_INTEGER_DIRECTIVES.has(key) && (item === undefined || !/^\d+$/.test(item))) return undefined;
    // A repeated key: the last one wins in a Dictionary.
    if (seen.has(key)) out.splice(out.findIndex((d) => d === key || d.startsWith(`${key}=`)), 1);
    seen.add(key);
    out.push(item === undefined || item === '?1' ? key : item === '?0' ? '' : `${key}=${item}`);
  }
  const directives = out.filter(Boolean);
  return directives.length === 0 ? undefined : directives.join(', ');
}

/** A Cache-Control value rewritten with lowercased names, first occurrences only, malformed directives left out. */
export function normalizeCacheControl(value: string | string[] | undefined): string | undefined {
  if (value === undefined) return undefined;
  const d = parseDirectives(value, true);
  if (d.size === 0) return '';
  let out = '';
  for (const [name, arg] of d) out += `${out === '' ? '' : ', '}${arg === '' ? name : `${name}=${arg}`}`;
  return out;
}

/** The response headers http-cache-semantics is given (see the file comment). */
export function cacheView(headers: IncomingHttpHeaders, rawHeaders: readonly string[]): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(headers)) if (v !== undefined) out[k] = v;
  const cdn = headers['cdn-cache-control'];
  const cdnCc = typeof cdn === 'string' ? cdnCacheControl(cdn) : undefined;
  if (cdnCc !== undefined) {
    out['cache-control'] = cdnCc;
    delete out.expires;
    delete out.pragma;
  } else {
    const cc = normalizeCacheControl(headers['cache-control']);
    if (cc === undefined) delete out['cache-control'];
    else out['cache-control'] = cc;
    if (headers.expires !== undefined) {
      let count = 0;
      for (let i = 0; i < rawHeaders.length; i += 2) if (rawHeaders[i].length === 7 && rawHeaders[i].toLowerCase() === 'expires') count++;
      const t = count === 1 ? parseHttpDate(headers.expires.trim()) : undefined;
      // http-cache-semantics reads an unparseable Expires as "already expired".
      out.expires = t === undefined ? 'invalid' : new Date(t).toUTCString();
    }
  }
  for (const name of ['date', 'last-modified'] as const) {
    const v = headers[name];
    if (v === undefined) continue;
    const t = parseHttpDate(v.trim());
    if (t === undefined) delete out[name];
    else out[name] = new Date(t).toUTCString();
  }
  if (headers.age !== undefined && parseAge(headers.age) === undefined) delete out.age;
  return out;
}
