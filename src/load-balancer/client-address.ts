import { BlockList, isIP } from 'node:net';
/**
 * The resolved client address of a request: the peer address, or, when the peer is a trusted
 * proxy, the nearest untrusted address in X-Forwarded-For. Set once per request by the proxy's
 * header policy; read by anything that keys on the client (ip-hash, rate limits, access logs).
 */
import type { IncomingMessage } from 'node:http';

export const kClientAddress = Symbol('proxymity.clientAddress');

type WithClient = IncomingMessage & { [kClientAddress]?: string };

export function setClientAddress(req: IncomingMessage, address: string): void {
  (req as WithClient)[kClientAddress] = address;
}

export function clientAddress(req: IncomingMessage): string | undefined {
  return (req as WithClient)[kClientAddress] ?? normalizeAddress(req.socket?.remoteAddress);
}

/** "::ffff:192.0.2.1" (IPv4-mapped, from dual-stack listeners) -> "192.0.2.1". */
export function normalizeAddress(address: string | undefined): string | undefined {
  if (address !== undefined && address.startsWith('::ffff:') && address.includes('.')) return address.slice(7);
  return address;
}

const kPeerAddress = Symbol('proxymity.peerAddress');

/** The TCP peer, as seen when the request arrived (an HTTP/2 stream loses its socket once closed). */
export function setPeerAddress(req: IncomingMessage, address: string): void {
  (req as IncomingMessage & { [kPeerAddress]?: string })[kPeerAddress] = address;
}

export function peerAddress(req: IncomingMessage): string | undefined {
  return (req as IncomingMessage & { [kPeerAddress]?: string })[kPeerAddress] ?? normalizeAddress(req.socket?.remoteAddress);
}

/** A BlockList of addresses and CIDR blocks (IPv4 or IPv6); undefined for an empty list. */
export function buildBlockList(entries: readonly string[]): BlockList | undefined {
  if (entries.length === 0) return undefined;
  const list = new BlockList();
  for (const entry of entries) {
    const [addr, bits] = entry.split('/');
    const type = isIP(addr) === 6 ? 'ipv6' : 'ipv4';
    if (bits === undefined) list.addAddress(addr, type);
    else list.addSubnet(addr, Number(bits), type);
  }
  return list;
}
