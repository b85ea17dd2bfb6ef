/**
 * Listeners besides the plain-HTTP one (`listeners:`): HTTPS with HTTP/2 (Node's http2 secure
 * server with HTTP/1.1 fallback, ALPN h2 and http/1.1, TLS 1.2 minimum, certificates by SNI),
 * and plain-HTTP listeners that redirect to HTTPS (308, path and query kept).
 *
 * Requests on an HTTPS listener take the same path as on the plain one (ProxyMiddleware, and
 * HealthEndpoint for the health path, over HTTP/1.1 and HTTP/2). For HTTP/2 requests the pseudo-headers
 * are translated first: `:authority` becomes Host, and no pseudo-header goes upstream.
 *
 * Certificates are re-read when their files change and on SIGHUP; a bad set is refused (logged
 * with the file) and the certificates in use stay. Connections that are open keep the
 * certificate they were made with.
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import http2, { type Http2SecureServer } from 'node:http2';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { dirname, resolve } from 'node:path';
import type { Duplex } from 'node:stream';
import { Inject, Injectable, Logger, type BeforeApplicationShutdown, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { PROXYMITY_CONFIG } from '../config/config.tokens.js';
import { Debounce, DirectoryWatch } from '../config/file-watch.js';
import type { ProxymityConfig } from '../config/config.schema.js';
import { MetricsService } from '../metrics/metrics.service.js';
import { ProxyMiddleware } from '../proxy/proxy.middleware.js';
import { answerClientError, applyClientTimeouts, type ClientTimeoutTarget, continueAfter, refuseConnect, whenAtHead } from '../proxy/proxy-server.binding.js';
import { UpgradeProxy } from '../proxy/upgrade-proxy.service.js';
import { answerInternalError } from '../proxy/proxy-errors.js';
import { CertificateSet, loadCertificate } from './certificate-store.js';
import { kHsts, type HstsServer } from '../proxy/hsts.js';

type ListenerConfig = ProxymityConfig['listeners'][number];

/** Streams one HTTP/2 connection may have open at once (announced in its SETTINGS). */
export const HTTP2_MAX_CONCURRENT_STREAMS = 128;

/** A listener that cannot start (bad certificate or key, port in use); main.ts prints its message. */
export class ListenerError extends Error {}

interface Running {
  readonly cfg: ListenerConfig;
  readonly name: string;
  server: http.Server | https.Server | Http2SecureServer;
  certs: CertificateSet | undefined;
  url: string;
  readonly sockets: Set<Socket>;
  readonly sessions: Set<import('node:http2').ServerHttp2Session>;
}

@Injectable()
export class ListenersService implements OnApplicationBootstrap, BeforeApplicationShutdown, OnApplicationShutdown {
  private readonly logger = new Logger('Listeners');
  readonly running: Running[] = [];
  /** The directories holding certificate or key files. */
  private readonly watches: DirectoryWatch[] = [];
  /** One for all directories: a certificate and its key renewed in two directories are read together. */
  private readonly debounce = new Debounce(() => void this.reloadCertificates('file change'), 200, 2000);
  private readonly onSighup = (): void => void this.reloadCertificates('SIGHUP');

  constructor(
    private readonly adapterHost: HttpAdapterHost,
    private readonly proxy: ProxyMiddleware,
    private readonly upgrades: UpgradeProxy,
    private readonly metrics: MetricsService,
    @Inject(PROXYMITY_CONFIG) private readonly cfg: ProxymityConfig,
  ) {}

  /** "https-8443" → its URL, once listening. */
  urls(): Record<string, string> {
    return Object.fromEntries(this.running.map((r) => [r.name, r.url]));
  }

