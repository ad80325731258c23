//! The embedded default backend: a local directory.
//!
//! ```text
//! ROOT/objects/<key>             committed objects
//! ROOT/staging/<upload>/<part>   staged parts of uploads in progress
//! ROOT/tmp/                      files being written (removed at start-up)
//! ```
//!
//! A write goes to `tmp/`, is fsync'd, then renamed into place and the directory
//! fsync'd: a crash leaves either the old object or the new one, never half of one.
//! File I/O runs on blocking threads fed through a bounded channel, so one upload
//! costs one thread and a few chunks of memory, not a task per write call.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{
    check_key, check_name, ByteRange, ByteStream, CacheBackend, Hashing, ObjectMeta, ObjectReader,
    StoredObject,
};
use crate::error::{Error, Result};

/// Chunk size of reads; large enough that a GiB is a few thousand sends.
const READ_CHUNK: usize = 512 * 1024;
/// Chunks queued between the network and the disk thread.
const QUEUE_DEPTH: usize = 32;
/// Bytes gathered before one write call.
const WRITE_BUFFER: usize = 1024 * 1024;

/// Blobs as files under one directory (`objects/`, `staging/`, `tmp/`), written
/// to a temporary file, fsync'd and renamed into place.
#[derive(Debug, Clone)]
pub struct FsBackend {
    root: PathBuf,
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

impl FsBackend {
    /// Opens (creating) the store at `root` and removes leftovers of interrupted writes.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for dir in ["objects", "staging", "tmp"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path)
                .map_err(io_error(format!("creating {}", path.display())))?;
        }
        let tmp = root.join("tmp");
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(FsBackend { root })
    }

    /// The directory everything lives under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn object_path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join("objects").join(key))
    }

    fn staging_dir(&self, upload: &str) -> Result<PathBuf> {
        check_name("upload", upload)?;
        Ok(self.root.join("staging").join(upload))
    }

    /// An upload's staging directory and the path of each named part in it.
    fn staged_paths(
        &self,
        upload: &str,
        parts: &[String],
    ) -> Result<(PathBuf, Vec<(String, PathBuf)>)> {
        let staging = self.staging_dir(upload)?;
        let mut paths = Vec::with_capacity(parts.len());
        for part in parts {
            check_name("part", part)?;
            paths.push((part.clone(), staging.join(part)));
        }
        Ok((staging, paths))
    }

    fn tmp_path(&self) -> PathBuf {
        self.root
            .join("tmp")
            .join(uuid::Uuid::new_v4().simple().to_string())
    }
}

/// How a stream is written.
#[derive(Clone, Copy)]
enum Durability {
    /// A committed object: hashed, fsync'd, renamed, directory fsync'd.
    Object,
    /// A staged part: hashed (its sha256 stands for it once composed) but not
    /// fsync'd (a crash abandons the upload anyway).
    Staged,
}

/// Streams `body` into a new file at `tmp` on a blocking thread, then moves it to
/// `target`; see [`Durability`] for what else happens.
async fn write_stream(
    mut body: ByteStream,
    tmp: PathBuf,
    target: PathBuf,
    durability: Durability,
) -> Result<StoredObject> {
    let (sender, mut receiver) = mpsc::channel::<Bytes>(QUEUE_DEPTH);
    let tmp_for_writer = tmp.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<StoredObject> {
        let file = File::create(&tmp_for_writer)
            .map_err(io_error(format!("creating {}", tmp_for_writer.display())))?;
        // Network chunks are small; the disk prefers megabytes per write call.
        let mut file = std::io::BufWriter::with_capacity(WRITE_BUFFER, file);
        let mut hashing = Hashing::default();
        while let Some(chunk) = receiver.blocking_recv() {
            hashing.update(&chunk);
            file.write_all(&chunk)
                .map_err(io_error(format!("writing {}", tmp_for_writer.display())))?;
        }
        let file = file.into_inner().map_err(|e| {
            io_error(format!("writing {}", tmp_for_writer.display()))(e.into_error())
        })?;
        match durability {
            Durability::Object => {
                file.sync_all()
                    .map_err(io_error(format!("syncing {}", tmp_for_writer.display())))?;
                Ok(hashing.finish())
            }
            Durability::Staged => Ok(hashing.finish()),
        }
    });
    let mut stream_error = None;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                if sender.send(chunk).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Err(error) => {
                stream_error = Some(error);
                break;
            }
        }
    }
    drop(sender);
    let written = writer
        .await
        .map_err(|e| Error::Backend(format!("disk writer: {e}")));
    let stored = match (stream_error, written) {
        (None, Ok(Ok(stored))) => stored,
        (Some(error), _) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(Error::Truncated(error.to_string()));
        }
        (None, Ok(Err(error)) | Err(error)) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(error);
        }
    };
    let durable = matches!(durability, Durability::Object);
    tokio::task::spawn_blocking(move || publish(&tmp, &target, durable))
        .await
        .map_err(|e| Error::Backend(format!("disk writer: {e}")))??;
    Ok(stored)
}

