#!/usr/bin/env node
/**
 * Entry point: `node dist/main.js`, `npm start`, `nest start` and the `proxymity` bin.
 *
 *   proxymity [--config FILE] [--log-level LEVEL] [--log-format FORMAT]   (see cli.ts)
 *
 * The `proxymity` bin runs plain `node`, without heap-tuning.ts's START_FLAGS: a first line of
 * `#!/usr/bin/env -S node ...` fails where env has no -S (BusyBox's, as on Alpine).
 * It moves V8's scavenges and sweeping onto the main thread and keeps V8's young generation from
 * growing while Nest loads (heap-tuning.ts), then runs the command line. cli.ts is imported
 * dynamically on purpose: a static import would load and parse Nest and every module of the
 * proxy before the first line here runs.
 */
import { collectOnMainThread, holdBootHeap, watchLiveSize } from './heap-tuning.js';

collectOnMainThread();
holdBootHeap();
watchLiveSize();
await import('./cli.js');
