/**
 * Header policy for forwarded messages (data plane: runs for every request; no regex built per
 * call, no copies of the header object).
 *
 * Hop-by-hop fields are removed as RFC 9110 §7.6.1 requires: Connection and every field it
 * names, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding (responses; Node re-frames the
 * body) and Upgrade. The request's Transfer-Encoding is kept so that Node's client re-chunks a
 * chunked upload instead of guessing its framing.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';

export const VIA_TOKEN = 'proxymity';
const VIA_11 = `1.1 ${VIA_TOKEN}`;
const VIA_10 = `1.0 ${VIA_TOKEN}`;
const REQUEST_ID = 'x-request-id';
const COMMA_LIST = /\s*,\s*/;

/**
 * Rewrites the request's own header object for the upstream hop and returns the request id.
 * Called once per request, before the first attempt, so retries do not append twice.
 */
export function prepareRequestHeaders(req: IncomingMessage, proto: string): string {
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
  if (h.te !== undefined) delete h.te;
  if (h.upgrade !== undefined) delete h.upgrade;

  const ip = req.socket.remoteAddress;
  if (ip !== undefined) {
    const xff = h['x-forwarded-for'];
    h['x-forwarded-for'] = xff === undefined ? ip : `${xff}, ${ip}`;
  }
  h['x-forwarded-proto'] = proto;
  if (h.host !== undefined) h['x-forwarded-host'] = h.host;
  const via = req.httpVersion === '1.0' ? VIA_10 : VIA_11;
  h.via = h.via === undefined ? via : `${h.via}, ${via}`;

  let id = h[REQUEST_ID];
  if (typeof id !== 'string' || id.length === 0 || id.length > 200) {
    id = randomUUID();
    h[REQUEST_ID] = id;
  }
  return id;
}

function removeConnectionListed(h: IncomingHttpHeaders, connection: string): void {
  for (const token of connection.toLowerCase().split(COMMA_LIST)) {
    // Never let a client strip the fields the proxy itself sets.
    if (token && token !== 'keep-alive' && token !== 'close' && !PROTECTED.has(token)) delete h[token];
  }
}

const PROTECTED = new Set(['host', 'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'via', REQUEST_ID, 'content-length', 'transfer-encoding']);

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
