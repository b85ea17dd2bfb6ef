import { createHash } from 'node:crypto';
import type { ProxymityConfig } from './config.schema.js';

/** The config in force, where it came from, and its version (control plane; replaced on reload). */
export class ConfigStore {
  current: ProxymityConfig;
  /** First 16 hex digits of the SHA-256 of the effective config. */
  version: string;
  loadedAt: Date;

  constructor(
    config: ProxymityConfig,
    /** The file it was read from; undefined when the config was given in memory (no reload from disk). */
    readonly file: string | undefined,
  ) {
    this.current = config;
    this.version = configVersion(config);
    this.loadedAt = new Date();
  }

  replace(config: ProxymityConfig): void {
    this.current = config;
    this.version = configVersion(config);
    this.loadedAt = new Date();
  }
}

export function configVersion(config: ProxymityConfig): string {
  return createHash('sha256').update(JSON.stringify(config)).digest('hex').slice(0, 16);
}
