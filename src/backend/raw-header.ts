/**
 * The first value of header `lowerName` in raw [name, value, ...] pairs (`message.rawHeaders`),
 * or undefined. Reading `message.headers` instead makes Node build the whole header object;
 * this compares only the names of the same length. Used per request by the agent (Keep-Alive)
 * and the engine (Trailer).
 */
export function rawHeader(raw: readonly string[], lowerName: string): string | undefined {
  const len = lowerName.length;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i];
    if (name.length === len && (name === lowerName || name.toLowerCase() === lowerName)) return raw[i + 1];
  }
  return undefined;
}
