import { type DynamicModule, Global, Module } from '@nestjs/common';
import { ConfigModule as NestConfigModule } from '@nestjs/config';
import type { ProxymityConfig } from './config.schema.js';
import { ConfigStore } from './config-store.js';
import { PROXYMITY_CONFIG } from './config.tokens.js';

/**
 * Provides the validated, frozen config under PROXYMITY_CONFIG (the config the process started
 * with: what cannot change without a restart, such as listeners, is read from it) and the
 * ConfigStore (the config in force, replaced by a reload). The file is loaded and
 * validated before Nest starts (config.loader.ts), so a bad file stops boot with a precise
 * message and no stack trace. @nestjs/config is wrapped so that ConfigService also sees the
 * same object (`config.get('proxy')`), but nothing in Proxymity does string lookups.
 */
@Global()
@Module({})
export class ConfigModule {
  static forRoot(config: ProxymityConfig, file?: string): DynamicModule {
    return {
      module: ConfigModule,
      imports: [NestConfigModule.forRoot({ load: [() => config as Record<string, any>], ignoreEnvFile: true })],
      providers: [
        { provide: PROXYMITY_CONFIG, useValue: config },
        { provide: ConfigStore, useValue: new ConfigStore(config, file) },
      ],
      exports: [PROXYMITY_CONFIG, ConfigStore],
    };
  }
}
