import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { rawHeader } from './raw-header.js';

describe('rawHeader', () => {
  it('reads one header from the raw pairs, case-insensitively, first value', () => {
    const raw = ['Content-Type', 'text/plain', 'TRAILER', 'grpc-status', 'trailer', 'x-second', 'Trailers', 'x'];
    assert.equal(rawHeader(raw, 'trailer'), 'grpc-status');
    assert.equal(rawHeader(raw, 'content-type'), 'text/plain');
    assert.equal(rawHeader(raw, 'trailers'), 'x');
    assert.equal(rawHeader(raw, 'etag'), undefined);
    assert.equal(rawHeader([], 'trailer'), undefined);
  });
});
