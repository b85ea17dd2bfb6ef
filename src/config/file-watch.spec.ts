import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Debounce, DirectoryWatch, isWatchedEntry, watchedEntries } from './file-watch.js';
import { pollUntil } from '../../test/helpers/poll-until.js';

describe('file watch: which names in the directory count', () => {
  const dirs: string[] = [];
  after(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  /** A fresh directory; with a release layout: chain.yaml -> stage.yaml -> current/config.yaml, current -> releases/r1. */
  function directory(releases = false): string {
    const dir = mkdtempSync(join(tmpdir(), 'proxymity-entries-'));
    dirs.push(dir);
    if (releases) {
      mkdirSync(join(dir, 'releases', 'r1'), { recursive: true });
      writeFileSync(join(dir, 'releases', 'r1', 'config.yaml'), 'proxy: {}\n');
      symlinkSync('releases/r1', join(dir, 'current'));
      symlinkSync('current/config.yaml', join(dir, 'stage.yaml'));
      symlinkSync('stage.yaml', join(dir, 'chain.yaml'));
    }
    return dir;
  }

  it('a plain file: its own name only', () => {
    const dir = directory();
    writeFileSync(join(dir, 'plain.yaml'), 'proxy: {}\n');
    assert.deepEqual([...watchedEntries([join(dir, 'plain.yaml')], dir)], ['plain.yaml']);
  });

  it('a chain of links: every name in the directory the chain passes through, a release directory included', () => {
    const dir = directory(true);
    assert.deepEqual([...watchedEntries([join(dir, 'chain.yaml')], dir)].sort(), ['chain.yaml', 'current', 'stage.yaml']);
  });

  it('a link whose target is missing for now counts the target name; a link out of the directory adds nothing', () => {
    const dir = directory();
    symlinkSync('v9.yaml', join(dir, 'dangling.yaml'));
    assert.deepEqual([...watchedEntries([join(dir, 'dangling.yaml')], dir)].sort(), ['dangling.yaml', 'v9.yaml']);
    symlinkSync(join(tmpdir(), 'elsewhere.yaml'), join(dir, 'out.yaml'));
    assert.deepEqual([...watchedEntries([join(dir, 'out.yaml')], dir)], ['out.yaml']);
  });

  it('several files in one directory (a certificate and its key): the names of each', () => {
    const dir = directory(true);
    writeFileSync(join(dir, 'tls.key'), 'key');
    symlinkSync('releases/r1/config.yaml', join(dir, 'tls.crt'));
    assert.deepEqual([...watchedEntries([join(dir, 'tls.crt'), join(dir, 'tls.key')], dir)].sort(), ['releases', 'tls.crt', 'tls.key']);
  });

  it('isWatchedEntry: the names found, and any `..` name (a ConfigMap swap); nothing else', () => {
    const dir = directory(true);
    const entries = watchedEntries([join(dir, 'chain.yaml')], dir);
    for (const name of ['chain.yaml', 'stage.yaml', 'current', '..data', '..2026_12_02_04_00_00.123']) assert.equal(isWatchedEntry(name, entries), true, name);
    for (const name of ['access.log', 'releases', 'chain.yaml.swp', '.chain.yaml.tmp', 'h2load.log']) assert.equal(isWatchedEntry(name, entries), false, name);
  });
});

describe('DirectoryWatch and Debounce, on a real directory', () => {
  const dirs: string[] = [];
  const watches: DirectoryWatch[] = [];
  after(() => {
    for (const w of watches) w.close();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  function recorder() {
    const lines: string[] = [];
    return { lines, warn: (m: string) => void lines.push(`warn ${m}`), log: (m: string) => void lines.push(`log ${m}`) };
  }

  it('a directory removed and put back: says so, watches the new one, and reports the change', async () => {
    const parent = mkdtempSync(join(tmpdir(), 'proxymity-watch-'));
    dirs.push(parent);
    const dir = join(parent, 'conf');
    mkdirSync(dir);
    writeFileSync(join(dir, 'config.yaml'), 'v1\n');
    let changes = 0;
    const log = recorder();
    const watch = new DirectoryWatch(dir, [join(dir, 'config.yaml')], () => changes++, log, 'SIGHUP still reloads');
    watches.push(watch);
    assert.equal(watch.start(), true);

    rmSync(dir, { recursive: true });
    await pollUntil(() => log.lines, (l) => l.some((x) => x.startsWith(`warn stopped watching ${dir}: the directory was removed or moved away`)), { what: 'the removal noticed' });
    assert.match(log.lines.find((x) => x.startsWith('warn stopped'))!, /looking for it every 1 s, and SIGHUP still reloads$/);

    const before = changes;
    mkdirSync(dir);
    writeFileSync(join(dir, 'config.yaml'), 'v2\n');
    await pollUntil(() => changes, (n) => n > before, { what: 'the new directory watched and the change reported', timeoutMs: 10_000 });
    assert.ok(log.lines.includes(`log watching ${dir} again`));

    // The new directory's watch works: a later write is seen too.
    const again = changes;
    writeFileSync(join(dir, 'config.yaml'), 'v3\n');
    await pollUntil(() => changes, (n) => n > again, { what: 'a write in the new directory seen' });
  });

  it('Debounce: a file rewritten faster than the quiet period is still read, while the writes go on', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'proxymity-watch-'));
    dirs.push(dir);
    const file = join(dir, 'config.yaml');
    writeFileSync(file, 'v0\n');
    let fired = 0;
    const debounce = new Debounce(() => fired++, 200, 1000);
    const watch = new DirectoryWatch(dir, [file], () => debounce.poke(), recorder(), 'SIGHUP still reloads');
    watches.push(watch);
    watch.start();
    let writes = 0;
    // A write every 50 ms: never quiet for 200 ms. Without the maximum wait, nothing would fire.
    const writer = setInterval(() => writeFileSync(file, `v${++writes}\n`), 50);
    try {
      await pollUntil(() => fired, (n) => n > 0, { what: 'a reload during continuous writes', timeoutMs: 10_000 });
    } finally {
      clearInterval(writer);
      debounce.cancel();
    }
  });
});
