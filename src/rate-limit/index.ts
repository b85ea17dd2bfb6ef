export { RateLimitModule } from './rate-limit.module.js';
export { RateLimitService, RateLimitPolicy, type Verdict } from './rate-limit.service.js';
