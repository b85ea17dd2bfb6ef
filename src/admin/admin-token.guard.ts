import { timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { type CanActivate, type ExecutionContext, Inject, Injectable, UnauthorizedException } from '@nestjs/common';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';

/** The admin token: admin.token, else $PROXYMITY_ADMIN_TOKEN, else none. */
export function adminToken(cfg: ProxymityConfig): string | undefined {
  return cfg.admin.token ?? (process.env.PROXYMITY_ADMIN_TOKEN || undefined);
}

export const UNAUTHORIZED = 'admin endpoints need "Authorization: Bearer <admin.token>"';

/**
 * Admin endpoints (all but /health) require `Authorization: Bearer <admin token>` when a token
 * is configured; one must be when the listener is bound beyond loopback (checked at load).
 */
@Injectable()
export class AdminTokenGuard implements CanActivate {
  private readonly token: Buffer | undefined;

  constructor(@Inject(PROXYMITY_CONFIG) cfg: ProxymityConfig) {
    const token = adminToken(cfg);
    this.token = token === undefined ? undefined : Buffer.from(token);
  }

  canActivate(context: ExecutionContext): boolean {
    if (this.accepts(context.switchToHttp().getRequest<IncomingMessage>().headers.authorization)) return true;
    throw new UnauthorizedException(UNAUTHORIZED);
  }

  /** True when no token is configured, or `authorization` carries it. */
  accepts(authorization: string | undefined): boolean {
    const expected = this.token;
    if (expected === undefined) return true;
    const header = authorization ?? '';
    // The scheme name is case-insensitive (RFC 9110 §11.1): "bearer" and "BEARER" count too.
    const given = Buffer.from(/^bearer /i.test(header) ? header.slice(7).trim() : '');
    return given.length === expected.length && timingSafeEqual(given, expected);
  }
}
