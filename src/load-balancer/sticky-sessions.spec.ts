import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import { describe, it } from 'node:test';
import { makeBackends } from '../../test/helpers/backends.js';
import { StickySessions, stickyValue } from './sticky-sessions.js';

const cfg = { cookie: 'srv', path: '/', secure: true, httpOnly: true, sameSite: 'Lax' as const, maxAge: 3_600_000 };
const SECRET = 'a-test-secret-of-some-length';
const withCookie = (c: string) => ({ headers: { cookie: c } }) as unknown as IncomingMessage;

describe(StickySessions.name, () => {
  const backends = makeBackends(['app-1', 'app-2']);
  const sut = new StickySessions(cfg, backends, SECRET);

  it('issues a cookie that names the backend by HMAC, with the configured attributes', () => {
    const line = sut.setCookie(undefined, backends[1])!;
    const value = stickyValue(SECRET, 'app-2');
    assert.equal(line, `srv=${value}; Path=/; Max-Age=3600; Secure; HttpOnly; SameSite=Lax`);
    assert.doesNotMatch(line, /127\.0\.0\.1|app-2/, 'no internal address or name leaks');
  });

  it('round-trips: the issued value resolves to the same backend and is not issued again', () => {
    const value = stickyValue(SECRET, 'app-1');
    const sent = sut.read(withCookie(`other=1; srv=${value}`));
    assert.equal(sut.resolve(sent), backends[0]);
    assert.equal(sut.setCookie(sent, backends[0]), undefined);
    assert.ok(sut.setCookie(sent, backends[1])!.startsWith('srv='), 're-issued when another backend answers');
  });

  it('rejects a forged value or one made with another secret', () => {
    assert.equal(sut.resolve('forged-value'), undefined);
    assert.equal(sut.resolve(stickyValue('another-secret-entirely', 'app-1')), undefined);
  });
});
