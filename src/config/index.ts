export { ConfigModule } from './config.module.js';
export { ConfigStore, configVersion } from './config-store.js';
export { diffConfigs, redactSecrets, summarize } from './config-summary.js';
export { configJsonSchema } from './json-schema.js';
export { PROXYMITY_CONFIG } from './config.tokens.js';
export { ConfigError, type ConfigIssue } from './config.errors.js';
export { loadConfigFile, parseConfig, resolveConfigPath } from './config.loader.js';
export type { ProxymityConfig, BackendConfig } from './config.schema.js';
