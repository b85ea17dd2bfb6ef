/**
 * Memory adjustments for a proxy process, each measured and each left alone when the operator set
 * what it involves. Three are of V8's heap, set here at run time (1, 2 and 4 below;
 * docs/benchmarks.md#heap-tuning), skipped for a flag set on the node command line or in
 * NODE_OPTIONS where Node allows it; V8 reads those flags each time it uses them, so setting
 * them at run time takes effect. One (3) is of glibc's C heap, skipped for the operator's malloc
 * environment variables. The last (5) is a node flag the start commands pass.
 *
 * 1. Boot without growing the young generation (holdBootHeap / endBootHeap). Loading Nest keeps
 *    most of what it allocates, and V8 answers that survival rate by doubling the young
 *    generation up to 32 MiB. It hands those pages back only once its memory reducer finds the
 *    process idle: about 20 s after start here, and not within 40 s when the machine is busy. A
 *    freshly started proxy sat at about 120 MiB RSS; held, it peaks at about 100 and idles at
 *    about 90 (94 started with --no-memory-reducer, see 5.). main.ts holds before it imports
 *    anything else; cli.ts ends the hold once the proxy listens, and under traffic V8 sizes the
 *    young generation as it always does.
 *
 * 2. Keep at least 64 MiB between the old generation's live size and the size at which V8 starts
 *    a full collection (keepHeadroom). V8 counts memory outside its heap, which every socket read
 *    buffer is, against that limit until the next full collection, and under load it set the
 *    limit only about 10 MiB above the proxy's ~25 MiB of live objects (its factor drops to 1.1,
 *    its minimum, when the process spends little time in GC). A streamed body fills that in a
 *    fraction of a second, so uploads set off one full collection after another; young-generation
 *    collections, which are cheap, free those buffers if the limit leaves room for it. The proxy
 *    sets V8's growing factor (--heap-growing-percent) to live + 64 MiB, from the live size seen
 *    after each full collection (watchLiveSize, from the start of boot): +280% for 25 MiB, at most
 *    +400%, at least +10%. From 640 MiB of live objects on it leaves the factor to V8, whose
 *    smallest (1.1) leaves 64 MiB by itself.
 *    Costs: the flag replaces V8's own factor, including the smaller ones V8 uses to save memory,
 *    so up to 64 MiB more garbage can stay resident until V8's memory reducer runs; and with any
 *    V8 flag changed at run time Node compiles the built-in modules it loads afterwards from
 *    source instead of its code cache (boot time did not change measurably).
 *
 * 3. Keep the C heap's freed top instead of handing it back to the kernel after every burst of
 *    frees (raiseMallocThresholds). Every socket read gets a malloc'd buffer, freed in batches
 *    when V8 collects the Buffers holding them. glibc returns the top of its heap to the kernel
 *    whenever more than its trim threshold is free there (128 KiB to begin with), and the next
 *    reads fault those pages in again: 3.4-5.5 page faults per proxied 16 KiB response under load.
 *    glibc raises that threshold by itself the first time it frees a block it had mmap'd
 *    (mallopt(3), M_MMAP_THRESHOLD: the mmap threshold becomes the block's size and the trim
 *    threshold twice that, up to 32 and 64 MiB); a process that never freed such a block keeps
 *    128 KiB. Which a proxy became depended on what it happened to allocate: the same build,
 *    started twice, served 16 KiB GETs at 0.5-0.75× or at 1.0× the other's requests per
 *    CPU-second. So the proxy allocates and drops one block of 31 MiB once it listens, and the
 *    next collection frees it: the thresholds become about 31 and 62 MiB. Not earlier: with them
 *    raised during boot, glibc kept boot's freed C heap, and the idle proxy sat at 106 MiB RSS
 *    instead of 87. Measured: 0-0.2 faults per request, and 0.97-1.21× the bare script's
 *    requests per CPU-second, where it had been 0.44-0.66×.
 *    Costs: up to 62 MiB of freed memory may stay resident at the top of each malloc arena after
 *    a burst (155 MiB RSS under that load, against 135-155 before), and blocks up to 31 MiB come
 *    from the heap rather than mmaps of their own. Left alone when the operator set one of the
 *    malloc parameters that stop glibc adjusting (MALLOC_TRIM_THRESHOLD_, ..._TOP_PAD_,
 *    ..._MMAP_THRESHOLD_, ..._MMAP_MAX_, or the same in GLIBC_TUNABLES). Other C libraries
 *    (musl) have no such thresholds, and one large allocation there is just that.
 * 4. Collect the young generation on the main thread (collectOnMainThread): V8's parallel
 *    scavenge, and its concurrent sweeping of pages and of ArrayBuffers, are turned off. Every
 *    proxied request leaves garbage (socket buffers among it), so scavenges run several times a
 *    second under load, and their helper tasks cost more CPU than they save when the helpers
 *    compete with the event loop, the origin and the clients for a few cores: at a fixed rate
 *    the proxy used 0.966 of the CPU per request without them (16 paired runs, 0.876-1.046;
 *    95% interval 0.942-0.989; a single run cannot show it), about the same as with
 *    `--single-threaded-gc`, which cannot be set at run time (V8 aborts) and which Node refuses
 *    in NODE_OPTIONS. Concurrent marking stays on: V8 aborts when parallel marking is turned off
 *    at run time. The cost is on full collections, whose sweeping is now the main thread's:
 *    with every collection made a full one (--gc-global, a stress setting) their pauses went
 *    from 23 to 29-35 ms (median); they are rare here (see 2.: 3 in 150 s of mixed load).
 *    Left alone when the operator set any of these, or --single-threaded-gc, --single-threaded,
 *    --predictable, on the command line, e.g. `node --parallel-scavenge dist/main.js`.
 * 5. Start node with --no-memory-reducer (START_FLAGS: `npm start`, `nest start` through
 *    nest-cli.json, the demo and the bench; not the bin, see main.ts). V8's memory reducer
 *    collects the heap of a process it finds idle, from about 8 s after its last full collection.
 *    When that happens before the proxy has served any traffic, which is how most proxies start
 *    (deployed, then put behind a load balancer), Node's own hot paths run slower from then on:
 *    creating `process.nextTick`'s task objects falls into V8's runtime (map transitions and
 *    migrations, 5% of the proxy's CPU at a fixed rate, against 0.3-0.5% otherwise), and it stays
 *    there. The bare http-proxy script does the same. Traffic before the idle spell (200
 *    requests) or the flag prevents it. V8 reads the flag only when the heap is set up, so it
 *    cannot be set from here: it must be on the node command line (Node refuses it in
 *    NODE_OPTIONS). Cost: an idle proxy is not collected to its smallest: 94 MiB RSS 30 s after
 *    start, against 87. `node dist/main.js` without the flag runs as before, and cli.ts says so
 *    in one line once the proxy listens (missingStartFlags).
 * Measurements: docs/benchmarks.md#heap-tuning and docs/benchmarks.md#page-faults-and-the-c-heap.
 */
