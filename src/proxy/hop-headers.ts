/**
 * Header policy for forwarded messages (data plane: runs for every request; no regex built per
 * call, no copies of the header object).
 *
 * Hop-by-hop fields are removed as RFC 9110 §7.6.1 requires: Connection and every field it
 * names, Proxy-Connection, Keep-Alive, TE (except `TE: trailers`, which says the client accepts
 * trailers), Transfer-Encoding (responses; Node re-frames the body) and Upgrade. The request's
 * Transfer-Encoding is kept so that Node's client re-chunks a chunked upload instead of
 * guessing its framing.
 *
 * X-Forwarded-* and Forwarded from the client are kept only when the peer is a trusted proxy
 * (`proxy.trustedProxies`); otherwise they are replaced, so a client cannot spoof its address.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import type { BlockList } from 'node:net';
import { normalizeAddress, setClientAddress, setPeerAddress } from '../load-balancer/client-address.js';

export const VIA_TOKEN = 'proxymity';
/** Our Via entry for HTTP/1.1 (responses the cache makes carry it too). */
export const VIA_11 = `1.1 ${VIA_TOKEN}`;
const VIA_10 = `1.0 ${VIA_TOKEN}`;
const REQUEST_ID = 'x-request-id';
const COMMA_LIST = /\s*,\s*/;

export interface HeaderPolicy {
  /** Peers whose X-Forwarded-* / Forwarded are believed; undefined = nobody. */
  readonly trusted: BlockList | undefined;
  /** Also send RFC 7239 `Forwarded`. */
  readonly forwarded: boolean;
}

export const DEFAULT_POLICY: HeaderPolicy = { trusted: undefined, forwarded: false };

function isTrusted(trusted: BlockList, address: string): boolean {
  return trusted.check(address, address.includes(':') ? 'ipv6' : 'ipv4');
}

/**
 * Rewrites the request's own header object for the upstream hop and returns the request id.
 * Called once per request, before the first attempt, so retries do not append twice.
 */
export function prepareRequestHeaders(req: IncomingMessage, proto: string, policy: HeaderPolicy = DEFAULT_POLICY): string {
  const h = req.headers;
  const connection = h.connection;
  if (connection !== undefined) {
    if (connection.length > 10 || (connection.toLowerCase() !== 'keep-alive' && connection.toLowerCase() !== 'close')) {
      removeConnectionListed(h, connection);
    }
    delete h.connection;
  }
  if (h['keep-alive'] !== undefined) delete h['keep-alive'];
  if (h['proxy-connection'] !== undefined) delete h['proxy-connection'];
  const te = h.te as string | undefined;
  if (te !== undefined && te.toLowerCase() !== 'trailers') delete h.te;
  if (h.upgrade !== undefined) delete h.upgrade;

  const peer = normalizeAddress(req.socket.remoteAddress) ?? '';
  const trusted = policy.trusted !== undefined && peer !== '' && isTrusted(policy.trusted, peer);
  const xff = h['x-forwarded-for'] as string | undefined;
  let client = peer;
  if (trusted) {
    if (xff !== undefined) {
      h['x-forwarded-for'] = `${xff}, ${peer}`;
      client = nearestUntrusted(xff, policy.trusted as BlockList) ?? peer;
    } else h['x-forwarded-for'] = peer;
    if (h['x-forwarded-proto'] === undefined) h['x-forwarded-proto'] = proto;
    if (h['x-forwarded-host'] === undefined && h.host !== undefined) h['x-forwarded-host'] = h.host;
  } else {
    h['x-forwarded-for'] = peer;
    h['x-forwarded-proto'] = proto;
    if (h.host !== undefined) h['x-forwarded-host'] = h.host;
    else if (h['x-forwarded-host'] !== undefined) delete h['x-forwarded-host'];
    if (h.forwarded !== undefined) delete h.forwarded;
  }
  setClientAddress(req, client);
  if (req.httpVersionMajor === 2) setPeerAddress(req, peer);
  if (policy.forwarded) {
    const element = `for=${forwardedNode(peer)};proto=${proto}${h.host !== undefined ? `;host=${quoteIfNeeded(h.host)}` : ''}`;
    h.forwarded = trusted && h.forwarded !== undefined ? `${h.forwarded}, ${element}` : element;
  }
  const via = req.httpVersion === '1.0' ? VIA_10 : VIA_11;
  h.via = h.via === undefined ? via : `${h.via}, ${via}`;

  let id = h[REQUEST_ID];
  if (typeof id !== 'string' || !isValidRequestId(id)) {
    id = randomUUID();
    h[REQUEST_ID] = id;
  }
  return id;
}

