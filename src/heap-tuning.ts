/**
 * Two adjustments of V8's heap for a proxy process, both measured (docs/benchmarks.md#heap-tuning)
 * and both left alone when the operator set the flag involved (on the node command line, or in
 * NODE_OPTIONS where Node allows it). V8 reads both flags each time it uses them, so setting
 * them at run time takes effect.
 *
 * 1. Boot without growing the young generation (holdBootHeap / endBootHeap). Loading Nest keeps
 *    most of what it allocates, and V8 answers that survival rate by doubling the young
 *    generation up to 32 MiB. It hands those pages back only once its memory reducer finds the
 *    process idle: about 20 s after start here, and not within 40 s when the machine is busy. A
 *    freshly started proxy sat at about 120 MiB RSS; held, it peaks at about 100 and idles at
 *    about 90. main.ts holds before it imports anything else; cli.ts ends the hold once the proxy
 *    listens, and under traffic V8 sizes the young generation as it always does.
 *
 * 2. Keep at least 64 MiB between the old generation's live size and the size at which V8 starts
 *    a full collection (keepHeadroom). V8 counts memory outside its heap, which every socket read
 *    buffer is, against that limit until the next full collection, and it sets the limit only
 *    about 10 MiB above the proxy's ~25 MiB of live objects. A streamed body fills 10 MiB in a
 *    fraction of a second, so uploads set off a full collection every 10-16 MiB (25 in 6 s at 40
 *    uploads of 1 MiB per second), 35-60% of the CPU they cost. With 64 MiB, young-generation
 *    collections, which are cheap, free the buffers first (1 full collection in 6 s). V8's growing
 *    factor is set so that live × factor leaves that headroom, rechecked every 10 s as the live
 *    size changes (the response cache lives in the heap). Past 128 MiB of live objects the factor
 *    is left to V8 (its own is between 1.1 and 4): a smaller one than V8 would pick would only
 *    add collections.
 */
import v8 from 'node:v8';

/** V8's own default (Node 20 and 22). */
const DEFAULT_GROWTH_FACTOR = 2;
const MIB = 1024 * 1024;
/** The old generation's headroom: V8's own soft limit for memory outside its heap (kExternalAllocationSoftLimit). */
export const HEADROOM_BYTES = 64 * MIB;
/** From this live size on, the factor is V8's own (the headroom would need less than +50%). */
const OWN_FACTOR_FROM = 2 * HEADROOM_BYTES;
/** V8's own factor is at most 4 (1 + 300%); a tiny heap gets a factor of at most 5. */
const MAX_PERCENT = 400;
const RECHECK_MS = 10_000;

const operatorArgs = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)];
const operatorSet = (flag: RegExp): boolean => operatorArgs.some((arg) => flag.test(arg));
const youngSetByOperator = operatorSet(/^--(semi[-_]space[-_]growth[-_]factor|max[-_]semi[-_]space[-_]size|min[-_]semi[-_]space[-_]size)\b/);
const growingSetByOperator = operatorSet(/^--heap[-_]growing[-_]percent\b/);

let holding = false;

/** Boot begins: V8 keeps the young generation at its initial size. */
export function holdBootHeap(): void {
  if (youngSetByOperator || holding) return;
  v8.setFlagsFromString('--semi-space-growth-factor=1');
  holding = true;
}

/** Boot is over: V8 may grow the young generation again. */
export function endBootHeap(): void {
  if (!holding) return;
  holding = false;
  v8.setFlagsFromString(`--semi-space-growth-factor=${DEFAULT_GROWTH_FACTOR}`);
}

/**
 * V8's `--heap-growing-percent` for an old generation of `liveBytes`: enough for HEADROOM_BYTES
 * above it (rounded up to 10%), or 0 (V8's own heuristics) once it is large.
 */
export function growingPercentFor(liveBytes: number): number {
  if (liveBytes >= OWN_FACTOR_FROM) return 0;
  const percent = Math.ceil((100 * HEADROOM_BYTES) / Math.max(liveBytes, 1) / 10) * 10;
  return Math.min(MAX_PERCENT, percent);
}

/** Bytes in use in the old generation (old objects, code, large objects). */
function oldGenerationUsed(): number {
  let used = 0;
  for (const s of v8.getHeapSpaceStatistics()) {
    if (s.space_name !== 'new_space' && s.space_name !== 'new_large_object_space') used += s.space_used_size;
  }
  return used;
}

let applied = -1;
let keeper: NodeJS.Timeout | undefined;

function applyHeadroom(): void {
  const percent = growingPercentFor(oldGenerationUsed());
  if (percent === applied) return;
  v8.setFlagsFromString(`--heap-growing-percent=${percent}`);
  applied = percent;
}

/** Starts keeping the old generation's headroom (see above); a no-op when the operator set the flag. */
export function keepHeadroom(): void {
  if (growingSetByOperator || keeper !== undefined) return;
  applyHeadroom();
  keeper = setInterval(applyHeadroom, RECHECK_MS);
  keeper.unref();
}

/** The growing percent currently applied by keepHeadroom (-1: none). For tests. */
export function appliedGrowingPercent(): number {
  return applied;
}
