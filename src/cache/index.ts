export { CacheModule } from './cache.module.js';
export { ResponseCacheService, keyOfUrl } from './response-cache.service.js';
export { CacheTransaction, type CacheResult } from './cache-transaction.js';
export { StoredResponse } from './stored-response.js';
