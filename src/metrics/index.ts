export { MetricsModule } from './metrics.module.js';
export { MetricsService, METRIC_PREFIX, type RetryReason } from './metrics.service.js';
