/**
 * Test certificates made with openssl (Debian's): a CA, and host certificates it signs, in a
 * temp directory. Nothing is mocked: servers and clients use these files for real TLS.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestCa {
  readonly dir: string;
  readonly caCert: string;
  /** Issues a certificate for `names` (DNS names or IPs); returns the cert and key paths. */
  issue(file: string, names: string[], opts?: { days?: number }): { cert: string; key: string };
}

const openssl = (args: string[], cwd: string) => execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });

export function makeTestCa(): TestCa {
  const dir = mkdtempSync(join(tmpdir(), 'proxymity-certs-'));
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=Proxymity Test CA'], dir);
  return {
    dir,
    caCert: join(dir, 'ca.crt'),
    issue(file, names, opts = {}) {
      const san = names.map((n) => (/^[\d.]+$|:/.test(n) ? `IP:${n}` : `DNS:${n}`)).join(',');
      writeFileSync(join(dir, `${file}.ext`), `subjectAltName=${san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n`);
      openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${file}.key`, '-out', `${file}.csr`, '-subj', `/CN=${names[0]}`], dir);
      openssl(['x509', '-req', '-in', `${file}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${file}.crt`, '-days', String(opts.days ?? 1), '-extfile', `${file}.ext`], dir);
      return { cert: join(dir, `${file}.crt`), key: join(dir, `${file}.key`) };
    },
  };
}
