import { Module } from '@nestjs/common';
import { BackendModule } from '../backend/backend.module.js';
import { LoadBalancerService } from './load-balancer.service.js';

@Module({
  imports: [BackendModule],
  providers: [LoadBalancerService],
  exports: [LoadBalancerService],
})
export class LoadBalancerModule {}
