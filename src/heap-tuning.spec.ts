import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, it } from 'node:test';
import { growingPercentFor, HEADROOM_BYTES, missingStartFlags, operatorFlags, operatorMalloc, raiseMallocThresholds, START_FLAGS } from './heap-tuning.js';

const run = promisify(execFile);

const MIB = 1024 * 1024;

describe(growingPercentFor.name, () => {
  it('leaves at least the headroom above the live size, in steps of 10%', () => {
    for (const live of [16, 25, 40, 64, 100, 128, 300, 639]) {
      const percent = growingPercentFor(live * MIB);
      assert.equal(percent % 10, 0);
      assert.ok((live * MIB * percent) / 100 >= HEADROOM_BYTES, `${live} MiB -> ${percent}%`);
    }
    assert.equal(growingPercentFor(25 * MIB), 280);
    assert.equal(growingPercentFor(64 * MIB), 110);
    assert.equal(growingPercentFor(100 * MIB), 70);
    assert.equal(growingPercentFor(128 * MIB), 60);
    assert.equal(growingPercentFor(639 * MIB), 20);
  });

  it('caps the factor for a tiny heap', () => {
    assert.equal(growingPercentFor(10 * MIB), 400);
    assert.equal(growingPercentFor(0), 400);
  });

  it('leaves the factor to V8 from 640 MiB of live objects on, where its smallest (1.1) leaves the headroom', () => {
    assert.equal(growingPercentFor(640 * MIB), 0);
    assert.equal(growingPercentFor(4096 * MIB), 0);
  });
});

describe(operatorFlags.name, () => {
  it('finds the young-generation flags on the command line, in either spelling, and in NODE_OPTIONS', () => {
    assert.deepEqual(operatorFlags(['--max-semi-space-size=8'], undefined), { young: true, growing: false, helpers: false });
    assert.deepEqual(operatorFlags(['--semi_space_growth_factor=2'], undefined), { young: true, growing: false, helpers: false });
    assert.deepEqual(operatorFlags([], '--max-old-space-size=512 --max-semi-space-size=4'), { young: true, growing: false, helpers: false });
  });

  it('finds the flags that set the growing factor', () => {
    assert.deepEqual(operatorFlags(['--heap-growing-percent=0'], undefined), { young: false, growing: true, helpers: false });
    assert.deepEqual(operatorFlags(['--heap_growing_percent=50'], undefined), { young: false, growing: true, helpers: false });
    assert.deepEqual(operatorFlags(['--predictable-gc-schedule'], ''), { young: false, growing: true, helpers: false });
  });

  it('finds the flags that turn GC helper tasks on or off, in either spelling', () => {
    for (const flag of ['--parallel-scavenge', '--no-parallel-scavenge', '--no_concurrent_sweeping', '--concurrent-array-buffer-sweeping', '--single-threaded-gc', '--single-threaded', '-parallel-scavenge', '--noparallel-scavenge', '-no-concurrent-sweeping', '-single-threaded-gc', '--no-single-threaded-gc']) {
      assert.deepEqual(operatorFlags([flag], undefined), { young: false, growing: false, helpers: true }, flag);
    }
    assert.deepEqual(operatorFlags(['--predictable'], undefined), { young: false, growing: true, helpers: true });
  });

  it('ignores everything else', () => {
    assert.deepEqual(operatorFlags(['--max-old-space-size=512', '--enable-source-maps', '--predictable-x', '--no-concurrent-marking', '--trace-gc-nvp', '--parallel-scavenge-x', '---parallel-scavenge'], '--trace-warnings'), { young: false, growing: false, helpers: false });
  });
});

describe(missingStartFlags.name, () => {
  it('names the start flags a process lacks, and none when the operator chose the memory reducer either way', () => {
    assert.deepEqual(missingStartFlags([]), ['--no-memory-reducer']);
    assert.deepEqual(missingStartFlags(['--enable-source-maps', '--max-semi-space-size=16']), ['--no-memory-reducer']);
    for (const chosen of ['--no-memory-reducer', '--memory-reducer', '--memory_reducer', '-no-memory-reducer', '--nomemory-reducer']) assert.deepEqual(missingStartFlags([chosen]), [], chosen);
  });

  it('names only flags this node accepts on its command line', async () => {
    // A flag node does not know makes `npm start` fail: a later Node that drops one shows here.
    await run(process.execPath, [...START_FLAGS, '-e', '0']);
  });
});

