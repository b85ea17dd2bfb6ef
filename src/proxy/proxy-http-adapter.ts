/**
 * Nest's Express adapter, creating its HTTP server with the proxy's own server options
 * (`proxy.maxHeaderSize`), which Nest's factory has no setting for. Everything else is
 * Express as usual; proxied traffic never reaches it (see ProxyServerBinding).
 */
import http from 'node:http';
import type { NestApplicationOptions } from '@nestjs/common';
import { ExpressAdapter } from '@nestjs/platform-express';

export class ProxyHttpAdapter extends ExpressAdapter {
  constructor(private readonly serverOptions: http.ServerOptions) {
    super();
  }

  override initHttpServer(options: NestApplicationOptions): void {
    if (options?.httpsOptions) return super.initHttpServer(options);
    this.httpServer = http.createServer(this.serverOptions, this.getInstance());
  }
}
