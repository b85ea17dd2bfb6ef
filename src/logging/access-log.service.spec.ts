import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import http, { type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parseConfig } from '../config/index.js';
import { AccessLogService } from './access-log.service.js';

function service(accessLog: string): { sut: AccessLogService; file: string } {
  const file = join(mkdtempSync(join(tmpdir(), 'proxymity-al-')), 'access.log');
  const cfg = parseConfig(`backend: [{url: "http://127.0.0.1:1"}]\naccessLog: {enabled: true, output: "${file}", ${accessLog}}\n`, 'x.yaml');
  return { sut: new AccessLogService(cfg), file };
}

/** A real request as the server sees it (socket included), answered at once. */
async function incoming(headers: Record<string, string> = {}): Promise<IncomingMessage> {
  let seen: IncomingMessage | undefined;
  const server = http.createServer((req, res) => {
    seen = req;
    void req.socket.remoteAddress; // read while connected, as the proxy does at request start
    res.end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve, reject) => http.get({ port, host: '127.0.0.1', path: '/p?q="x"', headers, agent: false }, (res) => res.resume().on('end', resolve)).on('error', reject));
  server.close();
  return seen as IncomingMessage;
}

describe(AccessLogService.name, () => {
  it('keeps a request when any filter matches (status class, exact status, minimum duration)', () => {
    const { sut } = service('filter: {status: ["5xx", 404], minDuration: 1s}');
    assert.equal(sut.shouldLog(200, 10, false), false);
    assert.equal(sut.shouldLog(502, 10, true), true);
    assert.equal(sut.shouldLog(404, 10, false), true);
    assert.equal(sut.shouldLog(403, 10, false), false);
    assert.equal(sut.shouldLog(200, 1000, false), true);
    sut.onApplicationShutdown();
  });

  it('samples successful requests but always keeps failed ones', () => {
    const { sut } = service('sample: 0.1');
    let kept = 0;
    for (let i = 0; i < 10_000; i++) if (sut.shouldLog(200, 1, false)) kept++;
    assert.ok(kept > 800 && kept < 1200, `kept ${kept} of 10000 at sample 0.1`);
    for (let i = 0; i < 100; i++) assert.equal(sut.shouldLog(502, 1, true), true);
    sut.onApplicationShutdown();
  });

  it('writes the combined format with quoted fields escaped', async () => {
    const { sut, file } = service('format: combined');
    const req = await incoming({ 'user-agent': 'curl/8 "quoted"', referer: 'http://example.test/' });
    sut.write({ req, target: req.url ?? '', requestId: 'rid-1', status: 200, durationMs: 1.5, bytesIn: 0, bytesOut: 321, backend: 'b1', attempts: 1, connectMs: -1, headerMs: 1, termination: undefined, error: undefined, responseHeaders: undefined });
    await sut.onApplicationShutdown();
    const line = readFileSync(file, 'utf8');
    assert.match(line, /^127\.0\.0\.1 - - \[\d\d\/[A-Z][a-z]{2}\/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET \/p\?q=\\x22x\\x22 HTTP\/1\.1" 200 321 "http:\/\/example\.test\/" "curl\/8 \\x22quoted\\x22" rid-1 1\.5ms b1 -\n$/);
  });

  it('keeps lines written before the file finished opening when shut down at once', async () => {
    const req = await incoming();
    const { sut, file } = service('format: json');
    // No await between construction and shutdown: the file is still being opened.
    sut.write({ req, target: '/early', requestId: 'rid-early', status: 204, durationMs: 1, bytesIn: 0, bytesOut: 0, backend: 'b1', attempts: 1, connectMs: -1, headerMs: 1, termination: undefined, error: undefined, responseHeaders: undefined });
    await sut.onApplicationShutdown();
    assert.match(readFileSync(file, 'utf8'), /"rid-early"/);
  });
});
