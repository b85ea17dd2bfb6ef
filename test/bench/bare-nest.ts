/**
 * The memory reference of the benchmark: a bare Nest 12 app (Express platform, one controller)
 * with nothing of Proxymity in it, to set Proxymity's idle RSS against.
 *
 *   node build/test/bench/bare-nest.js --port 0
 */
import 'reflect-metadata';
import { Controller, Get, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';

@Controller()
class HelloController {
  @Get()
  hello(): string {
    return 'ok\n';
  }
}

@Module({ controllers: [HelloController] })
class BareModule {}

const app = await NestFactory.create(BareModule, { logger: ['error'] });
await app.listen(Number(process.argv[process.argv.indexOf('--port') + 1] ?? 0), '127.0.0.1');
console.log(`listening on ${await app.getUrl()}`);
process.on('SIGTERM', () => process.exit(0));
