/**
 * Which changes in a watched directory concern the files read from it: the config file
 * (ReloadService) and the TLS certificates and keys (ListenersService). Both watch the
 * directory, not the file: editors and config management replace a file by a rename onto its
 * name, which a watch on the file itself would lose. Everything written in that directory then
 * sends an event (a log beside the config: one per write), so the names that matter are worked
 * out once, and again only when one of them changes or on a reload: any other name costs a set
 * lookup, with no file-system call.
 */
import { readlinkSync, statSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname, isAbsolute, relative, resolve, sep } from 'node:path';

/** Symlink hops followed, as Linux's own limit (ELOOP after 40). */
const MAX_LINK_HOPS = 40;

/**
 * The names in `dir` whose change can change one of `files`: each file's own name, and each
 * name in that directory a link on the way from a file to its content passes through
 * (`current` in config.yaml -> current/config.yaml, a release directory swapped by
 * `ln -sfn`; `v1.yaml` in config.yaml -> v1.yaml). A link whose target is missing for now
 * counts its target's name: that name coming back is what counts. Links out of `dir` add
 * nothing: changes there send no event here, so a link outside that is re-pointed (even back
 * into `dir`) is seen at the next reload (SIGHUP).
 */
export function watchedEntries(files: readonly string[], dir: string): Set<string> {
  const names = new Set<string>();
  for (const file of files) {
    names.add(basename(file));
    let path = resolve(file);
    for (let hop = 0; hop < MAX_LINK_HOPS; hop++) {
      let target: string;
      try {
        target = readlinkSync(path);
      } catch {
        break; // not a link (the content), or gone for now
      }
      path = resolve(dirname(path), target);
      const rel = relative(dir, path);
      if (rel !== '' && !isAbsolute(rel) && rel !== '..' && !rel.startsWith(`..${sep}`)) names.add(rel.split(sep)[0]);
    }
  }
  return names;
}

/**
 * Whether a change to `name` in the directory can change a watched file: one of `entries`
 * (watchedEntries), or a name starting with `..` (a Kubernetes ConfigMap or Secret volume swaps
 * its `..data` symlink and never touches the files' own names). Other names (an access log
 * written there, say) are not looked at. Platforms that give no name count every change.
 */
export function isWatchedEntry(name: string, entries: ReadonlySet<string>): boolean {
  return entries.has(name) || name.startsWith('..');
}

/**
 * Calls `fn` once a burst of pokes has been quiet for `waitMs`, and at the latest `maxWaitMs`
 * after the burst's first poke: a file rewritten more often than `waitMs` (a watched name written
 * continuously) still gets read, at most `maxWaitMs` late.
 */
export class Debounce {
  private timer: NodeJS.Timeout | undefined = undefined;
  private firstAt = 0;

  constructor(
    private readonly fn: () => void,
    private readonly waitMs: number,
    private readonly maxWaitMs: number,
  ) {}

  poke(): void {
    const now = performance.now();
    if (this.timer === undefined) this.firstAt = now;
    else if (now + this.waitMs - this.firstAt > this.maxWaitMs) return; // due soon enough: let it fire
    else clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.fn();
    }, this.waitMs);
  }

  cancel(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/** How often a watched directory that was removed (or moved away) is looked for again. */
export const RECHECK_MS = 1000;

/**
 * A watch on the directory `files` are read from: `onChange` runs on a change to one of their
 * names (isWatchedEntry). If the directory itself is removed or moved away, the watch stops
 * working without a word from the platform; here that is noticed (the event naming the directory
 * itself, or the watch's error), logged, and the path is looked for every RECHECK_MS until a
 * directory is there again: then it is watched again, and `onChange` runs (its files may differ).
 */
export class DirectoryWatch {
  private watcher: FSWatcher | undefined = undefined;
  private recheck: NodeJS.Timeout | undefined = undefined;
  private entries: ReadonlySet<string>;
  /** The directory when watched (inode and birth time: a file system may give a new directory a freed inode number). */
  private identity = '';
  private closed = false;

  constructor(
    readonly dir: string,
    private readonly files: readonly string[],
    private readonly onChange: () => void,
    private readonly logger: { warn(message: string): void; log(message: string): void },
    /** What still reloads while the watch is down, for the warnings ("SIGHUP still reloads"). */
    private readonly fallback: string,
  ) {
    this.entries = watchedEntries(files, dir);
  }

  /** Starts watching; false (after a warning) when the directory cannot be watched. */
  start(): boolean {
    try {
      this.arm();
      return true;
    } catch (err) {
      this.logger.warn(`cannot watch ${this.dir}: ${(err as Error).message}; ${this.fallback}`);
      return false;
    }
  }

  private arm(): void {
    this.identity = identityOf(this.dir);
    const watcher = watch(this.dir, (_event, changed) => this.onEvent(changed));
    watcher.on('error', (err) => this.lost(`watch error: ${err.message}`));
    this.watcher = watcher;
  }

  /** The names that count, as the links now are (a reload calls it: links swapped meanwhile). */
  refresh(): void {
    this.entries = watchedEntries(this.files, this.dir);
  }

  close(): void {
    this.closed = true;
    this.watcher?.close();
    this.watcher = undefined;
    if (this.recheck !== undefined) clearInterval(this.recheck);
    this.recheck = undefined;
  }

  private onEvent(changed: string | Buffer | null): void {
    const name = changed == null ? undefined : String(changed);
    // Linux names the directory itself (its basename) when it is removed or moved; platforms
    // that give no name are checked on every event.
    if ((name === undefined || name === basename(this.dir)) && this.gone()) return this.lost('the directory was removed or moved away');
    if (name !== undefined && !isWatchedEntry(name, this.entries)) return;
    // A link on the way to a file may have been swapped: follow the chain again.
    this.entries = watchedEntries(this.files, this.dir);
    this.onChange();
  }

  private gone(): boolean {
    try {
      return identityOf(this.dir) !== this.identity;
    } catch {
      return true;
    }
  }

  private lost(why: string): void {
    if (this.closed || this.recheck !== undefined) return;
    this.watcher?.close();
    this.watcher = undefined;
    this.logger.warn(`stopped watching ${this.dir}: ${why}; looking for it every ${RECHECK_MS / 1000} s, and ${this.fallback}`);
    let warned = false;
    this.recheck = setInterval(() => {
      try {
        if (!statSync(this.dir).isDirectory()) return;
        this.arm();
      } catch (err) {
        // Gone again, or not watchable (permissions, the inotify watch limit): keep looking.
        if (!warned && (err as NodeJS.ErrnoException).code !== 'ENOENT') {
          this.logger.warn(`cannot watch ${this.dir} yet: ${(err as Error).message}; still looking`);
          warned = true;
        }
        return;
      }
      clearInterval(this.recheck);
      this.recheck = undefined;
      this.logger.log(`watching ${this.dir} again`);
      this.refresh();
      this.onChange();
    }, RECHECK_MS);
    this.recheck.unref();
  }
}

/** Inode and birth time of a directory: which directory is at a path. */
function identityOf(dir: string): string {
  const s = statSync(dir);
  return `${s.dev}:${s.ino}:${s.birthtimeMs}`;
}
