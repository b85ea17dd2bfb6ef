import type { IncomingMessage, ServerResponse } from 'node:http';
import type { LoggerService } from '@nestjs/common';
import { hstsOf } from './hsts.js';

/**
 * The one mapping from a failure to what the client gets. Codes are stable snake_case
 * identifiers and, where RFC 9209 defines one, are its proxy error types; they appear in the
 * `Proxy-Status` response header, the error body, logs and the `proxy_errors_total` metric.
 * `termination` is the access log's name for how such a request ended.
 */
export const PROXY_ERRORS = {
  /** No route matches the request. */
  destination_not_found: { status: 404, termination: 'no_route', text: 'no route matches this request' },
  /** No eligible backend (all unhealthy or disabled). */
  destination_unavailable: { status: 503, termination: 'no_healthy_backend', text: 'no backend is available (all unhealthy, disabled or at their connection limit)' },
  connection_refused: { status: 502, termination: 'upstream_connect_failure', text: 'the backend refused the connection' },
  connection_terminated: { status: 502, termination: 'upstream_reset', text: 'the backend closed the connection before responding' },
  connection_timeout: { status: 504, termination: 'upstream_connect_timeout', text: 'the backend did not accept the connection in time' },
  http_response_timeout: { status: 504, termination: 'upstream_timeout', text: 'the backend did not respond in time' },
  connection_read_timeout: { status: 504, termination: 'upstream_timeout', text: 'the backend went silent in the middle of its response' },
  dns_error: { status: 502, termination: 'upstream_connect_failure', text: 'the backend host name could not be resolved' },
  destination_ip_unroutable: { status: 502, termination: 'upstream_connect_failure', text: 'the backend address is unreachable' },
  http_protocol_error: { status: 502, termination: 'upstream_protocol_error', text: 'the backend sent an invalid HTTP response' },
  tls_certificate_error: { status: 502, termination: 'upstream_connect_failure', text: 'the backend TLS certificate was not accepted' },
  tls_protocol_error: { status: 502, termination: 'upstream_connect_failure', text: 'the TLS handshake with the backend failed' },
  http_request_error: { status: 400, termination: 'bad_request', text: 'the request target is not valid' },
  uri_too_long: { status: 414, termination: 'uri_too_long', text: 'the request target is longer than the proxy accepts' },
  /** An Upgrade request with a chunked body: Node hands it over unparsed, and it is not forwarded (not an RFC 9209 type). */
  upgrade_body_not_supported: { status: 400, termination: 'bad_request', text: 'an Upgrade request may carry a Content-Length body, not a chunked one' },
  /** Two Host fields, or a Host with userinfo (RFC 9112 §3.2, RFC 9110 §7.2; not an RFC 9209 type). */
  invalid_host: { status: 400, termination: 'bad_request', text: 'the request must have exactly one Host field, a host and an optional port' },
  /** An `HTTP/2.0` (or later) request line on an HTTP/1 connection (505; not an RFC 9209 type). */
  http_version_not_supported: { status: 505, termination: 'bad_request', text: 'this connection speaks HTTP/1.0 and HTTP/1.1 (HTTP/2 is served on TLS listeners with http2)' },
  request_too_large: { status: 413, termination: 'request_too_large', text: 'the request body is larger than the proxy accepts' },
  /** Rate limited (429; not an RFC 9209 type). */
  too_many_requests: { status: 429, termination: 'rate_limited', text: 'too many requests; see Retry-After' },
  /** The rate-limit store cannot answer and onStoreError is "deny". */
  rate_limit_unavailable: { status: 503, termination: 'rate_limit_store_error', text: 'the rate-limit store is unavailable' },
  /** A request with `Cache-Control: only-if-cached` and nothing usable stored (RFC 9111 §5.2.1.7). */
  only_if_cached: { status: 504, termination: 'cache_only_if_cached', text: 'only-if-cached: no stored response can be used' },
  /** The client stopped sending its request body, or stopped taking the response (proxy.sendTimeout). */
  client_timeout: { status: 408, termination: 'client_body_timeout', text: 'the client sent none of its request body for upstream.timeout' },
  proxy_internal_error: { status: 502, termination: 'internal_error', text: 'the request to the backend failed' },
} as const;

/** The access log's `termination` when the client went away first. */
export const CLIENT_CLOSED = 'client_closed';
/** The access log's `termination` when a failure came after every allowed try was used. */
export const RETRY_LIMIT_EXCEEDED = 'retry_limit_exceeded';
/** The access log's `termination` when the client took none of the response for proxy.sendTimeout. */
export const CLIENT_SEND_TIMEOUT = 'client_send_timeout';

export type ProxyErrorCode = keyof typeof PROXY_ERRORS;

/** Codes that mean the request never reached the backend, so any method may be retried. */
const NOT_SENT: ReadonlySet<ProxyErrorCode> = new Set<ProxyErrorCode>([
  'connection_refused', 'connection_timeout', 'dns_error', 'destination_ip_unroutable', 'tls_certificate_error', 'tls_protocol_error',
]);

/** Codes that count against the backend's health at once (passive check). */
const PASSIVE_FAILURE: ReadonlySet<ProxyErrorCode> = new Set<ProxyErrorCode>([
  'connection_refused', 'connection_terminated', 'connection_timeout', 'dns_error', 'destination_ip_unroutable', 'http_protocol_error', 'tls_protocol_error',
]);

