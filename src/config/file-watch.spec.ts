import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { isWatchedEntry, watchedEntries } from './file-watch.js';

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
