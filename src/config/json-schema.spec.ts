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

  it('has every key documented in README.md (the manual)', () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const schema = JSON.parse(configJsonSchema()) as JsonNode;
    const missing: string[] = [];
    const walk = (node: JsonNode | undefined, path: string[]) => {
      if (node === undefined || typeof node !== 'object') return;
      for (const alt of [...(node.anyOf ?? []), ...(node.oneOf ?? [])]) walk(alt, path);
      walk(node.items, path);
      if (typeof node.additionalProperties === 'object') walk(node.additionalProperties, path);
      for (const [key, child] of Object.entries(node.properties ?? {})) {
        // In a table cell or a snippet: `key`, `parent.key`, `key.child`, `key[]`, {key: ...}.
        if (!new RegExp(`[\`.{ ]${key.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}[\`.\\[:]`).test(readme)) missing.push([...path, key].join('.'));
        walk(child, [...path, key]);
      }
    };
    walk(schema, []);
    assert.deepEqual([...new Set(missing)], []);
  });
});

interface JsonNode {
  properties?: Record<string, JsonNode>;
  items?: JsonNode;
  anyOf?: JsonNode[];
  oneOf?: JsonNode[];
  additionalProperties?: JsonNode | boolean;
}
