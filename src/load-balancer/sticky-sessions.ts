/**
 * Sticky sessions on top of any strategy. The cookie value is an HMAC-SHA256 of the backend's
 * name under a secret, so it reveals no internal address and cannot be forged for a backend;
 * every value and Set-Cookie line is computed once at start-up. A missing, forged or no longer
 * eligible value means the strategy picks normally and the cookie is issued again.
 */
import { createHmac, randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Backend } from '../backend/backend.js';
import { cookieValue } from './strategies/hash-key.js';

/** `loadBalancer.sticky` as validated by the config schema (durations in ms). */
export interface StickyConfig {
  readonly cookie: string;
  readonly secret?: string;
  readonly maxAge?: number;
  readonly path: string;
  readonly domain?: string;
  readonly secure: boolean;
  readonly httpOnly: boolean;
  readonly sameSite: 'Strict' | 'Lax' | 'None';
}

export class StickySessions {
  private readonly byValue = new Map<string, Backend>();
  private readonly valueBySlot: string[] = [];
  private readonly setCookieBySlot: string[] = [];
  readonly cookieName: string;

  constructor(cfg: StickyConfig, backends: readonly Backend[], secret: string = cfg.secret ?? randomBytes(32).toString('hex')) {
    this.cookieName = cfg.cookie;
    const attrs = [`Path=${cfg.path}`];
    if (cfg.domain) attrs.push(`Domain=${cfg.domain}`);
    if (cfg.maxAge !== undefined) attrs.push(`Max-Age=${Math.floor(cfg.maxAge / 1000)}`);
    if (cfg.secure || cfg.sameSite === 'None') attrs.push('Secure');
    if (cfg.httpOnly) attrs.push('HttpOnly');
    attrs.push(`SameSite=${cfg.sameSite}`);
    for (const b of backends) {
      const value = stickyValue(secret, b.id);
      this.byValue.set(value, b);
      this.valueBySlot[b.slot] = value;
      this.setCookieBySlot[b.slot] = `${cfg.cookie}=${value}; ${attrs.join('; ')}`;
    }
  }

  /** The cookie value the client sent, if any (not yet verified). */
  read(req: IncomingMessage): string | undefined {
    return cookieValue(req.headers.cookie, this.cookieName);
  }

  /** The backend a value stands for, or undefined for a forged or unknown value. */
  resolve(value: string | undefined): Backend | undefined {
    return value === undefined ? undefined : this.byValue.get(value);
  }

  /** The Set-Cookie line to send when the client's value does not already name `backend`. */
  setCookie(sent: string | undefined, backend: Backend): string | undefined {
    return sent === this.valueBySlot[backend.slot] ? undefined : this.setCookieBySlot[backend.slot];
  }
}

/** base64url(HMAC-SHA256(secret, name)), shortened to 128 bits. */
export function stickyValue(secret: string, backendName: string): string {
  return createHmac('sha256', secret).update(backendName).digest('base64url').slice(0, 22);
}
