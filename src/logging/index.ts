export { LoggingModule } from './logging.module.js';
export { AccessLogService, type RequestSummary } from './access-log.service.js';
export { AppLogger, LOG_LEVELS, type LogFormat } from './app-logger.js';
