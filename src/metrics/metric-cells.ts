/**
 * Counters and histograms whose series are bound once (control plane) and recorded by number
 * on the data plane. prom-client's own `inc(labels)` / `labels(...).inc()` hash the label object
 * and allocate a result object (histograms: a closure) on every call; here a record is an array
 * store. Both classes implement the metric interface prom-client's Registry reads at scrape time
 * (`name`, `help`, `type`, `get()`), so they sit in the same registry as prom-client's own metrics
 * and its text format is unchanged.
 */
type Labels = Readonly<Record<string, string>>;
type MetricType = 'counter' | 'histogram';

/** One sample as prom-client's Registry formats it. */
interface Sample {
  readonly metricName?: string;
  readonly labels: Labels;
  readonly value: number;
}

/** What prom-client's Registry reads from a metric at scrape time. */
export interface ScrapedMetric {
  readonly name: string;
  readonly help: string;
  readonly type: MetricType;
  readonly aggregator: 'sum';
  readonly values: Sample[];
}

abstract class BoundMetric<L extends string> {
  readonly aggregator = 'sum' as const;
  protected readonly series: Labels[] = [];
  private readonly index = new Map<string, number>();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly L[],
  ) {}

  abstract get type(): MetricType;

  /** The series for these label values, created on first use. Control plane, or cached by the caller. */
  bind(labels: Readonly<Record<L, string>>): number {
    const key = this.labelNames.map((n) => labels[n]).join('\u0000');
    let slot = this.index.get(key);
    if (slot === undefined) {
      slot = this.series.length;
      this.series.push(Object.freeze({ ...labels }));
      this.index.set(key, slot);
      this.grow(slot);
    }
    return slot;
  }

  protected abstract grow(slot: number): void;
}

export class BoundCounter<L extends string = string> extends BoundMetric<L> {
  private values: number[] = [];

  get type(): MetricType {
    return 'counter';
  }

  inc(slot: number, by = 1): void {
    this.values[slot] += by;
  }

  value(slot: number): number {
    return this.values[slot];
  }

  protected grow(): void {
    this.values.push(0);
  }

  async get(): Promise<ScrapedMetric> {
    const values: Sample[] = this.series.map((labels, i) => ({ labels, value: this.values[i] }));
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}

export class BoundHistogram<L extends string = string> extends BoundMetric<L> {
  /** Per series: one count per bucket (not cumulative; summed at scrape), then +Inf. */
  private counts: Float64Array[] = [];
  private sums: number[] = [];
  private readonly bucketLabels: string[];

  constructor(name: string, help: string, labelNames: readonly L[], readonly buckets: readonly number[]) {
    super(name, help, labelNames);
    this.bucketLabels = buckets.map((b) => String(b));
  }

  get type(): MetricType {
    return 'histogram';
  }

  /** Records `seconds` in series `slot`. */
  observe(slot: number, seconds: number): void {
    const b = this.buckets;
    let i = 0;
    while (i < b.length && seconds > b[i]) i++;
    this.counts[slot][i]++;
    this.sums[slot] += seconds;
  }

  count(slot: number): number {
    let n = 0;
    for (const c of this.counts[slot]) n += c;
    return n;
  }

  protected grow(): void {
    this.counts.push(new Float64Array(this.buckets.length + 1));
    this.sums.push(0);
  }

  async get(): Promise<ScrapedMetric> {
    const values: Sample[] = [];
    const bucketName = `${this.name}_bucket`;
    this.series.forEach((labels, s) => {
      const counts = this.counts[s];
      let cumulative = 0;
      for (let i = 0; i < this.buckets.length; i++) {
        cumulative += counts[i];
        values.push({ metricName: bucketName, labels: { ...labels, le: this.bucketLabels[i] }, value: cumulative });
      }
      cumulative += counts[this.buckets.length];
      values.push({ metricName: bucketName, labels: { ...labels, le: '+Inf' }, value: cumulative });
      values.push({ metricName: `${this.name}_sum`, labels, value: this.sums[s] });
      values.push({ metricName: `${this.name}_count`, labels, value: cumulative });
    });
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }
}
