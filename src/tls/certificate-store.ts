/**
 * The certificates of one HTTPS listener: read and checked (key matches, not expired), indexed
 * by the names they cover for SNI (exact, then wildcard, then the first certificate), and
 * replaced as a whole on reload. A reload with any bad file is refused and the certificates in
 * use stay.
 */
import { createPrivateKey, type KeyObject, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import tls, { type SecureContext } from 'node:tls';

export interface CertificateFiles {
  readonly cert: string;
  readonly key: string;
  readonly passphraseEnv?: string;
}

export interface LoadedCertificate {
  /** The first name it covers (CN or first DNS SAN), for logs and metrics. */
  readonly name: string;
  readonly names: readonly string[];
  readonly notAfter: Date;
  readonly serial: string;
  readonly context: SecureContext;
  /** What the context was made from (for a server's default context). */
  readonly options: { readonly cert: Buffer; readonly key: Buffer; readonly passphrase: string | undefined; readonly minVersion: 'TLSv1.2' };
}

/** TLS 1.2 minimum; Node's default cipher list (modern AEAD suites first). */
const BASE = { minVersion: 'TLSv1.2' as const };

export function loadCertificate(files: CertificateFiles, now = new Date()): LoadedCertificate {
  let certPem: Buffer;
  let keyPem: Buffer;
  try {
    certPem = readFileSync(files.cert);
  } catch (err) {
    throw new Error(`${files.cert}: cannot read the certificate (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  try {
    keyPem = readFileSync(files.key);
  } catch (err) {
    throw new Error(`${files.key}: cannot read the key (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(certPem);
  } catch (err) {
    throw new Error(`${files.cert}: not a PEM certificate (${(err as Error).message})`);
  }
  const notAfter = new Date(x509.validTo);
  if (notAfter.getTime() <= now.getTime()) throw new Error(`${files.cert}: expired on ${notAfter.toISOString()}`);
  if (!x509.checkPrivateKey(safeKey(keyPem, files))) throw new Error(`${files.key}: this key does not belong to the certificate ${files.cert}`);
  let context: SecureContext;
  try {
    context = tls.createSecureContext({ ...BASE, cert: certPem, key: keyPem, passphrase: passphrase(files) });
  } catch (err) {
    throw new Error(`${files.cert} / ${files.key}: ${(err as Error).message}`);
  }
  const sans = (x509.subjectAltName ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.startsWith('DNS:'))
    .map((s) => s.slice(4).toLowerCase());
  const cn = /CN=([^\n,]+)/.exec(x509.subject)?.[1]?.toLowerCase();
  const names = sans.length > 0 ? sans : cn !== undefined ? [cn] : [];
  return { name: names[0] ?? files.cert, names, notAfter, serial: x509.serialNumber, context, options: { ...BASE, cert: certPem, key: keyPem, passphrase: passphrase(files) } };
}

function passphrase(files: CertificateFiles): string | undefined {
  return files.passphraseEnv !== undefined ? process.env[files.passphraseEnv] : undefined;
}

function safeKey(keyPem: Buffer, files: CertificateFiles): KeyObject {
  try {
    // createPrivateKey checks the PEM and the passphrase.
    return createPrivateKey({ key: keyPem, passphrase: passphrase(files) });
  } catch (err) {
    throw new Error(`${files.key}: not a usable private key (${(err as Error).message})`);
  }
}

/** SNI selection over a set of loaded certificates. */
export class CertificateSet {
  private readonly exact = new Map<string, LoadedCertificate>();
  private readonly wildcard = new Map<string, LoadedCertificate>();

  constructor(readonly certificates: readonly LoadedCertificate[]) {
    for (const c of certificates) {
      for (const n of c.names) {
        if (n.startsWith('*.')) {
          if (!this.wildcard.has(n.slice(2))) this.wildcard.set(n.slice(2), c);
        } else if (!this.exact.has(n)) this.exact.set(n, c);
      }
    }
  }

  get fallback(): LoadedCertificate {
    return this.certificates[0];
  }

  /** Exact name, then a wildcard for its parent domain, then the first certificate. */
  select(servername: string | undefined): LoadedCertificate {
    if (servername === undefined || servername === '') return this.fallback;
    const name = servername.toLowerCase();
    const exact = this.exact.get(name);
    if (exact !== undefined) return exact;
    const dot = name.indexOf('.');
    if (dot > 0) {
      const wild = this.wildcard.get(name.slice(dot + 1));
      if (wild !== undefined) return wild;
    }
    return this.fallback;
  }
}
