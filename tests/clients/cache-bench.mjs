// Times the transfer phases of the official @actions/cache client (v2) against a
// cache server, with the client's own upload (Azure SDK uploadFile: single shot up
// to 128 MiB, else 64 MiB blocks, 8 in parallel) and download (streamed GET) code.
// The tar/zstd step of saveCache/restoreCache is left out: it measures the
// runner's CPU, not the cache.
//
//   node cache-bench.mjs big ARCHIVE OUT              one entry from an existing file
//   node cache-bench.mjs small COUNT BYTES DIR        COUNT entries of BYTES each
//   node cache-bench.mjs get URL OUT                  one plain download (reference servers)
//
// Environment as on a runner: ACTIONS_RESULTS_URL, ACTIONS_RUNTIME_TOKEN,
// ACTIONS_CACHE_SERVICE_V2=true. Prints one JSON object.
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { internalCacheTwirpClient } from './node_modules/@actions/cache/lib/internal/shared/cacheTwirpClient.js';
import { saveCache, downloadCache } from './node_modules/@actions/cache/lib/internal/cacheHttpClient.js';

const UPLOAD_OPTIONS = { uploadChunkSize: 64 * 1024 * 1024, uploadConcurrency: 8, useAzureSdk: true };
const now = () => Number(process.hrtime.bigint()) / 1e9;

async function upload(twirp, key, version, file) {
  const created = await twirp.CreateCacheEntry({ key, version });
  if (!created.ok) throw new Error(`CreateCacheEntry ${key}: ${created.message}`);
  await saveCache(-1, file, created.signedUploadUrl, { ...UPLOAD_OPTIONS, archiveSizeBytes: fs.statSync(file).size });
  const finalized = await twirp.FinalizeCacheEntryUpload({ key, version, sizeBytes: `${fs.statSync(file).size}` });
  if (!finalized.ok) throw new Error(`FinalizeCacheEntryUpload ${key}: ${finalized.message}`);
}

async function download(twirp, key, version, out) {
  const found = await twirp.GetCacheEntryDownloadURL({ key, restoreKeys: [], version });
  if (!found.ok) throw new Error(`GetCacheEntryDownloadURL ${key}: miss`);
  await downloadCache(found.signedDownloadUrl, out, {});
}

const [mode, ...args] = process.argv.slice(2);
const run = crypto.randomUUID();
const version = 'bench';
if (mode === 'big') {
  const [archive, out] = args;
  const twirp = internalCacheTwirpClient();
  const bytes = fs.statSync(archive).size;
  // The upload's wall-clock span (so the harness can read the server's CPU over
  // it) and this client's own CPU time during it.
  const startedMs = Date.now();
  const cpu = process.cpuUsage();
  let t = now();
  await upload(twirp, `big-${run}`, version, archive);
  const uploadSeconds = now() - t;
  const used = process.cpuUsage(cpu);
  const endedMs = Date.now();
  t = now();
  await download(twirp, `big-${run}`, version, out);
  const downloadSeconds = now() - t;
  if (fs.statSync(out).size !== bytes) throw new Error('downloaded size differs');
  console.log(JSON.stringify({
    mode, bytes, upload_seconds: uploadSeconds, download_seconds: downloadSeconds,
    upload_started_ms: startedMs, upload_ended_ms: endedMs,
    upload_client_cpu_seconds: (used.user + used.system) / 1e6,
  }));
} else if (mode === 'small') {
  const [countText, sizeText, dir] = args;
  const count = Number(countText);
  const size = Number(sizeText);
  const twirp = internalCacheTwirpClient();
  fs.mkdirSync(dir, { recursive: true });
  const files = [];
  for (let i = 0; i < count; i++) {
    const file = path.join(dir, `entry-${i}.bin`);
    fs.writeFileSync(file, crypto.randomBytes(size));
    files.push(file);
  }
  let t = now();
  for (let i = 0; i < count; i++) await upload(twirp, `small-${run}-${i}`, version, files[i]);
  const uploadSeconds = now() - t;
  t = now();
  for (let i = 0; i < count; i++) await download(twirp, `small-${run}-${i}`, version, `${files[i]}.back`);
  const downloadSeconds = now() - t;
  for (let i = 0; i < count; i++) {
    if (fs.statSync(`${files[i]}.back`).size !== size) throw new Error(`entry ${i}: size differs`);
  }
  console.log(JSON.stringify({ mode, count, bytes: count * size, upload_seconds: uploadSeconds, download_seconds: downloadSeconds }));
} else if (mode === 'get') {
  const [url, out] = args;
  const t = now();
  await downloadCache(url, out, {});
  console.log(JSON.stringify({ mode, bytes: fs.statSync(out).size, download_seconds: now() - t }));
} else {
  console.error('usage: cache-bench.mjs big ARCHIVE OUT | small COUNT BYTES DIR | get URL OUT');
  process.exit(2);
}