import { constants, PerformanceObserver } from 'node:perf_hooks';
import v8 from 'node:v8';

/** V8's own default (Node 20 and 22). */
const DEFAULT_GROWTH_FACTOR = 2;
const MIB = 1024 * 1024;
/** The old generation's headroom. With 25 MiB (+100%) 6 s of uploads still set off 6 full collections; with 37 MiB (+150%), 1. */
export const HEADROOM_BYTES = 64 * MIB;
/** From this live size on, V8's smallest factor (1.1) leaves the headroom by itself. */
const OWN_FACTOR_FROM = 10 * HEADROOM_BYTES;
/** A tiny heap gets a factor of at most 5 (V8's own tops out at 4); any other at least 1.1. */
const MAX_PERCENT = 400;
const MIN_PERCENT = 10;
/** What is allocated between a full collection and the moment its live size is read. */
const MEASURE_SLACK_BYTES = 4 * MIB;

/** Which of the adjustments the operator's own V8 flags (node command line, NODE_OPTIONS) take over. */
export function operatorFlags(execArgv: readonly string[], nodeOptions: string | undefined): { young: boolean; growing: boolean; helpers: boolean } {
  const args = [...execArgv, ...(nodeOptions ?? '').split(/\s+/)];
  const has = (flag: RegExp) => args.some((arg) => flag.test(arg));
  return {
    young: has(/^--(semi[-_]space[-_]growth[-_]factor|max[-_]semi[-_]space[-_]size|min[-_]semi[-_]space[-_]size)\b/),
    // --predictable-gc-schedule and --predictable set V8's growing factor themselves.
    growing: has(/^--(heap[-_]growing[-_]percent|predictable[-_]gc[-_]schedule|predictable)(=|$)/),
    // V8 reads its boolean flags with one dash or two and `no` with or without a separator, and
    // takes no value for them. --single-threaded(-gc) and --predictable turn the helpers off
    // themselves; their --no- forms ask for V8's default, which counts as the operator's choice.
    helpers: has(/^--?(no[-_]?)?(parallel[-_]scavenge|concurrent[-_](array[-_]buffer[-_])?sweeping|single[-_]threaded([-_]gc)?|predictable)$/),
  };
}

const byOperator = operatorFlags(process.execArgv, process.env.NODE_OPTIONS);

/**
 * True when the operator set one of the four glibc malloc parameters that stop glibc adjusting
 * its thresholds by itself (mallopt(3)), as MALLOC_*_ variables or GLIBC_TUNABLES.
 */
export function operatorMalloc(env: NodeJS.ProcessEnv): boolean {
  return Object.keys(env).some((k) => /^MALLOC_(TRIM_THRESHOLD|TOP_PAD|MMAP_THRESHOLD|MMAP_MAX)_$/.test(k)) || /\bglibc\.malloc\.(trim_threshold|top_pad|mmap_threshold|mmap_max)=/.test(env.GLIBC_TUNABLES ?? '');
}

