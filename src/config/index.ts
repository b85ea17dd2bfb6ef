export { ConfigModule } from './config.module.js';
export { PROXYMITY_CONFIG } from './config.tokens.js';
export { ConfigError, type ConfigIssue } from './config.errors.js';
export { loadConfigFile, parseConfig, resolveConfigPath } from './config.loader.js';
export type { ProxymityConfig, BackendConfig } from './config.schema.js';
