/**
 * `npm run demo`: the three demo backends on 8081-8083 plus the proxy on 8080 with
 * ./config.yaml, in one terminal. Ctrl-C stops both (the proxy drains gracefully).
 */
import { spawn } from 'node:child_process';
import { START_FLAGS } from '../src/heap-tuning.js';
import { startDummies } from './main.js';

const dummies = await startDummies([8081, 8082, 8083], 'localhost');
for (const d of dummies) console.log(`demo backend ${d.name} listening on ${d.url}`);
const proxy = spawn(process.execPath, [...START_FLAGS, 'dist/main.js', '--config', process.env.PROXYMITY_CONFIG ?? 'config.yaml', ...process.argv.slice(2)], { stdio: 'inherit' });
console.log('try: curl -i http://localhost:8080/   and   curl http://localhost:8080/health');
const stop = (signal: NodeJS.Signals) => proxy.kill(signal);
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
proxy.on('exit', async (code) => {
  await Promise.all(dummies.map((d) => d.close()));
  process.exit(code ?? 0);
});
