export { HealthModule } from './health.module.js';
export { HealthProbeService } from './health-probe.service.js';
export { DrainService } from './drain.service.js';
