//! The embedded default backend: a local directory.
//!
//! ```text
//! ROOT/objects/<key>             committed objects, one file each
//! ROOT/manifests/<key>           objects composed of parts: the parts' list
//! ROOT/composed/<id>/<part>      the parts of composed objects
//! ROOT/staging/<upload>/<part>   staged parts of uploads in progress
//! ROOT/tmp/                      files being written (removed at start-up)
//! ```
//!
//! A write goes to `tmp/`, is fsync'd, then renamed into place and the directory
//! fsync'd: a crash leaves either the old object or the new one, never half of one.
//!
//! `compose` writes no byte again: the upload's staged parts (each fsync'd as it
//! was staged, so the disk works while the next parts arrive) move, as a
//! directory, to `composed/`, and a manifest under `manifests/<key>` lists them in
//! order; reads stream the parts one after another. A key is either a file or a
//! manifest, never told apart by content (an uploaded object could look like a
//! manifest). `complete` (which must hash the whole) still joins into one file.
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
/// Bytes written between two requests to start writing them out.
const WRITEBACK_BYTES: u64 = 8 * 1024 * 1024;

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
        for dir in ["objects", "manifests", "composed", "staging", "tmp"] {
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
        let backend = FsBackend { root };
        backend.remove_unlisted_compositions()?;
        Ok(backend)
    }

    /// Removes `composed/` directories no manifest names: a crash between moving
    /// an upload's parts there and writing its manifest leaves one.
    fn remove_unlisted_compositions(&self) -> Result<()> {
        let mut manifests = Vec::new();
        list_dir(&self.root.join("manifests"), "", &mut manifests)
            .map_err(io_error("listing manifests"))?;
        let mut listed = std::collections::HashSet::new();
        for meta in manifests {
            if let Ok(manifest) = self.read_manifest(&meta.key) {
                listed.insert(manifest.dir);
            }
        }
        let composed = self.root.join("composed");
        if let Ok(entries) = std::fs::read_dir(&composed) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !listed.contains(&name) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(())
    }

    fn manifest_path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join("manifests").join(key))
    }

    /// The manifest of composed object `key`; `NotFound` when there is none.
    fn read_manifest(&self, key: &str) -> Result<Manifest> {
        let path = self.manifest_path(key)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(key.to_string()))
            }
            Err(e) => return Err(io_error(format!("reading {}", path.display()))(e)),
        };
        Manifest::parse(&text)
            .ok_or_else(|| Error::Backend(format!("manifest {} is damaged", path.display())))
    }

    /// Removes composed object `key` (manifest first: a crash in between leaves
    /// an unlisted directory, removed at the next open).
    fn remove_composed(&self, key: &str) -> Result<()> {
        let manifest = match self.read_manifest(key) {
            Ok(manifest) => manifest,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(error) => return Err(error),
        };
        let path = self.manifest_path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(format!("removing {}", path.display()))(e)),
        }
        let _ = std::fs::remove_dir_all(self.root.join("composed").join(&manifest.dir));
        Ok(())
    }

    /// Reads composed object `key` (blocking): `NotFound` without a manifest.
    fn get_composed(&self, key: &str, range: Option<ByteRange>) -> Result<ObjectReader> {
        let manifest = self.read_manifest(key)?;
        let size = manifest.size();
        let (start, end) = match range {
            None => (0, size),
            Some(range) => (range.start.min(size), range.end.min(size)),
        };
        let mut segments = Vec::new();
        let mut offset = 0u64;
        for (path, part_size) in self.composed_files(&manifest) {
            let (part_start, part_end) = (offset, offset + part_size);
            offset = part_end;
            let (from, to) = (start.max(part_start), end.min(part_end));
            if from < to {
                segments.push((path, from - part_start, to - from));
            }
        }
        Ok(ObjectReader {
            size,
            body: read_files_stream(segments),
        })
    }

    /// Describes composed object `key` (blocking), or `None`.
    fn composed_meta(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let manifest = match self.read_manifest(key) {
            Ok(manifest) => manifest,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(error) => return Err(error),
        };
        let path = self.manifest_path(key)?;
        let metadata =
            std::fs::metadata(&path).map_err(io_error(format!("reading {}", path.display())))?;
        let mut meta = meta_of(key.to_string(), &metadata);
        meta.size = manifest.size();
        Ok(Some(meta))
    }

    /// Composes object `key` of the staged `paths` without copying (blocking):
    /// drops staged parts the list does not name, moves the upload's directory
    /// under `composed/`, then writes the manifest, each step made durable.
    fn compose_in_place(
        &self,
        staging: &Path,
        paths: &[(String, PathBuf)],
        key: &str,
    ) -> Result<u64> {
        if paths.is_empty() {
            // Nothing to move: the object is an empty file.
            let tmp = self.tmp_path();
            File::create(&tmp)
                .and_then(|file| file.sync_all())
                .map_err(io_error(format!("writing {}", tmp.display())))?;
            publish(&tmp, &self.object_path(key)?, true)?;
            self.remove_composed(key)?;
            let _ = std::fs::remove_dir_all(staging);
            return Ok(0);
        }
        let listed: std::collections::HashSet<&str> =
            paths.iter().map(|(name, _)| name.as_str()).collect();
        let mut parts = Vec::with_capacity(paths.len());
        for (name, path) in paths {
            let size = std::fs::metadata(path)
                .map_err(io_error(format!("reading {}", path.display())))?
                .len();
            parts.push((name.clone(), size));
        }
        if let Ok(entries) = std::fs::read_dir(staging) {
            for entry in entries.flatten() {
                if !listed.contains(entry.file_name().to_string_lossy().as_ref()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        // The parts' data was synced as each was staged; their names in the
        // upload's directory are made durable here, then the move.
        File::open(staging)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(format!("syncing {}", staging.display())))?;
        let dir = uuid::Uuid::new_v4().simple().to_string();
        let composed = self.root.join("composed");
        std::fs::rename(staging, composed.join(&dir))
            .map_err(io_error(format!("moving {} into place", staging.display())))?;
        File::open(&composed)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(format!("syncing {}", composed.display())))?;
        let manifest = Manifest { dir, parts };
        let tmp = self.tmp_path();
        let written = File::create(&tmp).and_then(|mut file| {
            file.write_all(manifest.render().as_bytes())?;
            file.sync_all()
        });
        if let Err(error) = written {
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_dir_all(composed.join(&manifest.dir));
            return Err(io_error(format!("writing {}", tmp.display()))(error));
        }
        // Replacing: a plain file under the key goes, so the key means this.
        let old = self.read_manifest(key).ok();
        publish(&tmp, &self.manifest_path(key)?, true)?;
        let _ = std::fs::remove_file(self.object_path(key)?);
        if let Some(old) = old {
            let _ = std::fs::remove_dir_all(composed.join(old.dir));
        }
        Ok(manifest.size())
    }

    /// The files of composed object `key` in order, with their sizes.
    fn composed_files(&self, manifest: &Manifest) -> Vec<(PathBuf, u64)> {
        let dir = self.root.join("composed").join(&manifest.dir);
        manifest
            .parts
            .iter()
            .map(|(name, size)| (dir.join(name), *size))
            .collect()
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

/// A composed object: the directory under `composed/` holding its parts, and
/// the parts in order with their sizes (a part may be listed more than once).
struct Manifest {
    dir: String,
    parts: Vec<(String, u64)>,
}

const MANIFEST_HEADER: &str = "nimbus composed object v1";

impl Manifest {
    fn size(&self) -> u64 {
        self.parts.iter().map(|(_, size)| size).sum()
    }

    fn render(&self) -> String {
        let mut text = format!("{MANIFEST_HEADER}\n{}\n", self.dir);
        for (name, size) in &self.parts {
            text.push_str(&format!("{name} {size}\n"));
        }
        text
    }

    /// The manifest in `text`; `None` when it is not one (names are checked
    /// again: they become paths).
    fn parse(text: &str) -> Option<Manifest> {
        let mut lines = text.lines();
        if lines.next()? != MANIFEST_HEADER {
            return None;
        }
        let dir = lines.next()?.to_string();
        check_name("composition", &dir).ok()?;
        let mut parts = Vec::new();
        for line in lines {
            let (name, size) = line.split_once(' ')?;
            check_name("part", name).ok()?;
            parts.push((name.to_string(), size.parse().ok()?));
        }
        Some(Manifest { dir, parts })
    }
}

/// How a stream is written.
#[derive(Clone, Copy)]
enum Durability {
    /// A committed object: hashed, fsync'd, renamed, directory fsync'd.
    Object,
    /// A staged part: hashed (its sha256 stands for it once composed) and
    /// fsync'd before it is acknowledged, so the disk writes it while the next
    /// parts arrive; composing then moves it, without writing it again.
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
        let (mut written, mut unsent) = (0u64, 0u64);
        while let Some(chunk) = receiver.blocking_recv() {
            hashing.update(&chunk);
            file.write_all(&chunk)
                .map_err(io_error(format!("writing {}", tmp_for_writer.display())))?;
            unsent += chunk.len() as u64;
            if unsent >= WRITEBACK_BYTES {
                file.flush()
                    .map_err(io_error(format!("writing {}", tmp_for_writer.display())))?;
                start_writeback(file.get_ref(), written, unsent);
                written += unsent;
                unsent = 0;
            }
        }
        let file = file.into_inner().map_err(|e| {
            io_error(format!("writing {}", tmp_for_writer.display()))(e.into_error())
        })?;
        match durability {
            Durability::Object => file.sync_all(),
            Durability::Staged => file.sync_data(),
        }
        .map_err(io_error(format!("syncing {}", tmp_for_writer.display())))?;
        Ok(hashing.finish())
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

/// Has the kernel start writing `len` bytes of `file` at `offset` to disk now,
/// without waiting (POSIX_FADV_DONTNEED on Linux starts writeback of dirty pages,
/// then drops the clean ones): the disk works while the rest of the body
/// arrives, and the fsync at the end waits only for the tail. Advice only: a
/// failure changes nothing but speed.
fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    let _ = nix::fcntl::posix_fadvise(
        file,
        offset,
        len,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
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
    tokio::task::spawn_blocking(move || pump(&mut file, len, &sender));
    Box::pin(tokio_stream_from(receiver))
}

/// Sends `len` bytes of `file`, from its current position, in [`READ_CHUNK`]s;
/// false once the reader went away or an error was delivered.
fn pump(file: &mut File, len: u64, sender: &mpsc::Sender<std::io::Result<Bytes>>) -> bool {
    let mut left = len;
    while left > 0 {
        let want = left.min(READ_CHUNK as u64) as usize;
        let mut buffer = vec![0u8; want];
        let result = file.read_exact(&mut buffer).map(|()| Bytes::from(buffer));
        let failed = result.is_err();
        if sender.blocking_send(result).is_err() || failed {
            return false;
        }
        left -= want as u64;
    }
    true
}

/// Streams `segments` (file, offset in it, bytes) one after another on a
/// blocking thread: a composed object's parts.
fn read_files_stream(segments: Vec<(PathBuf, u64, u64)>) -> ByteStream {
    let (sender, receiver) = mpsc::channel::<std::io::Result<Bytes>>(QUEUE_DEPTH);
    tokio::task::spawn_blocking(move || {
        for (path, offset, len) in segments {
            let opened = File::open(&path).and_then(|mut file| {
                file.seek(SeekFrom::Start(offset))?;
                Ok(file)
            });
            let mut file = match opened {
                Ok(file) => file,
                Err(error) => {
                    let _ = sender.blocking_send(Err(error));
                    return;
                }
            };
            if !pump(&mut file, len, &sender) {
                return;
            }
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
        let stored = write_stream(body, self.tmp_path(), target, Durability::Object).await?;
        // The key is now this file; a composed object under it is replaced.
        let backend = self.clone();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || backend.remove_composed(&key))
            .await
            .map_err(|e| Error::Backend(format!("removing: {e}")))??;
        Ok(stored)
    }

    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<ObjectReader> {
        let path = self.object_path(key)?;
        let backend = self.clone();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || -> Result<ObjectReader> {
            let mut file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return backend.get_composed(&key, range)
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
            Ok(metadata) if metadata.is_file() => {
                return Ok(Some(meta_of(key.to_string(), &metadata)))
            }
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(format!("reading {}", path.display()))(e)),
        }
        let backend = self.clone();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || backend.composed_meta(&key))
            .await
            .map_err(|e| Error::Backend(format!("disk reader: {e}")))?
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.object_path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(format!("removing {}", path.display()))(e)),
        }
        let backend = self.clone();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || backend.remove_composed(&key))
            .await
            .map_err(|e| Error::Backend(format!("removing: {e}")))?
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let backend = self.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            list_dir(&backend.root.join("objects"), "", &mut out)
                .map_err(io_error("listing objects"))?;
            let mut composed = Vec::new();
            list_dir(&backend.root.join("manifests"), "", &mut composed)
                .map_err(io_error("listing manifests"))?;
            for meta in composed {
                if let Ok(Some(meta)) = backend.composed_meta(&meta.key) {
                    out.push(meta);
                }
            }
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
        self.object_path(key)?;
        let backend = self.clone();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || -> Result<u64> {
            check_staged(&paths)?;
            backend.compose_in_place(&staging, &paths, &key)
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
