export { ProxyModule } from './proxy.module.js';
export { ProxyEngine } from './proxy-engine.service.js';
export { ProxyMiddleware } from './proxy.middleware.js';
export { UpgradeProxy } from './upgrade-proxy.service.js';
export { PROXY_ERRORS, type ProxyErrorCode } from './proxy-errors.js';
export { ProxyHttpAdapter } from './proxy-http-adapter.js';
