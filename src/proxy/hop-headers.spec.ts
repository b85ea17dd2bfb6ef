import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import { BlockList } from 'node:net';
import { describe, it } from 'node:test';
import { clientAddress } from '../load-balancer/client-address.js';
import { buildResponseHeaders, prepareRequestHeaders, type HeaderPolicy } from './hop-headers.js';

function trusting(...cidrs: string[]): HeaderPolicy {
  const trusted = new BlockList();
  for (const c of cidrs) {
    const [a, bits] = c.split('/');
    trusted.addSubnet(a, Number(bits), a.includes(':') ? 'ipv6' : 'ipv4');
  }
  return { trusted, forwarded: false };
}

function fakeRequest(headers: Record<string, string>, remoteAddress = '10.1.2.3', httpVersion = '1.1'): IncomingMessage {
  // Only our own collaborator's inputs are faked here: a plain header bag and a remote address.
  return { headers: { ...headers }, socket: { remoteAddress }, httpVersion } as unknown as IncomingMessage;
}

describe('prepareRequestHeaders', () => {
  it('removes hop-by-hop fields and the ones Connection names', () => {
    const req = fakeRequest({ host: 'example.com', connection: 'keep-alive, X-Secret', 'x-secret': '1', 'keep-alive': 'timeout=5', te: 'gzip', 'proxy-connection': 'keep-alive', upgrade: 'h2c', accept: '*/*' });
    prepareRequestHeaders(req, 'http');
    for (const gone of ['connection', 'x-secret', 'keep-alive', 'te', 'proxy-connection', 'upgrade']) assert.equal(req.headers[gone], undefined, gone);
    assert.equal(req.headers.accept, '*/*');
    assert.equal(req.headers.host, 'example.com');
  });

  it('does not let Connection remove the fields the proxy sets', () => {
    const req = fakeRequest({ host: 'h', connection: 'x-forwarded-for, via, host' });
    prepareRequestHeaders(req, 'http');
    assert.equal(req.headers['x-forwarded-for'], '10.1.2.3');
    assert.equal(req.headers.host, 'h');
    assert.equal(req.headers.via, '1.1 proxymity');
  });

  it('keeps "TE: trailers" (the client accepts trailers)', () => {
    const req = fakeRequest({ te: 'trailers' });
    prepareRequestHeaders(req, 'http');
    assert.equal(req.headers.te, 'trailers');
  });

  it('replaces X-Forwarded-* and drops Forwarded from an untrusted peer, and appends to Via', () => {
    const req = fakeRequest({ host: 'shop.example', 'x-forwarded-for': '192.0.2.1', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'evil', forwarded: 'for=1.2.3.4', via: '1.1 cdn' });
    prepareRequestHeaders(req, 'http');
    assert.equal(req.headers['x-forwarded-for'], '10.1.2.3');
    assert.equal(req.headers['x-forwarded-proto'], 'http');
    assert.equal(req.headers['x-forwarded-host'], 'shop.example');
    assert.equal(req.headers.forwarded, undefined);
    assert.equal(req.headers.via, '1.1 cdn, 1.1 proxymity');
    assert.equal(clientAddress(req), '10.1.2.3');
  });

  it('keeps and appends X-Forwarded-* from a trusted peer, taking the client from the nearest untrusted hop', () => {
    const req = fakeRequest({ host: 'shop.example', 'x-forwarded-for': '198.51.100.7, 10.0.0.5', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'www.shop.example' }, '10.1.2.3');
    prepareRequestHeaders(req, 'http', trusting('10.0.0.0/8'));
    assert.equal(req.headers['x-forwarded-for'], '198.51.100.7, 10.0.0.5, 10.1.2.3');
    assert.equal(req.headers['x-forwarded-proto'], 'https');
    assert.equal(req.headers['x-forwarded-host'], 'www.shop.example');
    assert.equal(clientAddress(req), '198.51.100.7');
  });

  it('adds RFC 7239 Forwarded when asked, bracketing IPv6', () => {
    const req = fakeRequest({ host: 'shop.example' }, '2001:db8::1');
    prepareRequestHeaders(req, 'http', { trusted: undefined, forwarded: true });
    assert.equal(req.headers.forwarded, 'for="[2001:db8::1]";proto=http;host=shop.example');
  });

  it('reads IPv4-mapped peers as IPv4', () => {
    const req = fakeRequest({}, '::ffff:127.0.0.1');
    prepareRequestHeaders(req, 'http');
    assert.equal(req.headers['x-forwarded-for'], '127.0.0.1');
  });

  it('keeps a client request id and generates one when absent', () => {
    const kept = fakeRequest({ 'x-request-id': 'abc-123' });
    assert.equal(prepareRequestHeaders(kept, 'http'), 'abc-123');
    const fresh = fakeRequest({});
    const id = prepareRequestHeaders(fresh, 'http');
    assert.match(id, /^[0-9a-f-]{36}$/);
    assert.equal(fresh.headers['x-request-id'], id);
  });
});

describe('buildResponseHeaders', () => {
  it('drops hop-by-hop fields, keeps case and repeated fields, adds Via and the request id', () => {
    const raw = ['Content-Type', 'text/plain', 'Connection', 'keep-alive', 'Keep-Alive', 'timeout=5', 'Transfer-Encoding', 'chunked', 'Set-Cookie', 'a=1', 'Set-Cookie', 'b=2'];
    assert.deepEqual(buildResponseHeaders(raw, 'id-1', '1.1'), ['Content-Type', 'text/plain', 'Set-Cookie', 'a=1', 'Set-Cookie', 'b=2', 'via', '1.1 proxymity', 'x-request-id', 'id-1']);
  });

  it('drops fields named in Connection', () => {
    const raw = ['Connection', 'close, X-Internal', 'X-Internal', 'secret', 'ETag', '"1"'];
    assert.deepEqual(buildResponseHeaders(raw, 'id', '1.1'), ['ETag', '"1"', 'via', '1.1 proxymity', 'x-request-id', 'id']);
  });

  it('does not add a second request id when the backend echoed it', () => {
    const out = buildResponseHeaders(['X-Request-Id', 'id-9'], 'id-9', '1.1');
    assert.deepEqual(out, ['X-Request-Id', 'id-9', 'via', '1.1 proxymity']);
  });
});
