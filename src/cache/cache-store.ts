/**
 * The memory store: cache keys in least-recently-used order (a Map's insertion order; a hit
 * moves its key to the end), each holding its variants (one per set of Vary values). Bounded in
 * bytes: storing evicts from the least recently used end until the total fits `maxSize`.
 */
import type { StoredResponse } from './stored-response.js';

/** Why stored responses left the store (label of cache_evictions_total). */
export type RemovalReason = 'size' | 'purge' | 'invalidation' | 'expired';

/** Most variants kept for one key (a Vary on a high-cardinality field must not crowd out everything else). */
const MAX_VARIANTS = 32;

export class CacheStore {
  private readonly keys = new Map<string, StoredResponse[]>();
  bytes = 0;
  objects = 0;

  constructor(
    public maxSize: number,
    private readonly onRemove: (reason: RemovalReason, n: number) => void = () => {},
  ) {}

  /** The variants stored under `key`, marking it recently used. */
  get(key: string): readonly StoredResponse[] | undefined {
    const variants = this.keys.get(key);
    if (variants === undefined) return undefined;
    this.keys.delete(key);
    this.keys.set(key, variants);
    return variants;
  }

  /**
   * Stores `entry`: it replaces the variant with the same Vary values, and every variant stored
   * under another Vary (the origin changed what it varies on, so they are obsolete). Evicts to fit.
   */
  put(entry: StoredResponse): void {
    if (entry.size > this.maxSize) return;
    const key = entry.key;
    let variants = this.keys.get(key);
    if (variants === undefined) variants = [];
    else {
      this.keys.delete(key);
      const names = String(entry.varyNames);
      const replaced = variants.filter((v) => v.scheme === entry.scheme && v.route === entry.route && (v.varyKey === entry.varyKey || String(v.varyNames) !== names));
      if (replaced.length > 0) {
        variants = variants.filter((v) => !replaced.includes(v));
        this.drop(replaced);
      } else if (variants.length >= MAX_VARIANTS) this.drop(variants.splice(0, 1), 'size');
    }
    variants.push(entry);
    this.keys.set(key, variants);
    this.bytes += entry.size;
    this.objects++;
    this.shrink();
  }

  /** Removes one variant (say, one found useless on lookup). */
  remove(entry: StoredResponse, reason: RemovalReason): void {
    const variants = this.keys.get(entry.key);
    const i = variants?.indexOf(entry) ?? -1;
    if (variants === undefined || i < 0) return;
    this.drop(variants.splice(i, 1), reason);
    if (variants.length === 0) this.keys.delete(entry.key);
  }

  /** Removes every variant of `key`; returns how many. */
  delete(key: string, reason: RemovalReason): number {
    const variants = this.keys.get(key);
    if (variants === undefined) return 0;
    this.keys.delete(key);
    return this.drop(variants, reason);
  }

  /** Removes every key starting with `prefix` ("" = all); returns how many responses. */
  deletePrefix(prefix: string, reason: RemovalReason): number {
    let n = 0;
    for (const [key, variants] of this.keys) {
      if (!key.startsWith(prefix)) continue;
      this.keys.delete(key);
      n += this.drop(variants, reason);
    }
    return n;
  }

  /** Applies a new size bound (a reload), evicting to fit. */
  resize(maxSize: number): void {
    this.maxSize = maxSize;
    this.shrink();
  }

  private shrink(): void {
    if (this.bytes <= this.maxSize) return;
    let evicted = 0;
    for (const [key, variants] of this.keys) {
      if (this.bytes <= this.maxSize) break;
      this.keys.delete(key);
      evicted += this.drop(variants);
    }
    this.onRemove('size', evicted);
  }

  private drop(removed: readonly StoredResponse[], reason?: RemovalReason): number {
    for (const r of removed) {
      this.bytes -= r.size;
      this.objects--;
    }
    if (reason !== undefined && removed.length > 0) this.onRemove(reason, removed.length);
    return removed.length;
  }
}
