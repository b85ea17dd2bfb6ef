export { TlsModule } from './tls.module.js';
export { ListenerError, ListenersService } from './listeners.service.js';
export { CertificateSet, loadCertificate } from './certificate-store.js';
