/**
 * GCRA (the generic cell rate algorithm, equivalent to a token bucket without a timer): a
 * bucket is one number, its theoretical arrival time (TAT). A request is allowed when, after
 * adding one emission interval T = per / rate, the TAT is no further ahead of now than the
 * bucket allows (burst × T). The same arithmetic runs in memory and, atomically, in Redis.
 */

export interface GcraParams {
  /** Emission interval in ms: per / rate. */
  readonly intervalMs: number;
  /** burst × interval: how far ahead of now the TAT may run. */
  readonly capacityMs: number;
}

export interface GcraResult {
  readonly allowed: boolean;
  /** Requests still allowed right now (after this one). */
  readonly remaining: number;
  /** When refused: ms until one request would be allowed. */
  readonly retryAfterMs: number;
  /** ms until the bucket is full again. */
  readonly resetMs: number;
}

export function gcra(tat: number, now: number, p: GcraParams): { result: GcraResult; newTat: number } {
  const base = tat > now ? tat : now;
  const newTat = base + p.intervalMs;
  const ahead = newTat - now;
  // A tolerance of 0.1% of an interval: with epoch-ms timestamps, sums of intervals such as
  // 1000/7 ms drift past the capacity by a few ulps and would refuse the last request of a burst.
  const tolerance = Math.max(p.intervalMs * 1e-3, 1e-3);
  if (ahead > p.capacityMs + tolerance) {
    return { result: { allowed: false, remaining: 0, retryAfterMs: ahead - p.capacityMs, resetMs: base - now }, newTat: tat };
  }
  return { result: { allowed: true, remaining: Math.floor((p.capacityMs - ahead + tolerance) / p.intervalMs), retryAfterMs: 0, resetMs: ahead }, newTat };
}

/**
 * Buckets in memory, at most `maxKeys` of them: the least recently used is evicted first (a
 * Map keeps insertion order; a touched key is moved to the end), so a flood of distinct keys
 * costs constant memory. An evicted bucket comes back full, the error in the client's favour.
 */
export class MemoryGcraStore {
  private readonly tats = new Map<string, number>();

  constructor(private readonly maxKeys: number) {}

  get size(): number {
    return this.tats.size;
  }

  decide(key: string, p: GcraParams, now = Date.now()): GcraResult {
    const tats = this.tats;
    const tat = tats.get(key);
    const { result, newTat } = gcra(tat ?? now, now, p);
    if (tat !== undefined) tats.delete(key);
    if (newTat > now) tats.set(key, newTat);
    if (tats.size > this.maxKeys) {
      // Evict the oldest entries (the first in insertion order).
      for (const k of tats.keys()) {
        tats.delete(k);
        if (tats.size <= this.maxKeys) break;
      }
    }
    return result;
  }
}

/**
 * The same decision as one Redis script: atomic per decision, with Redis's own clock (TIME),
 * so instances with skewed clocks still share one limit. rate-limiter-flexible (the usual
 * library) offers fixed windows only, which let twice the limit through across a window edge.
 * Returns {allowed (0/1), remaining, retryAfterMs, resetMs}.
 */
export const GCRA_LUA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local newTat = tat + interval
local ahead = newTat - now
local tolerance = math.max(interval * 0.001, 0.001)
if ahead > capacity + tolerance then
  return {0, 0, math.ceil(ahead - capacity), math.ceil(tat - now)}
end
redis.call('SET', KEYS[1], newTat, 'PX', math.ceil(ahead))
return {1, math.floor((capacity - ahead + tolerance) / interval), 0, math.ceil(ahead)}
`;
