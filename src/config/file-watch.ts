/**
 * Which changes in a watched directory concern the files read from it: the config file
 * (ReloadService) and the TLS certificates and keys (ListenersService). Both watch the
 * directory, not the file: editors and config management replace a file by a rename onto its
 * name, which a watch on the file itself would lose. Everything written in that directory then
 * sends an event (a log beside the config: one per write), so the names that matter are worked
 * out once, and again only when one of them changes or on a reload: any other name costs a set
 * lookup, with no file-system call.
 */
import { readlinkSync } from 'node:fs';
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