export const isNotSent = (code: ProxyErrorCode): boolean => NOT_SENT.has(code);
export const isPassiveFailure = (code: ProxyErrorCode): boolean => PASSIVE_FAILURE.has(code);

/** Error codes set by the engine for its own timeouts. */
export const CONNECT_TIMEOUT = 'PROXYMITY_CONNECT_TIMEOUT';
export const READ_TIMEOUT = 'PROXYMITY_READ_TIMEOUT';
export const BODY_IDLE_TIMEOUT = 'PROXYMITY_BODY_IDLE_TIMEOUT';
export const TOTAL_TIMEOUT = 'PROXYMITY_TOTAL_TIMEOUT';
export const CLIENT_BODY_TIMEOUT = 'PROXYMITY_CLIENT_BODY_TIMEOUT';

const TLS_CERT = /CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|ALTNAME/;

export function classifyUpstreamError(err: NodeJS.ErrnoException): ProxyErrorCode {
  const code = err.code ?? '';
  switch (code) {
    case 'ECONNREFUSED':
      return 'connection_refused';
    case CONNECT_TIMEOUT:
      return 'connection_timeout';
    case READ_TIMEOUT:
    case TOTAL_TIMEOUT:
      return 'http_response_timeout';
    case BODY_IDLE_TIMEOUT:
      return 'connection_read_timeout';
    case CLIENT_BODY_TIMEOUT:
      return 'client_timeout';
    case 'ECONNRESET':
    case 'EPIPE':
    case 'ECONNABORTED':
      return 'connection_terminated';
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EAI_FAIL':
    case 'EAI_NONAME':
      return 'dns_error';
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'EADDRNOTAVAIL':
      return 'destination_ip_unroutable';
    case 'ETIMEDOUT':
      // The kernel's timeout on an established connection (our own connect timeout fires long
      // before the kernel's SYN timeout), so the request may have been sent.
      return 'connection_terminated';
  }
  if (code.startsWith('HPE_')) return 'http_protocol_error';
  // The backend's answer is valid HTTP/1.1 but cannot be sent over HTTP/2 (not a backend fault).
  if (code === 'ERR_PROXYMITY_H2_HEADER') return 'proxy_internal_error';
  if (TLS_CERT.test(code)) return 'tls_certificate_error';
  if (code.startsWith('ERR_SSL') || code === 'EPROTO' || code.startsWith('ERR_TLS')) return 'tls_protocol_error';
  return 'proxy_internal_error';
}

export const REASON: Readonly<Record<number, string>> = { 400: 'Bad Request', 408: 'Request Timeout', 404: 'Not Found', 429: 'Too Many Requests', 413: 'Content Too Large', 414: 'URI Too Long', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout' };

/** Precomputed error bodies: `502 Bad Gateway: the backend refused the connection (connection_refused)`. */
export const ERROR_BODIES: Readonly<Record<ProxyErrorCode, string>> = Object.fromEntries(
  Object.entries(PROXY_ERRORS).map(([code, e]) => [code, `${e.status} ${REASON[e.status] ?? ''}: ${e.text} (${code})\n`]),
) as Record<ProxyErrorCode, string>;

const INTERNAL_ERROR_BODY = '500 Internal Server Error: proxy_internal_error\n';

/**
 * Ends a response that has begun without completing it, so the client cannot take it for whole:
 * HTTP/1.1 closes the connection; HTTP/2 resets the stream with INTERNAL_ERROR (a destroy
 * without an error would send NO_ERROR, which clients read as a normal end).
 */
export function cut(res: ServerResponse, why: string): void {
  if ((res.req as IncomingMessage | undefined)?.httpVersionMajor === 2) res.destroy(new Error(why));
  else res.destroy();
}

/**
 * A bug, not an outcome (an exception out of the request path): logs it with its stack, and
 * answers this one request 500, with `Connection: close` over HTTP/1.1 (the connection's state
 * is unknown) and the listener's HSTS; once the response has begun, cuts it instead, so the
 * client cannot take a truncated body for a whole one. The process goes on serving.
 */
export function answerInternalError(req: IncomingMessage, res: ServerResponse, err: unknown, logger: LoggerService): void {
  logger.error(`unexpected error handling ${req.method} ${req.url?.slice(0, 200)}: ${(err as Error | undefined)?.stack ?? String(err)}`);
  if (res.headersSent) {
    cut(res, 'proxy_internal_error');
    return;
  }
  // Whatever was set for the answer that failed (a length, a type) does not describe this one.
  for (const name of res.getHeaderNames()) res.removeHeader(name);
  const headers = ['content-type', 'text/plain; charset=utf-8', 'content-length', String(INTERNAL_ERROR_BODY.length)];
  // HTTP/2 has no connection-specific fields (Node drops them, with a process warning); the stream ends with the response.
  if (req.httpVersionMajor < 2) headers.push('connection', 'close');
  const hsts = hstsOf(req);
  if (hsts !== undefined) headers.push('strict-transport-security', hsts);
  try {
    res.writeHead(500, headers);
    res.end(INTERNAL_ERROR_BODY);
  } catch {
    cut(res, 'proxy_internal_error');
  }
}