/// Renames `tmp` to `target` (creating parent directories) and, when `durable`,
/// fsyncs the target's directory so the rename itself survives a crash.
fn publish(tmp: &Path, target: &Path, durable: bool) -> Result<()> {
    let parent = target
        .parent()
        .ok_or_else(|| Error::Backend(format!("{} has no parent", target.display())))?;
    std::fs::create_dir_all(parent).map_err(io_error(format!("creating {}", parent.display())))?;
    if let Err(error) = std::fs::rename(tmp, target) {
        let _ = std::fs::remove_file(tmp);
        return Err(Error::Io {
            context: format!("moving {} into place", target.display()),
            source: error,
        });
    }
    if durable {
        File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(format!("syncing {}", parent.display())))?;
    }
    Ok(())
}

fn meta_of(key: String, metadata: &std::fs::Metadata) -> ObjectMeta {
    let last_modified_millis = metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    ObjectMeta {
        key,
        size: metadata.len(),
        last_modified_millis,
    }
}

/// Streams `len` bytes of `file` from its current position on a blocking thread.
fn read_stream(mut file: File, len: u64) -> ByteStream {
    let (sender, receiver) = mpsc::channel::<std::io::Result<Bytes>>(QUEUE_DEPTH);
    tokio::task::spawn_blocking(move || {
        let mut left = len;
        while left > 0 {
            let want = left.min(READ_CHUNK as u64) as usize;
            let mut buffer = vec![0u8; want];
            let result = file.read_exact(&mut buffer).map(|()| Bytes::from(buffer));
            let failed = result.is_err();
            if sender.blocking_send(result).is_err() || failed {
                return; // the reader went away, or the error was delivered
            }
            left -= want as u64;
        }
    });
    Box::pin(tokio_stream_from(receiver))
}

fn tokio_stream_from<T: Send + 'static>(
    mut receiver: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

fn list_dir(dir: &Path, key_prefix: &str, out: &mut Vec<ObjectMeta>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let key = if key_prefix.is_empty() {
            name
        } else {
            format!("{key_prefix}/{name}")
        };
        let metadata = entry.metadata()?;
        if metadata.is_dir() {
            list_dir(&entry.path(), &key, out)?;
        } else {
            out.push(meta_of(key, &metadata));
        }
    }
    Ok(())
}

/// sha256 and total length of `paths` read in order.
fn hash_files(paths: &[(String, PathBuf)]) -> Result<StoredObject> {
    let mut hashing = Hashing::default();
    let mut buffer = vec![0u8; 1024 * 1024];
    for (_, path) in paths {
        let mut input =
            File::open(path).map_err(io_error(format!("opening {}", path.display())))?;
        loop {
            let n = input
                .read(&mut buffer)
                .map_err(io_error(format!("reading {}", path.display())))?;
            if n == 0 {
                break;
            }
            hashing.update(&buffer[..n]);
        }
    }
    Ok(hashing.finish())
}

/// Every staged part is there: a missing one is the client's error, said clearly.
fn check_staged(paths: &[(String, PathBuf)]) -> Result<()> {
    for (part, path) in paths {
        if !path.is_file() {
            return Err(Error::InvalidInput(format!(
                "part {part:?} was never uploaded"
            )));
        }
    }
    Ok(())
}

/// Concatenates `paths` into a new file `out` (copy_file_range where the kernel
/// offers it) and fsyncs it.
fn copy_files(paths: &[(String, PathBuf)], out: &Path) -> Result<()> {
    let mut output = File::create(out).map_err(io_error(format!("creating {}", out.display())))?;
    for (_, path) in paths {
        let mut input =
            File::open(path).map_err(io_error(format!("opening {}", path.display())))?;
        std::io::copy(&mut input, &mut output).map_err(io_error(format!(
            "copying {} into {}",
            path.display(),
            out.display()
        )))?;
    }
    output
        .sync_all()
        .map_err(io_error(format!("syncing {}", out.display())))
}

