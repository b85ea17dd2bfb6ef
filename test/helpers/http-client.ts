import http from 'node:http';

export interface TestResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  body: string;
  json<T = any>(): T;
}

export interface TestRequest {
  method?: string;
  headers?: http.OutgoingHttpHeaders;
  body?: string | Buffer;
  agent?: http.Agent | false;
  timeoutMs?: number;
}

/** One real HTTP request over loopback; resolves with the whole body as text. */
export function request(url: string, opts: TestRequest = {}): Promise<TestResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: opts.method ?? 'GET', headers: opts.headers, agent: opts.agent ?? false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8');
        resolve({ status: res.statusCode ?? 0, headers: res.headers, rawHeaders: res.rawHeaders, body, json: () => JSON.parse(body) });
      });
    });
    req.setTimeout(opts.timeoutMs ?? 10_000, () => req.destroy(new Error(`test request to ${url} timed out`)));
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** One HTTP/2 request on an open session; resolves with the response headers and the whole body as text. */
export function h2Request(client: import('node:http2').ClientHttp2Session, headers: import('node:http2').OutgoingHttpHeaders): Promise<{ headers: import('node:http2').IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = client.request(headers);
    let h: import('node:http2').IncomingHttpHeaders = {};
    let body = '';
    req.on('response', (x) => (h = x));
    req.on('data', (c) => (body += c));
    req.on('end', () => resolve({ headers: h, body }));
    req.on('error', reject);
    req.end();
  });
}
