/**
 * A pool: a named group of backends with its strategy, sticky sessions and the snapshots of
 * its eligible backends that the data plane reads. Built by LoadBalancerService from config
 * (control plane); its snapshots are replaced, never mutated, when a member's health changes.
 */
import type { Backend } from '../backend/backend.js';
import type { ProxymityConfig } from '../config/config.schema.js';

type PoolConfig = ProxymityConfig['pools'][string];
import { StickySessions } from './sticky-sessions.js';
import type { LbStrategy } from './strategy.interface.js';
import { STRATEGIES } from './strategy.registry.js';

export class Pool {
  readonly name: string;
  /** Enabled members (primaries and backups), in config order. */
  readonly members: readonly Backend[];
  readonly strategy: LbStrategy;
  readonly sticky: StickySessions | undefined;
  readonly hasBackups: boolean;
  /** Enabled, healthy primaries; then backups. Replaced on every health change of a member. */
  eligible: readonly Backend[] = [];
  eligibleBackups: readonly Backend[] = [];
  /** What the pool was built from: a reload keeps the Pool (and the strategy's position) when it is unchanged. */
  readonly signature: string;

  constructor(cfg: PoolConfig, members: readonly Backend[], stickySecret: string) {
    this.name = cfg.name;
    this.members = Object.freeze(members.filter((b) => b.enabled));
    const factory = STRATEGIES.get(cfg.strategy);
    // The schema has already rejected unknown names; this guards programmatic misuse.
    if (factory === undefined) throw new Error(`unknown load-balancing strategy "${cfg.strategy}"`);
    this.strategy = factory({ hash: cfg.hash }, { random: Math.random, now: Date.now, backends: this.members });
    this.sticky = cfg.sticky ? new StickySessions(cfg.sticky, this.members, cfg.sticky.secret ?? stickySecret) : undefined;
    this.hasBackups = this.members.some((b) => b.backup);
    this.signature = Pool.signatureOf(cfg, members);
    this.rebuild();
  }

  static signatureOf(cfg: PoolConfig, members: readonly Backend[]): string {
    return JSON.stringify([cfg.strategy, cfg.hash, cfg.sticky, members.map((b) => [b.slot, b.enabled, b.weight, b.backup, b.maxConnections, b.slowStartMs])]);
  }

  /** Recomputes the eligible snapshots (after a member's health changed). */
  rebuild(): void {
    this.eligible = Object.freeze(this.members.filter((b) => b.healthy && !b.backup));
    this.eligibleBackups = Object.freeze(this.members.filter((b) => b.healthy && b.backup));
  }
}
