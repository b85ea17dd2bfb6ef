/**
 * The published JSON Schema of config.yaml (config.schema.json), generated from the same zod
 * schema that validates it, so editors can complete and check the file. `npm run schema`
 * rewrites the file; a test fails when the committed file is out of date.
 */
import { z } from 'zod';
import { configSchema } from './config.schema.js';

export const SCHEMA_ID = 'https://proxymity.dev/config.schema.json';

export function configJsonSchema(): string {
  // What a user writes (io: input): durations and sizes as strings or numbers, defaults shown.
  // Cross-field checks (unique names, routes to existing pools) are not expressible here; the
  // loader and `proxymity validate` apply them.
  const schema = z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any' });
  return `${JSON.stringify({ ...schema, $id: SCHEMA_ID, title: 'Proxymity config.yaml' }, null, 2)}\n`;
}
