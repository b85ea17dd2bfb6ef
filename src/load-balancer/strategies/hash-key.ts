/**
 * What a hash strategy hashes, compiled once from `loadBalancer.hash.key` into a function that
 * reads it from the request without building objects (no URL, no cookie map).
 */
import type { IncomingMessage } from 'node:http';
import { clientAddress } from '../client-address.js';

export type KeyReader = (req: IncomingMessage) => string | undefined;

export function compileKey(spec: string): KeyReader {
  if (spec === 'client-ip') return clientAddress;
  if (spec === 'path') {
    return (req) => {
      const url = req.url;
      if (url === undefined) return undefined;
      const q = url.indexOf('?');
      return q < 0 ? url : url.slice(0, q);
    };
  }
  const colon = spec.indexOf(':');
  const kind = spec.slice(0, colon);
  const name = spec.slice(colon + 1);
  if (kind === 'header') {
    const lower = name.toLowerCase();
    return (req) => {
      const v = req.headers?.[lower];
      return Array.isArray(v) ? v.join(',') : v || undefined;
    };
  }
  if (kind === 'cookie') return (req) => cookieValue(req.headers?.cookie, name);
  if (kind === 'query') return (req) => queryValue(req.url, name);
  throw new Error(`unknown hash key "${spec}"`);
}

/** The value of cookie `name` in a Cookie header, or undefined. */
export function cookieValue(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  let i = 0;
  while (i < header.length) {
    while (header.charCodeAt(i) === 32) i++;
    const end = header.indexOf(';', i);
    const stop = end < 0 ? header.length : end;
    if (header.startsWith(name, i) && header.charCodeAt(i + name.length) === 61 /* = */) {
      const v = header.slice(i + name.length + 1, stop).trim();
      return v.length > 0 ? v : undefined;
    }
    i = stop + 1;
  }
  return undefined;
}

function queryValue(url: string | undefined, name: string): string | undefined {
  if (!url) return undefined;
  let i = url.indexOf('?');
  if (i < 0) return undefined;
  i++;
  while (i < url.length) {
    const end = url.indexOf('&', i);
    const stop = end < 0 ? url.length : end;
    if (url.startsWith(name, i) && url.charCodeAt(i + name.length) === 61) {
      const v = url.slice(i + name.length + 1, stop);
      return v.length > 0 ? v : undefined;
    }
    i = stop + 1;
  }
  return undefined;
}

/** MurmurHash3 (x86, 32-bit) of a string's UTF-16 code units: fast, well mixed. */
export function murmur3(key: string, seed = 0): number {
  let h = seed >>> 0;
  const len = key.length;
  let i = 0;
  for (; i + 1 < len; i += 2) {
    let k = (key.charCodeAt(i) & 0xffff) | ((key.charCodeAt(i + 1) & 0xffff) << 16);
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  if (i < len) {
    let k = key.charCodeAt(i) & 0xffff;
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
  }
  h ^= len;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
