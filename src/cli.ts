/**
 * The command line (main.ts runs it): read the config, start the app, handle signals. The
 * commands and flags are in USAGE below.
 */
import { endBootHeap, keepHeadroom, missingStartFlags, raiseMallocThresholds } from './heap-tuning.js';
import { Logger, type LogLevel } from '@nestjs/common';
import { AdminListenError } from './admin/index.js';
import { ConfigError, configJsonSchema, configVersion, diffConfigs, loadConfigFile, redactSecrets, resolveConfigPath, summarize, type ProxymityConfig } from './config/index.js';
import { AppLogger, LOG_LEVELS as LEVELS, type LogFormat } from './logging/index.js';
import { startProxymity } from './proxymity.js';
import { ListenerError } from './tls/index.js';

const FORMATS: readonly string[] = ['auto', 'json', 'pretty'];
const USAGE = `Usage: proxymity [--config FILE] [--log-level LEVEL] [--log-format FORMAT]
       proxymity validate [--config FILE] [--diff [--admin URL] [--token TOKEN]]
       proxymity schema

  --config, -c FILE    config file (default: $PROXYMITY_CONFIG, else ./config.yaml)
  --log-level LEVEL    one of ${LEVELS.join(', ')} (default: log, or $PROXYMITY_LOG_LEVEL)
  --log-format FORMAT  application logs: auto (pretty on a terminal, else JSON), json or pretty
                       (default: auto, or $PROXYMITY_LOG_FORMAT)
  --help, -h           this text

  validate             check the config and print a summary of it (exit 0), or the problems (exit 1)
    --diff             also show what would change against the config a running instance has
                       loaded (read from its admin listener)
    --admin URL        that instance's admin listener (default: from the config's admin block)
    --token TOKEN      its admin token (default: admin.token, else $PROXYMITY_ADMIN_TOKEN)
  schema               print the JSON Schema of the config file (config.schema.json)
`;

const FLAGS_WITH_VALUE = new Set(['--config', '-c', '--log-level', '--log-format', '--admin', '--token']);
const FLAGS = new Set(['--help', '-h', '--diff']);

/** The first argument that is not a known flag (or a known flag's value), if any. */
function unknownArgument(argv: string[]): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const name = a.includes('=') ? a.slice(0, a.indexOf('=')) : a;
    if (FLAGS.has(a)) continue;
    if (FLAGS_WITH_VALUE.has(name)) {
      if (!a.includes('=')) i++;
      continue;
    }
    return a;
  }
  return undefined;
}

async function main(argv: string[]): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(USAGE);
    return;
  }
  const command = argv[0] === 'validate' || argv[0] === 'schema' ? argv[0] : undefined;
  const args = command === undefined ? argv : argv.slice(1);
  const unknown = unknownArgument(args);
  if (unknown !== undefined) return fail(`unknown argument "${unknown}"\n\n${USAGE}`, 2);
  if (command === 'schema') {
    process.stdout.write(configJsonSchema());
    return;
  }
  if (command === 'validate') return validate(args);
  const level = (flagValue(argv, '--log-level') ?? process.env.PROXYMITY_LOG_LEVEL ?? 'log') as LogLevel;
  if (!LEVELS.includes(level)) return fail(`--log-level: unknown "${level}"; expected one of ${LEVELS.join(', ')}`, 2);
  const format = flagValue(argv, '--log-format') ?? process.env.PROXYMITY_LOG_FORMAT ?? 'auto';
  if (!FORMATS.includes(format)) return fail(`--log-format: unknown "${format}"; expected one of ${FORMATS.join(', ')}`, 2);
  const appLogger = new AppLogger(level, format === 'auto' ? undefined : (format as LogFormat));
  Logger.overrideLogger(appLogger);

  const loaded = readConfig(argv, 2);
  if (loaded === undefined) return;
  const { config, file: configFile } = loaded;

  const logger = new Logger('Proxymity');
  let proxy;
  try {
    proxy = await startProxymity(config, { logger: appLogger, configFile });
  } catch (err) {
    endBootHeap();
    const e = err as NodeJS.ErrnoException & { syscall?: string; path?: string };
    if (e instanceof AdminListenError || e instanceof ListenerError) return fail(e.message, 1);
    if (e.syscall === 'open' && e.path === config.accessLog.output) return fail(`accessLog.output: cannot open ${e.path}: ${e.code} (${e.message})`, 1);
    if (e.syscall === 'listen' || e.code === 'EADDRINUSE' || e.code === 'EACCES' || e.code === 'EADDRNOTAVAIL' || e.code === 'ENOTFOUND') {
      return fail(`cannot listen on ${config.proxy.host}:${config.proxy.port}: ${e.code} (${e.message})`, 1);
    }
    throw err;
  }
  endBootHeap();
  keepHeadroom();
  raiseMallocThresholds();
  const pools = Object.values(config.pools);
  const enabled = pools.reduce((n, p) => n + p.backends.filter((b) => b.enabled).length, 0);
  const strategies = [...new Set(pools.map((p) => p.strategy))].join('/');
  const shape = pools.length === 1 ? `strategy ${strategies}` : `${pools.length} pools, ${config.routes.length} routes`;
  logger.log(`listening on ${proxy.url}, ${enabled} backend(s), ${shape}${proxy.adminUrl ? `, admin on ${proxy.adminUrl}` : ''}`);
  const missing = missingStartFlags(process.execArgv);
  if (missing.length > 0) {
    logger.log(`node was started without ${missing.join(' ')} (npm start and nest start pass it): if V8's memory reducer runs before the first request, Node's per-request code stays about 5% slower (README, "V8 memory reducer")`);
  }

  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.warn(`${signal} again: exiting now`);
      process.exit(1);
    }
    stopping = true;
    proxy.close(signal).then(
      () => process.exit(0),
      (err: Error) => {
        logger.error(`shutdown failed: ${err.stack ?? err.message}`);
        process.exit(1);
      },
    );
  };
  // Our own handlers rather than app.enableShutdownHooks(): Nest re-raises the signal after
  // its hooks (exit status 143 instead of 0) and ignores a second signal.
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

