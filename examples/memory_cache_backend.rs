//! A custom `CacheBackend` (blobs in memory) checked with the shared backend test
//! suite, then served by the real cache proxy router and used over HTTP.
//!
//! `cargo run -p nimbus-examples --example memory_cache_backend`

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use nimbus_cache::backend::{ByteRange, ByteStream, ObjectMeta, ObjectReader, StoredObject};
use nimbus_cache::{CacheBackend, CacheIndex, Error, Proxy, ProxyConfig, Result};
use nimbus_core::cache_token::{CachePermission, CacheTokenKeys, DEFAULT_BRANCH};
use nimbus_core::{Env, Secret};
use sha2::{Digest, Sha256};

/// Objects and staged parts in maps behind a mutex: fine for tests and small caches.
#[derive(Default)]
struct MemoryBackend {
    objects: Mutex<BTreeMap<String, (Bytes, i64)>>,
    staged: Mutex<HashMap<String, HashMap<String, Bytes>>>,
}

async fn collect(mut body: ByteStream) -> Result<Bytes> {
    let mut all = Vec::new();
    while let Some(chunk) = body.next().await {
        all.extend_from_slice(&chunk.map_err(|e| Error::Truncated(e.to_string()))?);
    }
    Ok(Bytes::from(all))
}

fn stored(bytes: &Bytes) -> StoredObject {
    StoredObject {
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
    }
}

fn check(key: &str) -> Result<()> {
    if key.is_empty() || key.starts_with('/') || key.split('/').any(|s| s.is_empty() || s == "..") {
        return Err(Error::InvalidInput(format!("invalid object key {key:?}")));
    }
    Ok(())
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[async_trait]
impl CacheBackend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn put(&self, key: &str, body: ByteStream) -> Result<StoredObject> {
        check(key)?;
        // Collected first, inserted after: a truncated body never replaces anything.
        let bytes = collect(body).await?;
        let result = stored(&bytes);
        self.objects
            .lock()
            .map_err(|_| Error::Backend("poisoned".into()))?
            .insert(key.to_string(), (bytes, now_millis()));
        Ok(result)
    }

    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<ObjectReader> {
        check(key)?;
        let objects = self
            .objects
            .lock()
            .map_err(|_| Error::Backend("poisoned".into()))?;
        let (bytes, _) = objects
            .get(key)
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        let size = bytes.len() as u64;
        let (start, end) = range.map_or((0, size), |r| (r.start.min(size), r.end.min(size)));
        let slice = bytes.slice(start as usize..end.max(start) as usize);
        Ok(ObjectReader {
            size,
            body: nimbus_cache::backend::bytes_stream(slice),
        })
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        check(key)?;
        let objects = self
            .objects
            .lock()
            .map_err(|_| Error::Backend("poisoned".into()))?;
        Ok(objects.get(key).map(|(bytes, at)| ObjectMeta {
            key: key.to_string(),
            size: bytes.len() as u64,
            last_modified_millis: *at,
        }))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check(key)?;
        self.objects
            .lock()
            .map_err(|_| Error::Backend("poisoned".into()))?
            .remove(key);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let objects = self
            .objects
            .lock()
            .map_err(|_| Error::Backend("poisoned".into()))?;
        Ok(objects
            .range(prefix.to_string()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, (bytes, at))| ObjectMeta {
                key: key.clone(),
                size: bytes.len() as u64,
                last_modified_millis: *at,
            })
            .collect())
    }

    async fn put_part(&self, upload: &str, part: &str, body: ByteStream) -> Result<StoredObject> {
        check(upload)?;
        check(part)?;
        let bytes = collect(body).await?;
        let result = stored(&bytes);
        self.staged
            .lock()
            .map_err(|_| Error::Backend("poisoned".into()))?
            .entry(upload.to_string())
            .or_default()
            .insert(part.to_string(), bytes);
        Ok(result)
    }

    async fn complete(&self, upload: &str, parts: &[String], key: &str) -> Result<StoredObject> {
        check(key)?;
        let mut staged = self
            .staged
            .lock()
            .map_err(|_| Error::Backend("poisoned".into()))?;
        let pieces = staged
            .get(upload)
            .ok_or_else(|| Error::InvalidInput(format!("no upload {upload:?}")))?;
        let mut joined = Vec::new();
        for part in parts {
            let piece = pieces
                .get(part)
                .ok_or_else(|| Error::InvalidInput(format!("part {part:?} was never uploaded")))?;
            joined.extend_from_slice(piece);
        }
        staged.remove(upload);
        drop(staged);
        let bytes = Bytes::from(joined);
        let result = stored(&bytes);
        self.objects
            .lock()
            .map_err(|_| Error::Backend("poisoned".into()))?
            .insert(key.to_string(), (bytes, now_millis()));
        Ok(result)
    }

    async fn abort(&self, upload: &str) -> Result<()> {
        check(upload)?;
        self.staged
            .lock()
            .map_err(|_| Error::Backend("poisoned".into()))?
            .remove(upload);
        Ok(())
    }

    async fn list_uploads(&self) -> Result<Vec<String>> {
        let staged = self
            .staged
            .lock()
            .map_err(|_| Error::Backend("poisoned".into()))?;
        let mut uploads: Vec<String> = staged.keys().cloned().collect();
        uploads.sort();
        Ok(uploads)
    }
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    // 1. The shared suite every backend passes (feature `testsuite` of nimbus-cache).
    use nimbus_cache::testsuite as suite;
    let backend = MemoryBackend::default();
    suite::put_get_head_delete(&backend).await;
    suite::ranged_reads(&backend).await;
    suite::list_by_prefix(&backend).await;
    suite::staged_upload_joins_parts_in_the_given_order(&backend).await;
    suite::interrupted_writes_leave_nothing(&backend).await;
    println!("memory backend: shared CacheBackend suite passed");

    // 2. Behind the real proxy: config from a map, an index in a temporary file.
    let dir = std::env::temp_dir().join(format!("nimbus-example-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let secret = "example-cache-secret-0123456789";
    let data_dir = dir.display().to_string();
    let config = ProxyConfig::from_env(&Env::from_map([
        ("NIMBUS_DATA_DIR", data_dir.as_str()),
        ("NIMBUS_CACHE_SHARED_SECRET", secret),
        ("NIMBUS_JWT_SECRET", secret),
    ]))?;
    let index = CacheIndex::open(&dir.join("index.db").display().to_string()).await?;
    let proxy = Proxy::new(&config, Arc::new(MemoryBackend::default()), index)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        nimbus_cache::server::serve(&config, proxy, listener, std::future::pending()).await
    });

    // 3. A job's token, a save and a restore through the artifact API.
    let token = CacheTokenKeys::new(&Secret::new(secret)).mint(
        1,
        "acme/app",
        DEFAULT_BRANCH,
        DEFAULT_BRANCH,
        CachePermission::Write,
        Duration::from_secs(600),
    )?;
    let http = reqwest::Client::new();
    let saved = http
        .put(format!("{url}/api/cache/greeting"))
        .bearer_auth(&token)
        .body("hello from memory")
        .send()
        .await?;
    println!("PUT /api/cache/greeting -> {}", saved.status());
    let restored = http
        .get(format!("{url}/api/cache/greeting"))
        .bearer_auth(&token)
        .send()
        .await?;
    let status = restored.status();
    let body = restored.text().await?;
    println!("GET /api/cache/greeting -> {status}: {body}");
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
    if body != "hello from memory" {
        return Err("the entry did not come back".into());
    }
    Ok(())
}
