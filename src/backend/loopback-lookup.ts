/**
 * DNS lookup for upstream connections. "localhost" (and *.localhost) always means both
 * loopback addresses, as RFC 6761 §6.3 says, whatever /etc/hosts lists: many systems map it to
 * 127.0.0.1 only, so a backend listening on ::1 would be unreachable through the seed's
 * `http://localhost:8081` URLs. With both addresses, Node's happy-eyeballs connect
 * (`autoSelectFamily`) reaches whichever one the backend listens on; a refused address costs
 * one fast failed connect, only when a new connection is opened.
 */
import dns, { type LookupAddress, type LookupAllOptions, type LookupOneOptions } from 'node:dns';

const LOOPBACK: readonly LookupAddress[] = Object.freeze([
  { address: '127.0.0.1', family: 4 },
  { address: '::1', family: 6 },
]);

type Callback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void;

export function isLocalhost(hostname: string): boolean {
  const h = hostname.toLowerCase();
  return h === 'localhost' || h.endsWith('.localhost');
}

export function upstreamLookup(hostname: string, options: LookupOneOptions | LookupAllOptions | number, callback: Callback): void {
  const opts = typeof options === 'number' ? { family: options } : options;
  if (isLocalhost(hostname)) {
    const family = opts.family === 'IPv4' ? 4 : opts.family === 'IPv6' ? 6 : opts.family;
    const candidates = family === 4 || family === 6 ? LOOPBACK.filter((a) => a.family === family) : LOOPBACK;
    if ((opts as LookupAllOptions).all) process.nextTick(callback, null, candidates.map((a) => ({ ...a })));
    else process.nextTick(callback, null, candidates[0].address, candidates[0].family);
    return;
  }
  dns.lookup(hostname, opts as dns.LookupOptions, callback as never);
}
