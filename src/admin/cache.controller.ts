import { BadRequestException, Controller, ForbiddenException, Get, HttpCode, Inject, Post, Query, UseGuards } from '@nestjs/common';
import { ResponseCacheService } from '../cache/response-cache.service.js';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import { adminToken, AdminTokenGuard } from './admin-token.guard.js';

/** The response cache's admin endpoints: its size, and purges (which need the admin token). */
@Controller('cache')
@UseGuards(AdminTokenGuard)
export class CacheController {
  private readonly purgeAllowed: boolean;

  constructor(
    private readonly cache: ResponseCacheService,
    @Inject(PROXYMITY_CONFIG) cfg: ProxymityConfig,
  ) {
    this.purgeAllowed = adminToken(cfg) !== undefined;
  }

  /** Stored bytes and objects, and the limits. */
  @Get()
  stats() {
    return this.cache.stats();
  }

  /**
   * Removes stored responses: `?url=http://host/path?query` (every variant of that URL),
   * `?prefix=http://host/path/` (every URL starting so) or `?all=true`.
   */
  @Post('purge')
  @HttpCode(200)
  purge(@Query('url') url?: string, @Query('prefix') prefix?: string, @Query('all') all?: string) {
    if (!this.purgeAllowed) throw new ForbiddenException('POST /cache/purge needs an admin token: set admin.token or $PROXYMITY_ADMIN_TOKEN');
    const given = [url, prefix, all].filter((v) => v !== undefined).length;
    if (given !== 1 || (all !== undefined && all !== 'true')) throw new BadRequestException('give exactly one of url=<absolute URL>, prefix=<absolute URL prefix> or all=true');
    for (const v of [url, prefix]) {
      if (v === undefined) continue;
      if (typeof v !== 'string' || !URL.canParse(v) || !/^https?:$/.test(new URL(v).protocol)) throw new BadRequestException(`not an absolute http(s) URL: ${JSON.stringify(v)}`);
    }
    const purged = this.cache.purge({ url, prefix, all: all === 'true' });
    return { purged };
  }
}
