export { RoutingModule } from './routing.module.js';
export { RoutingService } from './routing.service.js';
export { Route, type RetryPolicy } from './route.js';
export { RouteTable } from './route-table.js';
