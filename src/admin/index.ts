export { AdminModule } from './admin.module.js';
export { AdminServer, AdminListenError } from './admin-server.service.js';
