import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseWrk } from './wrk.js';

const SAMPLE = `Running 2s test @ http://127.0.0.1:8080/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    14.12ms    3.01ms  41.93ms   84.18%
    Req/Sec     4.56k   210.11     4.90k    70.00%
  Latency Distribution
     50%   13.61ms
     75%   14.92ms
     90%   17.20ms
     99%  850.00us
  9081 requests in 2.00s, 1.23MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:   4535.21
Transfer/sec:    628.70KB
`;

describe('parseWrk', () => {
  it('reads requests, rate, percentiles in any unit, socket errors and non-2xx counts', () => {
    assert.deepEqual(parseWrk(SAMPLE), { requests: 9081, seconds: 2, rps: 4535.21, p50Ms: 13.61, p99Ms: 0.85, errors: 4, non2xx: 7 });
  });

  it('fails loudly on output it does not understand', () => {
    assert.throws(() => parseWrk('unable to connect to 127.0.0.1:1 Connection refused'), /wrk output lacks/);
  });
});