/**
 * The size of the block raiseMallocThresholds drops. glibc adjusts for freed mmap'd blocks of at
 * most 32 MiB (DEFAULT_MMAP_THRESHOLD_MAX), counted with their header and rounded up to the page
 * size: 31 MiB stays below that with 64 KiB pages too.
 */
export const MALLOC_PRIMER_BYTES = 31 * MIB;

/**
 * Allocates and drops one malloc'd block of 31 MiB (see 3. above); V8 frees it at its
 * next collection, and glibc then raises its mmap and trim thresholds. Returns false, doing
 * nothing, when the operator tuned malloc.
 */
export function raiseMallocThresholds(env: NodeJS.ProcessEnv = process.env): boolean {
  if (operatorMalloc(env)) return false;
  // allocUnsafeSlow: its own malloc'd block, not a slice of Node's pool. Touched once, so that
  // it is a real allocation whatever the C library does with untouched ones.
  Buffer.allocUnsafeSlow(MALLOC_PRIMER_BYTES)[0] = 1;
  return true;
}

/** The node flags the start commands pass (see 5. above). */
export const START_FLAGS = ['--no-memory-reducer'] as const;

/**
 * START_FLAGS the process was started without, for a notice at start-up; none when the operator
 * decided either way (`--memory-reducer` or `--no-memory-reducer`, in any spelling V8 reads).
 */
export function missingStartFlags(execArgv: readonly string[]): string[] {
  return execArgv.some((a) => /^--?(no[-_]?)?memory[-_]reducer$/.test(a)) ? [] : [...START_FLAGS];
}

/** The flags collectOnMainThread sets. */
export const MAIN_THREAD_GC_FLAGS = ['--no-parallel-scavenge', '--no-concurrent-sweeping', '--no-concurrent-array-buffer-sweeping'] as const;

/**
 * Turns V8's GC helper tasks for the young generation and for sweeping off (see 4. above).
 * main.ts calls it first, before the heap holds more than a few pages. Returns false, doing
 * nothing, when the operator set one of the flags involved.
 */
export function collectOnMainThread(): boolean {
  if (byOperator.helpers) return false;
  for (const flag of MAIN_THREAD_GC_FLAGS) v8.setFlagsFromString(flag);
  return true;
}

let holding = false;

/** Boot begins: V8 keeps the young generation at its initial size. */
export function holdBootHeap(): void {
  if (byOperator.young || holding) return;
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
 * V8's `--heap-growing-percent` for an old generation of `liveBytes`: HEADROOM_BYTES above it
 * (and MEASURE_SLACK_BYTES more), rounded up to 10%, between +10% and +400% (so under about 17 MiB live the headroom is 4 × live); 0
 * (V8's own factor) from 640 MiB on.
 */
export function growingPercentFor(liveBytes: number): number {
  if (liveBytes >= OWN_FACTOR_FROM) return 0;
  const percent = Math.ceil((100 * (HEADROOM_BYTES + MEASURE_SLACK_BYTES)) / Math.max(liveBytes, 1) / 10) * 10;
  return Math.max(MIN_PERCENT, Math.min(MAX_PERCENT, percent));
}

/** Bytes in use in the old generation (old objects, code, large objects): the live size right after a full collection. */
function oldGenerationUsed(): number {
  let used = 0;
  for (const s of v8.getHeapSpaceStatistics()) {
    if (s.space_name !== 'new_space' && s.space_name !== 'new_large_object_space') used += s.space_used_size;
  }
  return used;
}

let applied = -1;
let keeping = false;
/** The old generation's size in use right after the last full collection (its live size then). */
let liveAfterMajor: number | undefined;
let observer: PerformanceObserver | undefined;

function applyHeadroom(live: number): void {
  const percent = growingPercentFor(live);
  if (percent === applied) return;
  v8.setFlagsFromString(`--heap-growing-percent=${percent}`);
  applied = percent;
}

/**
 * Watches full collections from the start of boot (main.ts), to know the live size: the size
 * in use at any other moment still holds garbage (boot's, about a quarter more), which would
 * make the factor too small. A no-op when the operator set the factor.
 */
export function watchLiveSize(): void {
  if (byOperator.growing || observer !== undefined) return;
  observer = new PerformanceObserver((list) => {
    if (!list.getEntries().some((e) => (e as { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR)) return;
    liveAfterMajor = oldGenerationUsed();
    if (keeping) applyHeadroom(liveAfterMajor);
  });
  observer.observe({ entryTypes: ['gc'] });
}

/**
 * Starts keeping the old generation's headroom (see above): now, from the live size at the last
 * full collection of boot (the live size only grows during boot, so the factor errs on the large
 * side), then after every full collection. V8 uses the factor at the next one. A no-op when the
 * operator set the factor.
 */
export function keepHeadroom(): void {
  if (byOperator.growing || keeping) return;
  keeping = true;
  watchLiveSize();
  applyHeadroom(liveAfterMajor ?? oldGenerationUsed());
}

/** The growing percent keepHeadroom applied last (-1: none). The metrics read it. */
export function appliedGrowingPercent(): number {
  return applied;
}
