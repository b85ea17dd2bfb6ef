/** One problem in a config file, with where it is. */
export interface ConfigIssue {
  /** YAML path such as `backend[1].url`; "" for the document itself. */
  readonly path: string;
  /** 1-based; 0 when the problem has no single position (e.g. a missing key's parent is absent). */
  readonly line: number;
  readonly col: number;
  readonly message: string;
}

/**
 * Every problem found in a config file, reported at once. `message` is what the user sees:
 *
 *     Invalid config.yaml (2 problems):
 *       config.yaml:7:12  backend[1].url: "localhost:3001" is not an http(s) URL
 */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';

  constructor(
    readonly file: string,
    readonly issues: readonly ConfigIssue[],
    headline?: string,
  ) {
    super(ConfigError.format(file, issues, headline));
  }

  private static format(file: string, issues: readonly ConfigIssue[], headline?: string): string {
    const head = headline ?? `Invalid ${file} (${issues.length} problem${issues.length === 1 ? '' : 's'}):`;
    const lines = issues.map((i) => {
      const where = i.line > 0 ? `${file}:${i.line}:${i.col}` : file;
      return `  ${where}  ${i.path ? `${i.path}: ` : ''}${i.message}`;
    });
    return [head, ...lines].join('\n');
  }
}