/**
 * A client's X-Request-Id is kept when it is 1-200 visible ASCII characters other than quote
 * and backslash (so it can go into logs and headers as is); otherwise a UUID replaces it.
 */
export function isValidRequestId(id: string): boolean {
  const n = id.length;
  if (n === 0 || n > 200) return false;
  for (let i = 0; i < n; i++) {
    const c = id.charCodeAt(i);
    if (c <= 0x20 || c >= 0x7f || c === 0x22 || c === 0x5c) return false;
  }
  return true;
}

/** Walks X-Forwarded-For from the right: the first address that is not a trusted proxy. */
function nearestUntrusted(xff: string, trusted: BlockList): string | undefined {
  const hops = xff.split(',');
  for (let i = hops.length - 1; i >= 0; i--) {
    const a = normalizeAddress(hops[i].trim());
    if (a === undefined || a === '') continue;
    try {
      if (!isTrusted(trusted, a)) return a;
    } catch {
      return undefined; // not an IP address: stop believing the chain here
    }
  }
  return normalizeAddress(hops[0]?.trim());
}

/** RFC 7239 §6: IPv6 addresses are bracketed and quoted. */
function forwardedNode(address: string): string {
  return address.includes(':') ? `"[${address}]"` : address;
}

function quoteIfNeeded(value: string): string {
  return /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/.test(value) ? value : `"${value.replace(/["\\]/g, '\\$&')}"`;
}

function removeConnectionListed(h: IncomingHttpHeaders, connection: string): void {
  for (const token of connection.toLowerCase().split(COMMA_LIST)) {
    // Never let a client strip the fields the proxy itself sets.
    if (token && token !== 'keep-alive' && token !== 'close' && !PROTECTED.has(token)) delete h[token];
  }
}

const PROTECTED = new Set(['host', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'forwarded', 'via', REQUEST_ID, 'content-length', 'transfer-encoding']);
/**
 * The upstream response's raw header list minus hop-by-hop fields, plus Via and the request id
 * (unless the backend echoed it). One array is allocated; `res.writeHead` takes it as is.
 */
export function buildResponseHeaders(raw: readonly string[], requestId: string, httpVersion: string): string[] {
  const out: string[] = [];
  let sawRequestId = false;
  let connectionListed: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i];
    const len = name.length;
    // Only names of these lengths can be hop-by-hop; skip the lowercase for everything else.
    if (len === 10 || len === 17 || len === 16 || len === 2 || len === 7 || len === 12) {
      const lower = name.toLowerCase();
      if (lower === 'connection') {
        const v = raw[i + 1].toLowerCase();
        if (v !== 'keep-alive' && v !== 'close') connectionListed = connectionListed ? `${connectionListed},${v}` : v;
        continue;
      }
      if (lower === 'keep-alive' || lower === 'transfer-encoding' || lower === 'proxy-connection' || lower === 'te' || lower === 'upgrade') continue;
      if (lower === REQUEST_ID) sawRequestId = true;
    }
    out.push(name, raw[i + 1]);
  }
  if (connectionListed !== undefined) return stripListed(out, connectionListed, requestId, sawRequestId, httpVersion);
  out.push('via', httpVersion === '1.0' ? VIA_10 : VIA_11);
  if (!sawRequestId) out.push(REQUEST_ID, requestId);
  return out;
}

function stripListed(headers: string[], listed: string, requestId: string, sawRequestId: boolean, httpVersion: string): string[] {
  const drop = new Set(listed.split(COMMA_LIST).filter(Boolean));
  const out: string[] = [];
  for (let i = 0; i < headers.length; i += 2) {
    if (!drop.has(headers[i].toLowerCase())) out.push(headers[i], headers[i + 1]);
  }
  out.push('via', httpVersion === '1.0' ? VIA_10 : VIA_11);
  if (!sawRequestId || drop.has(REQUEST_ID)) out.push(REQUEST_ID, requestId);
  return out;
}