#[async_trait]
impl CacheBackend for FsBackend {
    fn name(&self) -> &'static str {
        "fs"
    }

    async fn put(&self, key: &str, body: ByteStream) -> Result<StoredObject> {
        let target = self.object_path(key)?;
        write_stream(body, self.tmp_path(), target, Durability::Object).await
    }

    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<ObjectReader> {
        let path = self.object_path(key)?;
        let key = key.to_string();
        tokio::task::spawn_blocking(move || -> Result<ObjectReader> {
            let mut file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::NotFound(key))
                }
                Err(e) => return Err(io_error(format!("opening {}", path.display()))(e)),
            };
            let size = file
                .metadata()
                .map_err(io_error(format!("reading {}", path.display())))?
                .len();
            let (start, end) = match range {
                None => (0, size),
                Some(range) => (range.start.min(size), range.end.min(size)),
            };
            if start > 0 {
                file.seek(SeekFrom::Start(start))
                    .map_err(io_error(format!("seeking {}", path.display())))?;
            }
            Ok(ObjectReader {
                size,
                body: read_stream(file, end.saturating_sub(start)),
            })
        })
        .await
        .map_err(|e| Error::Backend(format!("disk reader: {e}")))?
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.object_path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(metadata) if metadata.is_file() => Ok(Some(meta_of(key.to_string(), &metadata))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(format!("reading {}", path.display()))(e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.object_path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(format!("removing {}", path.display()))(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let objects = self.root.join("objects");
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            list_dir(&objects, "", &mut out).map_err(io_error("listing objects"))?;
            out.retain(|meta| meta.key.starts_with(&prefix));
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
        .map_err(|e| Error::Backend(format!("listing: {e}")))?
    }

    async fn put_part(&self, upload: &str, part: &str, body: ByteStream) -> Result<StoredObject> {
        check_name("part", part)?;
        let target = self.staging_dir(upload)?.join(part);
        write_stream(body, self.tmp_path(), target, Durability::Staged).await
    }

    async fn complete(&self, upload: &str, parts: &[String], key: &str) -> Result<StoredObject> {
        let (staging, paths) = self.staged_paths(upload, parts)?;
        let target = self.object_path(key)?;
        let tmp = self.tmp_path();
        tokio::task::spawn_blocking(move || -> Result<StoredObject> {
            check_staged(&paths)?;
            // Two passes over the parts (fresh in the page cache) run side by side:
            // one copies them into the object in the kernel (copy_file_range), the
            // other hashes them. Each takes about as long as the other.
            let hashed = std::thread::scope(|scope| {
                let hasher = scope.spawn(|| hash_files(&paths));
                let copied = copy_files(&paths, &tmp);
                let hashed = hasher
                    .join()
                    .map_err(|_| Error::Backend("hashing thread panicked".into()))?;
                copied.and(hashed)
            });
            let stored = match hashed {
                Ok(stored) => stored,
                Err(error) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(error);
                }
            };
            publish(&tmp, &target, true)?;
            let _ = std::fs::remove_dir_all(&staging);
            Ok(stored)
        })
        .await
        .map_err(|e| Error::Backend(format!("completing upload: {e}")))?
    }

    async fn compose(&self, upload: &str, parts: &[String], key: &str) -> Result<u64> {
        let (staging, paths) = self.staged_paths(upload, parts)?;
        let target = self.object_path(key)?;
        let tmp = self.tmp_path();
        tokio::task::spawn_blocking(move || -> Result<u64> {
            check_staged(&paths)?;
            if let Err(error) = copy_files(&paths, &tmp) {
                let _ = std::fs::remove_file(&tmp);
                return Err(error);
            }
            let size = std::fs::metadata(&tmp)
                .map_err(io_error(format!("reading {}", tmp.display())))?
                .len();
            publish(&tmp, &target, true)?;
            let _ = std::fs::remove_dir_all(&staging);
            Ok(size)
        })
        .await
        .map_err(|e| Error::Backend(format!("composing upload: {e}")))?
    }

    async fn abort(&self, upload: &str) -> Result<()> {
        let staging = self.staging_dir(upload)?;
        match tokio::fs::remove_dir_all(&staging).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(format!("removing {}", staging.display()))(e)),
        }
    }

    async fn list_uploads(&self) -> Result<Vec<String>> {
        let staging = self.root.join("staging");
        let mut uploads = Vec::new();
        let mut entries = tokio::fs::read_dir(&staging)
            .await
            .map_err(io_error(format!("listing {}", staging.display())))?;
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(io_error(format!("listing {}", staging.display())))?
        {
            if let Some(name) = entry.file_name().to_str() {
                uploads.push(name.to_string());
            }
        }
        uploads.sort();
        Ok(uploads)
    }
}
