import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { configJsonSchema } from './json-schema.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

describe('config.schema.json', () => {
  it('is the schema generated from config.schema.ts (run `npm run schema` after changing the schema)', () => {
    assert.equal(readFileSync(join(ROOT, 'config.schema.json'), 'utf8'), configJsonSchema());
  });

  it('is referenced from config.yaml for editors and describes every top-level key of the shipped file', () => {
    const text = readFileSync(join(ROOT, 'config.yaml'), 'utf8');
    assert.match(text, /^# yaml-language-server: \$schema=\.\/config\.schema\.json$/m);
    const schema = JSON.parse(configJsonSchema()) as { properties: Record<string, { description?: string }>; additionalProperties: boolean };
    assert.equal(schema.additionalProperties, false);
    for (const key of Object.keys(parse(text) as object)) assert.ok(schema.properties[key]?.description, `no description for ${key}`);
  });
});
