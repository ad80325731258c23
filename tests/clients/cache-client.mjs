// Drives the official @actions/cache client against the Nimbus cache proxy.
//
//   node cache-client.mjs save    PATH KEY
//   node cache-client.mjs restore PATH KEY [RESTORE_KEY...]
//
// The protocol comes from the environment, as on a runner: ACTIONS_CACHE_SERVICE_V2
// + ACTIONS_RESULTS_URL for v2, ACTIONS_CACHE_URL for v1, ACTIONS_RUNTIME_TOKEN for
// auth. Prints one JSON line with the outcome and the seconds it took; exits 1 on
// failure (the client only warns on most errors, so a missing id is a failure).
import * as cache from '@actions/cache';

const [command, path, key, ...restoreKeys] = process.argv.slice(2);
if (!command || !path || !key) {
  console.error('usage: cache-client.mjs save|restore PATH KEY [RESTORE_KEY...]');
  process.exit(2);
}

const started = process.hrtime.bigint();
const seconds = () => Number(process.hrtime.bigint() - started) / 1e9;
try {
  if (command === 'save') {
    const cacheId = await cache.saveCache([path], key);
    console.log(JSON.stringify({ command, key, cacheId, seconds: seconds() }));
    process.exit(cacheId > 0 ? 0 : 1);
  } else if (command === 'restore') {
    const matchedKey = await cache.restoreCache([path], key, restoreKeys);
    console.log(JSON.stringify({ command, key, matchedKey: matchedKey ?? null, seconds: seconds() }));
    process.exit(matchedKey ? 0 : 1);
  } else {
    console.error(`unknown command ${command}`);
    process.exit(2);
  }
} catch (error) {
  console.error(`cache-client: ${error.stack ?? error}`);
  process.exit(1);
}