describe(operatorMalloc.name, () => {
  it('finds the glibc malloc settings that stop glibc adjusting its thresholds', () => {
    assert.equal(operatorMalloc({ MALLOC_TRIM_THRESHOLD_: '1048576' }), true);
    assert.equal(operatorMalloc({ MALLOC_MMAP_THRESHOLD_: '65536' }), true);
    assert.equal(operatorMalloc({ MALLOC_TOP_PAD_: '0' }), true);
    assert.equal(operatorMalloc({ MALLOC_MMAP_MAX_: '0' }), true);
    for (const t of ['trim_threshold', 'top_pad', 'mmap_threshold', 'mmap_max']) assert.equal(operatorMalloc({ GLIBC_TUNABLES: `glibc.pthread.rseq=0:glibc.malloc.${t}=1048576` }), true, t);
  });

  it('ignores everything else, other malloc tunables included', () => {
    assert.equal(operatorMalloc({ MALLOC_ARENA_MAX: '2', GLIBC_TUNABLES: 'glibc.pthread.rseq=0', PATH: '/usr/bin' }), false);
    assert.equal(operatorMalloc({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0' }), false);
    assert.equal(raiseMallocThresholds({ MALLOC_TRIM_THRESHOLD_: '1048576' }), false);
  });
});

describe(raiseMallocThresholds.name, () => {
  /**
   * In a fresh Node process: a 5 MiB Buffer is its own mmap (glibc's threshold is 128 KiB) unless
   * raiseMallocThresholds ran first, after which glibc serves it from its heap. Read from the
   * process's own /proc/self/maps: anonymous mappings grown by at least the buffer's size, or not.
   */
  const probe = async (raise: boolean, env: NodeJS.ProcessEnv = {}) => {
    const script = `
      import { readFileSync } from 'node:fs';
      import { setTimeout as delay } from 'node:timers/promises';
      const { raiseMallocThresholds } = await import(${JSON.stringify(new URL('./heap-tuning.js', import.meta.url).href)});
      const acted = ${raise} ? raiseMallocThresholds() : false;
      // The dropped block is freed when V8 collects its Buffer (the sweep may finish off-thread).
      for (let i = 0; i < 3; i++) { gc(); await delay(20); }
      // Bytes in anonymous mappings without a name ([heap], the brk heap, is named). A new mmap
      // may merge with a neighbouring mapping, so the total is compared, not the ranges.
      const anonymousBytes = () => readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => l !== '' && l.trim().split(/\\s+/).length === 5).reduce((n, l) => { const [a, b] = l.split(' ')[0].split('-').map((x) => parseInt(x, 16)); return n + (b - a); }, 0);
      const before = anonymousBytes();
      const size = 5 * 1024 * 1024 + 12345;
      const buf = Buffer.allocUnsafeSlow(size);
      buf.fill(1);
      const added = anonymousBytes() - before;
      console.log(JSON.stringify({ acted, ownMapping: added >= size, added, glibc: process.report.getReport().header.glibcVersionRuntime ?? null, kept: buf.length }));
    `;
    const { stdout } = await run(process.execPath, ['--expose-gc', '--input-type=module', '-e', script], { env: { PATH: process.env.PATH, ...env } });
    return JSON.parse(stdout) as { acted: boolean; ownMapping: boolean; added: number; glibc: string | null };
  };

  it('makes glibc serve the next multi-MiB allocation from its heap instead of a fresh mmap', async () => {
    const plain = await probe(false);
    assert.ok(plain.glibc !== null, 'this check reads glibc behaviour; the machine runs another C library');
    assert.equal(plain.ownMapping, true, `without the primer a 5 MiB buffer is mmap'd on its own (anonymous mappings grew by ${plain.added} bytes)`);
    const primed = await probe(true);
    assert.equal(primed.acted, true);
    assert.equal(primed.ownMapping, false, `after the primer glibc serves 5 MiB from its heap (anonymous mappings grew by ${primed.added} bytes)`);
  });

  it('leaves an operator\'s malloc settings alone', async () => {
    const theirs = await probe(true, { MALLOC_MMAP_THRESHOLD_: '131072' });
    assert.equal(theirs.acted, false);
    assert.equal(theirs.ownMapping, true);
  });
});
