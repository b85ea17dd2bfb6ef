/**
 * Application logs (start-up, config, health transitions, failures) through pino, as a Nest
 * LoggerService: human-readable (pino-pretty) when stdout is a terminal, one JSON object per
 * line otherwise, so a log shipper can parse them. Writes are synchronous: these lines are few,
 * and the last ones before an exit must not be lost.
 */
import type { LoggerService, LogLevel } from '@nestjs/common';
import { createRequire } from 'node:module';
import pino from 'pino';

/** pino-pretty is loaded only when pretty output is wanted (a terminal): it costs memory otherwise. */
const load = createRequire(import.meta.url);

export type LogFormat = 'json' | 'pretty';

/** Nest's levels, most severe first, and pino's name for each. */
export const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'log', 'debug', 'verbose'];
const PINO_LEVEL: Readonly<Record<LogLevel, pino.Level>> = { fatal: 'fatal', error: 'error', warn: 'warn', log: 'info', debug: 'debug', verbose: 'trace' };

export class AppLogger implements LoggerService {
  readonly pino: pino.Logger;

  constructor(level: LogLevel = 'log', format: LogFormat = process.stdout.isTTY ? 'pretty' : 'json', stream?: NodeJS.WritableStream) {
    const out =
      stream ??
      (format === 'pretty'
        ? (load('pino-pretty') as (opts: object) => NodeJS.WritableStream)({ sync: true, colorize: true, ignore: 'pid,hostname,context', messageFormat: '[{context}] {msg}', translateTime: 'SYS:HH:MM:ss.l' })
        : pino.destination({ dest: 1, sync: true }));
    this.pino = pino({ level: PINO_LEVEL[level], base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }, out);
  }

  log(message: unknown, ...rest: unknown[]): void {
    this.write('info', message, rest);
  }
  error(message: unknown, ...rest: unknown[]): void {
    // Nest passes (message, stack, context) for errors.
    this.write('error', message, rest);
  }
  warn(message: unknown, ...rest: unknown[]): void {
    this.write('warn', message, rest);
  }
  debug(message: unknown, ...rest: unknown[]): void {
    this.write('debug', message, rest);
  }
  verbose(message: unknown, ...rest: unknown[]): void {
    this.write('trace', message, rest);
  }
  fatal(message: unknown, ...rest: unknown[]): void {
    this.write('fatal', message, rest);
  }

  private write(level: pino.Level, message: unknown, rest: unknown[]): void {
    if (!this.pino.isLevelEnabled(level)) return;
    const context = typeof rest[rest.length - 1] === 'string' ? (rest[rest.length - 1] as string) : undefined;
    const stack = level === 'error' && rest.length >= 2 && typeof rest[0] === 'string' ? rest[0] : undefined;
    const fields: Record<string, unknown> = { context };
    if (stack !== undefined) fields.stack = stack;
    if (message instanceof Error) this.pino[level]({ ...fields, err: message }, message.message);
    else if (typeof message === 'object' && message !== null) this.pino[level]({ ...fields, ...message });
    else this.pino[level](fields, String(message));
  }
}
