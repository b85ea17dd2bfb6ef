/**
 * Boot without growing V8's young generation.
 *
 * Loading Nest and its modules keeps most of what it allocates, and V8 answers a high survival
 * rate by doubling the young generation up to its 32 MiB maximum. Boot is over in about a
 * second, but V8 gives those pages back only once its memory reducer sees the process idle
 * (about 20 s after start here, and not within 40 s when the machine is busy), so a freshly
 * started proxy sat at about 120 MiB RSS instead of about 90. With growth off during boot it
 * peaks at about 96 MiB and idles at about 87 MiB (docs/benchmarks.md#idle-memory).
 *
 * Growth is switched back on once the proxy listens: under load V8 sizes the young generation
 * as it always does. V8 reads this flag each time it considers growing, so setting it at run
 * time takes effect. Left alone when the operator set the flag, or the semi-space size,
 * themselves (node --semi-space-growth-factor=N / --max-semi-space-size=N, or NODE_OPTIONS).
 *
 * main.ts calls holdBootHeap() before it imports anything else; cli.ts calls endBootHeap() once
 * the proxy listens (or failed to). The end-to-end tests start the app in-process without it.
 */
import v8 from 'node:v8';

/** V8's own default (Node 20 and 22). */
const DEFAULT_GROWTH_FACTOR = 2;

const operatorSet = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)].some((arg) =>
  /^--(semi[-_]space[-_]growth[-_]factor|max[-_]semi[-_]space[-_]size|min[-_]semi[-_]space[-_]size)\b/.test(arg),
);

let holding = false;

/** Boot begins: V8 keeps the young generation at its initial size. */
export function holdBootHeap(): void {
  if (operatorSet || holding) return;
  v8.setFlagsFromString('--semi-space-growth-factor=1');
  holding = true;
}

/** Boot is over: V8 may grow the young generation again. */
export function endBootHeap(): void {
  if (!holding) return;
  holding = false;
  v8.setFlagsFromString(`--semi-space-growth-factor=${DEFAULT_GROWTH_FACTOR}`);
}
