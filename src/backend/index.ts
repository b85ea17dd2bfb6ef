export { BackendModule } from './backend.module.js';
export { BackendRegistry } from './backend-registry.service.js';
export { Backend, type HealthEvent } from './backend.js';
