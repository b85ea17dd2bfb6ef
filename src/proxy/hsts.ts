/**
 * Strict-Transport-Security per https listener (`listeners[].hsts`). ListenersService marks each
 * such listener's server with its value; whatever answers on a TLS connection (the proxy engine,
 * the health endpoint, the answer to a malformed request) reads it back from the socket's server.
 */
import type { IncomingMessage } from 'node:http';

export const kHsts = Symbol('proxymity.hsts');
export type HstsServer = { [kHsts]?: string };

/** The listener's HSTS value for a connection: none unless it is TLS (HTTP/2's socket proxy reaches the server too). */
export function hstsOfSocket(socket: unknown): string | undefined {
  const s = socket as { encrypted?: boolean; server?: HstsServer } | null | undefined;
  return s?.encrypted === true ? s.server?.[kHsts] : undefined;
}

/** The HSTS value for an answer to `req`, if its listener has one. */
export function hstsOf(req: IncomingMessage): string | undefined {
  return hstsOfSocket(req.socket);
}
