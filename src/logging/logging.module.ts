import { Module } from '@nestjs/common';
import { AccessLogService } from './access-log.service.js';

/** Access logs; the application logger (AppLogger) is built in main.ts before Nest starts. */
@Module({
  providers: [AccessLogService],
  exports: [AccessLogService],
})
export class LoggingModule {}
