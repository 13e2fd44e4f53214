// A keyv client laid out as LibreChat's standardCache (api/cache/cacheFactory.js):
// a KeyvRedis store whose namespace is the deployment's REDIS_KEY_PREFIX and whose
// separator is '::', under a Keyv with the cache namespace and its TTL. Driven by
// tests/keyv.py: reads {uris, prefix, namespace, ttl, ops} as JSON on stdin's first line,
// runs the operations in order and prints their results as a JSON array ('pause'
// prints {"paused": true} and a line, and waits for a line on stdin). Buffers travel
// as {"$buffer": "<base64>"}, undefined as {"$undefined": true}.
const KeyvRedis = require('@keyv/redis').default;
const { createClient, createCluster } = require('@keyv/redis');
const { Keyv } = require('keyv');

const revive = (value) => {
  if (Array.isArray(value)) return value.map(revive);
  if (value && typeof value === 'object') {
    if (typeof value.$buffer === 'string') return Buffer.from(value.$buffer, 'base64');
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, revive(v)]));
  }
  return value;
};

const wrap = (value) => {
  if (value === undefined) return { $undefined: true };
  if (Buffer.isBuffer(value)) return { $buffer: value.toString('base64') };
  if (Array.isArray(value)) return value.map(wrap);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, wrap(v)]));
  }
  return value;
};

async function main() {
  // the request is the first line; a 'pause' operation waits for one more line
  const lines = require('readline').createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  const input = JSON.parse((await lines.next()).value);
  const { uris, prefix, namespace, ttl, ops } = input;
  const client =
    uris.length === 1
      ? createClient({ url: uris[0] })
      : createCluster({ rootNodes: uris.map((url) => ({ url })) });
  const keyvRedis = new KeyvRedis(client);
  const cache = new Keyv(keyvRedis, { namespace, ttl: ttl ?? undefined });
  keyvRedis.namespace = prefix;
  keyvRedis.keyPrefixSeparator = '::';
  cache.on('error', (error) => {
    process.stderr.write(`keyv error: ${error}\n`);
  });
  const results = [];
  for (const op of ops) {
    if (op.op === 'set') {
      results.push(await cache.set(op.key, revive(op.value), op.ttl ?? undefined));
    } else if (op.op === 'get') {
      results.push(wrap(await cache.get(op.key, op.raw ? { raw: true } : undefined)));
    } else if (op.op === 'delete') {
      results.push(await cache.delete(op.key));
    } else if (op.op === 'pause') {
      // connected (the operations before ran): tell the driver, wait for its go
      process.stdout.write('{"paused": true}\n');
      await lines.next();
      results.push(null);
    } else {
      throw new Error(`unknown operation ${op.op}`);
    }
  }
  process.stdout.write(JSON.stringify(results));
  await keyvRedis.disconnect();
}

main().catch((error) => {
  process.stderr.write(`${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
});