  async onApplicationBootstrap(): Promise<void> {
    const express = this.adapterHost.httpAdapter.getInstance() as (req: IncomingMessage, res: ServerResponse) => void;
    const proxy = this.proxy;
    const logger = this.logger;
    const serve = (req: IncomingMessage, res: ServerResponse): void => {
      try {
        if (req.httpVersionMajor === 2 && (req as { stream?: unknown }).stream !== undefined) fromHttp2(req);
        // The proxy's own endpoint (health) answers on the raw request, over HTTP/1.1 and HTTP/2.
        if (!proxy.handle(req, res)) proxy.serveOwn(req, res, express);
      } catch (err) {
        answerInternalError(req, res, err, logger);
      }
    };
    // HTTP/1.1 requests pipelined on a connection are forwarded one at a time (see whenAtHead).
    const handle = (req: IncomingMessage, res: ServerResponse): void => {
      if (res.socket === null) whenAtHead(req, res, serve);
      else serve(req, res);
    };
    for (const l of this.cfg.listeners) {
      const name = l.name ?? `${l.protocol}-${l.port}`;
      // Start-up refuses a bad certificate or key, naming the file.
      let certs: CertificateSet | undefined;
      try {
        certs = l.protocol === 'https' ? new CertificateSet((l.certificates ?? []).map((c) => loadCertificate(c))) : undefined;
      } catch (err) {
        throw new ListenerError(`listener ${name}: ${(err as Error).message}`);
      }
      const run: Running = { cfg: l, name, server: undefined as unknown as Running['server'], certs, url: '', sockets: new Set<Socket>(), sessions: new Set() };
      if (certs === undefined) {
        const port = l.redirectPort;
        run.server = http.createServer((req, res) => redirect(req, res, port));
      } else {
        const options = {
          ...certs.fallback.options,
          SNICallback: (servername: string, cb: (err: Error | null, ctx?: import('node:tls').SecureContext) => void) => cb(null, (run.certs as CertificateSet).select(servername).context),
        };
        // At most 128 streams at once per HTTP/2 connection (nginx's http2_max_concurrent_streams
        // default; Node's own is 2^32-1): one connection must not take the whole backend pool.
        run.server = l.http2 ? http2.createSecureServer({ ...options, allowHTTP1: true, settings: { maxConcurrentStreams: HTTP2_MAX_CONCURRENT_STREAMS } }, handle as never) : https.createServer(options, handle);
        if (l.hsts !== undefined) (run.server as HstsServer)[kHsts] = l.hsts;
        // WebSocket over TLS (an HTTP/1.1 upgrade).
        run.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
          try {
            this.upgrades.handle(req, socket, head);
          } catch (err) {
            this.logger.error(`unexpected error handling upgrade ${req.url}: ${(err as Error).stack ?? String(err)}`);
            socket.destroy();
          }
        });
        run.server.on('tlsClientError', () => undefined);
      }
      const server = run.server;
      // Every TCP connection (handshakes included), so shutdown can close them all.
      server.on('connection', (s: Socket) => {
        run.sockets.add(s);
        s.on('close', () => run.sockets.delete(s));
      });
      const idleMs = this.cfg.proxy.keepAliveTimeout;
      server.on('session', (session: import('node:http2').ServerHttp2Session) => {
        run.sessions.add(session);
        session.on('close', () => run.sessions.delete(session));
        // HTTP/2 sessions idle for the keep-alive timeout are closed. Set per session, not with
        // server.setTimeout: Node also applies the server's timeout to HTTP/1.1 connections on
        // this listener, where it would cut a request that waits that long for its backend.
        session.setTimeout(idleMs, () => {
          if (!session.destroyed && !session.closed) session.destroy();
        });
      });
      // The plain listener's client timeouts and header size limit apply here too, HTTP/2's
      // HTTP/1.1 fallback included (Node reads them from the HTTP/2 server as from an http one).
      const p = this.cfg.proxy;
      applyClientTimeouts(server as ClientTimeoutTarget, p);
      (server as { maxHeaderSize?: number }).maxHeaderSize = p.maxHeaderSize;
      // A request Node cannot parse gets the same answer as on the main listener (HSTS included).
      server.on('clientError', answerClientError);
      server.on('connect', refuseConnect);
      if (certs !== undefined) server.on('checkContinue', continueAfter(serve));
      await new Promise<void>((resolveListen, reject) => {
        server.once('error', (err: NodeJS.ErrnoException) => reject(new ListenerError(`cannot listen on ${name} ${l.host}:${l.port}: ${err.code ?? ''} (${err.message})`)));
        server.listen(l.port, l.host, () => resolveListen());
      });
      server.on('error', (err) => this.logger.error(`listener ${name}: ${err.message}`));
      const a = server.address() as AddressInfo;
      run.url = `${certs !== undefined ? 'https' : 'http'}://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
      this.running.push(run);
      this.logger.log(`${name} listening on ${run.url}${certs ? ` (${certs.certificates.map((c) => c.name).join(', ')}${l.http2 ? '; h2, http/1.1' : ''})` : ` (308 to https${l.redirectPort === 443 ? '' : ` port ${l.redirectPort}`})`}`);
    }
    this.metrics.readCertificatesFrom(() => this.running.flatMap((r) => (r.certs?.certificates ?? []).map((c) => ({ name: c.name, notAfter: c.notAfter }))));
    if (this.running.some((r) => r.certs !== undefined)) this.watchCertificates();
  }

  /** Re-reads every HTTPS listener's certificates; keeps the old ones if any file is bad. */
  reloadCertificates(trigger: string): boolean {
    let ok = true;
    // Links swapped since the last event (a SIGHUP after `ln -sfn`): the names as they now are.
    for (const w of this.watches) w.refresh();
    for (const r of this.running) {
      if (r.cfg.protocol !== 'https') continue;
      try {
        const loaded = [];
        for (const files of r.cfg.certificates ?? []) {
          try {
            loaded.push(loadCertificate(files));
          } catch (err) {
            // An expired certificate must not block the renewal of the others: it is left out.
            if (!/: expired on /.test((err as Error).message)) throw err;
            this.logger.warn(`${r.name}: ${(err as Error).message}; left out until it is renewed`);
          }
        }
        if (loaded.length === 0) throw new Error('no usable certificate left');
        const next = new CertificateSet(loaded);
        const changed = next.certificates.map((c) => c.serial).join() !== r.certs?.certificates.map((c) => c.serial).join();
        if (!changed) continue;
        r.certs = next;
        // Clients without SNI get the first certificate: the server's default context follows too.
        (r.server as unknown as { setSecureContext(o: object): void }).setSecureContext(next.fallback.options);
        if (changed) this.logger.log(`${r.name}: certificates reloaded (${trigger}): ${next.certificates.map((c) => `${c.name} until ${c.notAfter.toISOString()}`).join(', ')}`);
      } catch (err) {
        ok = false;
        this.logger.error(`${r.name}: certificate reload (${trigger}) refused, keeping the certificates in use: ${(err as Error).message}`);
      }
    }
    return ok;
  }

  private watchCertificates(): void {
    process.on('SIGHUP', this.onSighup);
    const byDir = new Map<string, string[]>();
    for (const r of this.running) {
      for (const c of r.cfg.certificates ?? []) {
        for (const f of [c.cert, c.key]) {
          const file = resolve(f);
          const dir = dirname(file);
          byDir.set(dir, [...(byDir.get(dir) ?? []), file]);
        }
      }
    }
    for (const [dir, files] of byDir) {
      // Only the files' own names (and links on the way to them) count: a log written in the
      // same directory must neither re-read every certificate nor, by resetting the debounce
      // with each write, keep a renewed certificate from ever being read.
      const watch = new DirectoryWatch(dir, files, () => this.debounce.poke(), this.logger, 'SIGHUP still reloads certificates');
      if (watch.start()) this.watches.push(watch);
    }
  }

  /** Like the plain listener: open during proxy.shutdownDelay, then closed, HTTP/2 sessions told to go away (GOAWAY). */
  async beforeApplicationShutdown(): Promise<void> {
    const delay = this.cfg.proxy.shutdownDelay;
    if (delay > 0 && this.running.length > 0) await new Promise((r) => setTimeout(r, delay));
    for (const r of this.running) {
      r.server.close();
      for (const session of r.sessions) session.close();
    }
  }

  async onApplicationShutdown(): Promise<void> {
    process.removeListener('SIGHUP', this.onSighup);
    this.debounce.cancel();
    for (const w of this.watches) w.close();
    for (const r of this.running) {
      for (const session of r.sessions) session.destroy();
      for (const s of r.sockets) s.destroy();
    }
  }
}

/**
 * HTTP/2 → HTTP/1.1: the request's header object is replaced (on the instance) by a copy
 * without pseudo-headers, with Host from :authority; `req.url` and `req.method` still read
 * :path and :method from the stream's own headers.
 */
function fromHttp2(req: IncomingMessage): void {
  const src = req.headers as Record<string, string | string[] | undefined>;
  const h: Record<string, string | string[] | undefined> = {};
  for (const name of Object.keys(src)) if (name.charCodeAt(0) !== 58 /* : */) h[name] = src[name];
  // RFC 9113 §8.3.1: :authority wins over a Host header.
  if (typeof src[':authority'] === 'string') h.host = src[':authority'];
  Object.defineProperty(req, 'headers', { value: h, writable: true, configurable: true, enumerable: true });
}

function redirect(req: IncomingMessage, res: ServerResponse, port: number): void {
  const host = (req.headers.host ?? '').replace(/:\d+$/, '');
  if (host === '' || !/^[A-Za-z0-9.:[\]-]+$/.test(host)) {
    res.writeHead(400, { 'content-type': 'text/plain; charset=utf-8', connection: 'close' });
    res.end('400 Bad Request: a Host header is needed to redirect to https\n');
    return;
  }
  const target = req.url ?? '/';
  // An absolute-form target (GET http://x/y) keeps only its path and query.
  const path = target.startsWith('/') ? target : pathOf(target);
  const location = `https://${host}${port === 443 ? '' : `:${port}`}${path}`;
  res.writeHead(308, { location, 'content-type': 'text/plain; charset=utf-8', 'content-length': '0' });
  res.end();
  req.resume();
}

function pathOf(target: string): string {
  try {
    const u = new URL(target);
    return u.pathname + u.search;
  } catch {
    return '/';
  }
}
