export { ReloadModule } from './reload.module.js';
export { ReloadService, type ReloadResult } from './reload.service.js';
