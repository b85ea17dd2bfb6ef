/** Injection token for the validated, frozen `ProxymityConfig`. */
export const PROXYMITY_CONFIG = Symbol('PROXYMITY_CONFIG');
