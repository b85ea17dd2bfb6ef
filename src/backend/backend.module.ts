import { Module } from '@nestjs/common';
import { BackendRegistry } from './backend-registry.service.js';

@Module({
  providers: [BackendRegistry],
  exports: [BackendRegistry],
})
export class BackendModule {}