/** `proxymity validate`: exit 0 with a summary (and a diff), or 1 with the problems. */
async function validate(argv: string[]): Promise<void> {
  const loaded = readConfig(argv, 1);
  if (loaded === undefined) return;
  const { config, file } = loaded;
  process.stdout.write(`${summarize(config, file, configVersion(config))}\n`);
  if (!argv.includes('--diff')) return;
  const admin = flagValue(argv, '--admin') ?? `http://${config.admin.host.includes(':') ? `[${config.admin.host}]` : config.admin.host}:${config.admin.port}`;
  const token = flagValue(argv, '--token') ?? config.admin.token ?? process.env.PROXYMITY_ADMIN_TOKEN;
  let running: { version: string; config: ProxymityConfig };
  try {
    const res = await fetch(`${admin.replace(/\/$/, '')}/config`, { headers: token ? { authorization: `Bearer ${token}` } : {}, signal: AbortSignal.timeout(5000) });
    if (!res.ok) return fail(`--diff: GET ${admin}/config answered ${res.status}${res.status === 401 ? ' (give --token)' : ''}`, 1);
    running = (await res.json()) as { version: string; config: ProxymityConfig };
  } catch (err) {
    return fail(`--diff: cannot reach the running instance at ${admin}: ${(err as Error).message}`, 1);
  }
  const lines = diffConfigs(running.config, redactSecrets(config));
  process.stdout.write(`\ndiff against the running config (version ${running.version}):\n${lines.length === 0 ? '  no changes\n' : `${lines.map((l) => `  ${l}`).join('\n')}\n`}`);
}

/** The config named by --config (or the default), or undefined after printing its problems and setting `exitCode`. */
function readConfig(argv: string[], exitCode: number): { config: ProxymityConfig; file: string } | undefined {
  try {
    const file = resolveConfigPath(argv, process.env);
    return { config: loadConfigFile(file), file };
  } catch (err) {
    if (err instanceof ConfigError) {
      fail(err.message, exitCode);
      return undefined;
    }
    throw err;
  }
}

function flagValue(argv: string[], flag: string): string | undefined {
  const i = argv.findIndex((a) => a === flag || a.startsWith(`${flag}=`));
  if (i < 0) return undefined;
  return argv[i].includes('=') ? argv[i].slice(flag.length + 1) : argv[i + 1];
}

function fail(message: string, code: number): void {
  process.stderr.write(`${message}\n`);
  process.exitCode = code;
}

// Last resort: a bug that escaped every handler is logged, then the process exits so a
// supervisor restarts it in a known state.
process.on('uncaughtException', (err) => {
  new Logger('Proxymity').fatal(`uncaught exception: ${err.stack ?? err.message}`);
  process.exit(70);
});
process.on('unhandledRejection', (reason) => {
  new Logger('Proxymity').fatal(`unhandled rejection: ${reason instanceof Error ? (reason.stack ?? reason.message) : String(reason)}`);
  process.exit(70);
});

void main(process.argv.slice(2));
