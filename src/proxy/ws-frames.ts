/**
 * Just enough of RFC 6455 framing to find frame boundaries in a byte stream the proxy relays
 * without reading it (payloads are skipped, never copied), so that a close frame can be put
 * between two frames when the proxy shuts down, and to build that close frame.
 */

/** Tracks where the current frame ends in a stream of WebSocket frames. */
export class FrameCursor {
  /** Bytes of the current frame's payload (and mask) still to come; 0 at a boundary once the header is complete. */
  private remaining = 0;
  /** A frame header split across chunks (at most 14 bytes). */
  private header: number[] = [];

  /** True when the bytes fed so far end exactly at a frame boundary. */
  get atBoundary(): boolean {
    return this.remaining === 0 && this.header.length === 0;
  }

  /**
   * Feeds the next chunk of the stream. Returns the offset just after the last frame that
   * ends in this chunk (0 when the chunk starts at a boundary and no frame ends in it), or -1
   * when the chunk neither starts at nor contains a boundary.
   */
  feed(chunk: Buffer): number {
    let i = 0;
    let lastBoundary = this.atBoundary ? 0 : -1;
    const n = chunk.length;
    while (i < n) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, n - i);
        this.remaining -= take;
        i += take;
        if (this.remaining === 0) lastBoundary = i;
        continue;
      }
      this.header.push(chunk[i++]);
      const h = this.header;
      if (h.length < 2) continue;
      const len7 = h[1] & 0x7f;
      const masked = (h[1] & 0x80) !== 0;
      const extra = len7 === 126 ? 2 : len7 === 127 ? 8 : 0;
      const need = 2 + extra + (masked ? 4 : 0);
      if (h.length < need) continue;
      let len = len7;
      if (len7 === 126) len = (h[2] << 8) | h[3];
      else if (len7 === 127) {
        len = 0;
        for (let k = 2; k < 10; k++) len = len * 256 + h[k];
      }
      this.header = [];
      this.remaining = len;
      if (len === 0) lastBoundary = i;
    }
    return lastBoundary;
  }
}

/** A close frame as a server sends it (unmasked): status code and a short reason. */
export function serverCloseFrame(code: number, reason: string): Buffer {
  const text = Buffer.from(reason.slice(0, 100));
  const frame = Buffer.alloc(4 + text.length);
  frame[0] = 0x88; // FIN + opcode 8 (close)
  frame[1] = 2 + text.length;
  frame.writeUInt16BE(code, 2);
  text.copy(frame, 4);
  return frame;
}
