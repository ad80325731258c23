//! The registry index (`NIMBUS_DOCKER_CACHE_DB_PATH`): repositories and owners,
//! blobs and the repositories that may serve them, manifests, their references,
//! and tags with their last pull — in SQLite or PostgreSQL, like every index
//! (`nimbus-core/src/db.rs`; the tables are `migrations/registry/`).
//!
//! A blob is stored once (by digest) but served only through a repository it is
//! *linked* to: pushed there, mounted there by someone who could read its source,
//! or fetched from the upstream for a mirror. Knowing a digest is never enough.

use nimbus_core::db::{self, Pool};
use nimbus_core::{with_pool, OrgId};

use super::manifest::Manifest;
use super::name::{Digest, Repository};
use crate::error::Result;
use crate::index::now_millis;

const VARIABLE: &str = "NIMBUS_DOCKER_CACHE_DB_PATH";

/// Lets `repository` serve a blob.
const LINK: &str =
    "INSERT INTO registry_links (repository, digest, created_at) VALUES ($1, $2, $3) \
     ON CONFLICT (repository, digest) DO NOTHING";
/// Records a repository and its owner the first time it holds anything.
const REPOSITORY: &str = "INSERT INTO registry_repositories (name, org_id, created_at) \
     VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING";

/// A stored manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    /// The sha256 of `body`, which is how clients address it.
    pub digest: Digest,
    /// Its media type, one of [`super::manifest::MEDIA_TYPES`].
    pub media_type: String,
    /// The manifest exactly as pushed or fetched: its bytes must not change,
    /// or the digest would not match.
    pub body: Vec<u8>,
}

/// A tag and when it was last checked against the upstream (mirrors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// The manifest the tag points at.
    pub digest: Digest,
    /// When the tag was stored or last confirmed by the upstream, in Unix
    /// milliseconds.
    pub validated_at: i64,
}

/// A blob as garbage collection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRow {
    /// The blob's digest; [`super::blob_key`] gives its backend key.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// The registry index: a writer and a reader pool over its database (on
/// SQLite, one writer connection). Clones share the pools.
#[derive(Debug, Clone)]
pub struct RegistryIndex {
    writer: Pool,
    reader: Pool,
}

fn digest_of(raw: String) -> Digest {
    // Only checked digests are ever written.
    Digest::parse(&raw).unwrap_or_else(|_| Digest::of(raw.as_bytes()))
}

impl RegistryIndex {
    /// Opens `url` (a SQLite path, `sqlite://…` or `postgres://…`) and migrates it.
    pub async fn open(url: &str) -> Result<Self> {
        let pools = db::open_index(
            url,
            VARIABLE,
            8,
            16,
            sqlx::migrate!("migrations/registry/sqlite"),
            sqlx::migrate!("migrations/registry/postgres"),
        )
        .await?;
        Ok(RegistryIndex {
            writer: pools.writer,
            reader: pools.reader,
        })
    }

    /// The size of `digest` if it is linked to `repository`.
    pub async fn linked_blob(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        let size: Option<i64> = with_pool!(&self.reader, pool => {
            sqlx::query_scalar(
                "SELECT b.size FROM registry_blobs b JOIN registry_links l ON l.digest = b.digest \
                 WHERE l.repository = $1 AND b.digest = $2",
            )
            .bind(repository.as_str())
            .bind(digest.as_str())
            .fetch_optional(pool)
            .await
        })?;
        Ok(size.map(|s| s.max(0) as u64))
    }

    /// The size of `digest` if it is stored at all (for deduplication only: never
    /// to decide what a caller may read).
    pub async fn stored_blob(&self, digest: &Digest) -> Result<Option<u64>> {
        let size: Option<i64> = with_pool!(&self.reader, pool => {
            sqlx::query_scalar("SELECT size FROM registry_blobs WHERE digest = $1")
                .bind(digest.as_str())
                .fetch_optional(pool)
                .await
        })?;
        Ok(size.map(|s| s.max(0) as u64))
    }

    /// Records a stored blob (idempotent) and links it to `repository`.
    pub async fn add_blob(
        &self,
        repository: &Repository,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        let now = now_millis();
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        with_pool!(&self.writer, pool => {
            let mut tx = pool.begin().await?;
            db::query(pool, "INSERT INTO registry_blobs (digest, size, created_at, last_used) \
                 VALUES ($1, $2, $3, $3) ON CONFLICT (digest) DO UPDATE SET last_used = $3")
                .bind(digest.as_str())
                .bind(size)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            db::query(pool, LINK).bind(repository.as_str()).bind(digest.as_str()).bind(now)
                .execute(&mut *tx).await?;
            db::query(pool, REPOSITORY).bind(repository.as_str()).bind(repository.org()).bind(now)
                .execute(&mut *tx).await?;
            tx.commit().await
        })?;
        Ok(())
    }

    /// Links an already stored blob to `repository` (a cross-repository mount, or
    /// an upload of bytes that were stored already).
    pub async fn link(&self, repository: &Repository, digest: &Digest) -> Result<bool> {
        let now = now_millis();
        let linked = with_pool!(&self.writer, pool => {
            let mut tx = pool.begin().await?;
            let exists: Option<i64> = sqlx::query_scalar("SELECT size FROM registry_blobs WHERE digest = $1")
                .bind(digest.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_some() {
                db::query(pool, "UPDATE registry_blobs SET last_used = $2 WHERE digest = $1")
                    .bind(digest.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                db::query(pool, LINK).bind(repository.as_str()).bind(digest.as_str()).bind(now)
                    .execute(&mut *tx).await?;
                db::query(pool, REPOSITORY).bind(repository.as_str()).bind(repository.org()).bind(now)
                    .execute(&mut *tx).await?;
            }
            tx.commit().await.map(|()| exists.is_some())
        })?;
        Ok(linked)
    }

    /// Marks a blob used (served), for least-recently-used eviction.
    pub async fn touch_blob(&self, digest: &Digest) -> Result<()> {
        with_pool!(&self.writer, pool => {
            sqlx::query("UPDATE registry_blobs SET last_used = $2 WHERE digest = $1")
                .bind(digest.as_str())
                .bind(now_millis())
                .execute(pool)
                .await.map(drop)
        })?;
        Ok(())
    }

    /// The manifest `digest` if it is stored in `repository`.
    pub async fn manifest(
        &self,
        repository: &Repository,
        digest: &Digest,
    ) -> Result<Option<StoredManifest>> {
        let row: Option<(String, Vec<u8>)> = with_pool!(&self.reader, pool => {
            sqlx::query_as("SELECT media_type, body FROM registry_manifests WHERE repository = $1 AND digest = $2")
                .bind(repository.as_str())
                .bind(digest.as_str())
                .fetch_optional(pool)
                .await
        })?;
        Ok(row.map(|(media_type, body)| StoredManifest {
            digest: digest.clone(),
            media_type,
            body,
        }))
    }

    /// Where `tag` of `repository` points, if it exists.
    pub async fn tag(&self, repository: &Repository, tag: &str) -> Result<Option<Tag>> {
        let row: Option<(String, i64)> = with_pool!(&self.reader, pool => {
            sqlx::query_as("SELECT digest, validated_at FROM registry_tags WHERE repository = $1 AND tag = $2")
                .bind(repository.as_str())
                .bind(tag)
                .fetch_optional(pool)
                .await
        })?;
        Ok(row.map(|(digest, validated_at)| Tag {
            digest: digest_of(digest),
            validated_at,
        }))
    }

    /// What `manifest` references that `repository` does not have: blobs not
    /// linked to it, and manifests not stored in it.
    pub async fn missing_references(
        &self,
        repository: &Repository,
        manifest: &Manifest,
    ) -> Result<Vec<Digest>> {
        let mut missing = Vec::new();
        for blob in &manifest.blobs {
            if self.linked_blob(repository, blob).await?.is_none() {
                missing.push(blob.clone());
            }
        }
        for child in &manifest.manifests {
            if self.manifest(repository, child).await?.is_none() {
                missing.push(child.clone());
            }
        }
        Ok(missing)
    }

    /// Stores a manifest with its references, and points `tag` at it.
    pub async fn put_manifest(
        &self,
        repository: &Repository,
        stored: &StoredManifest,
        manifest: &Manifest,
        tag: Option<&str>,
    ) -> Result<()> {
        let now = now_millis();
        with_pool!(&self.writer, pool => {
            let mut tx = pool.begin().await?;
            db::query(pool, "INSERT INTO registry_manifests (repository, digest, media_type, body, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (repository, digest) DO NOTHING")
                .bind(repository.as_str())
                .bind(stored.digest.as_str())
                .bind(&stored.media_type)
                .bind(&stored.body)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let references = manifest.blobs.iter().map(|d| (d, "blob"))
                .chain(manifest.manifests.iter().map(|d| (d, "manifest")));
            for (target, kind) in references {
                db::query(pool, "INSERT INTO registry_references (repository, manifest, target, kind) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (repository, manifest, target) DO NOTHING")
                    .bind(repository.as_str())
                    .bind(stored.digest.as_str())
                    .bind(target.as_str())
                    .bind(kind)
                    .execute(&mut *tx)
                    .await?;
            }
            db::query(pool, REPOSITORY)
                .bind(repository.as_str())
                .bind(repository.org())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            if let Some(tag) = tag {
                db::query(pool, "INSERT INTO registry_tags (repository, tag, digest, updated_at, validated_at, last_pull) \
                     VALUES ($1, $2, $3, $4, $4, $4) ON CONFLICT (repository, tag) DO UPDATE \
                     SET digest = $3, updated_at = $4, validated_at = $4")
                    .bind(repository.as_str())
                    .bind(tag)
                    .bind(stored.digest.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        })?;
        Ok(())
    }

    /// A mirror tag the upstream confirmed unchanged.
    pub async fn tag_validated(&self, repository: &Repository, tag: &str) -> Result<()> {
        with_pool!(&self.writer, pool => {
            sqlx::query("UPDATE registry_tags SET validated_at = $3 WHERE repository = $1 AND tag = $2")
                .bind(repository.as_str())
                .bind(tag)
                .bind(now_millis())
                .execute(pool)
                .await.map(drop)
        })?;
        Ok(())
    }

    /// Records a pull of `repository` (and of `tag`, when pulled by tag).
    pub async fn record_pull(&self, repository: &Repository, tag: Option<&str>) -> Result<()> {
        let now = now_millis();
        with_pool!(&self.writer, pool => {
            let mut tx = pool.begin().await?;
            db::query(pool, "UPDATE registry_repositories SET last_pull = $2 WHERE name = $1")
                .bind(repository.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            if let Some(tag) = tag {
                db::query(pool, "UPDATE registry_tags SET last_pull = $3 WHERE repository = $1 AND tag = $2")
                    .bind(repository.as_str())
                    .bind(tag)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        })?;
        Ok(())
    }

    /// Tags of `repository` in order, `limit` of them after `last`.
    pub async fn tags(
        &self,
        repository: &Repository,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>> {
        let tags: Vec<String> = with_pool!(&self.reader, pool => {
            sqlx::query_scalar("SELECT tag FROM registry_tags WHERE repository = $1 AND tag > $2 ORDER BY tag LIMIT $3")
                .bind(repository.as_str())
                .bind(last.unwrap_or(""))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })?;
        Ok(tags)
    }

    /// Repository names, in order, `limit` after `last`: those of `org` and the
    /// mirrors (`None`: all).
    pub async fn repositories(
        &self,
        org: Option<OrgId>,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>> {
        let names: Vec<String> = with_pool!(&self.reader, pool => {
            sqlx::query_scalar("SELECT name FROM registry_repositories \
                 WHERE name > $1 AND ($2 IS NULL OR org_id IS NULL OR org_id = $2) ORDER BY name LIMIT $3")
                .bind(last.unwrap_or(""))
                .bind(org)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })?;
        Ok(names)
    }

    /// Removes one manifest, its references and the tags pointing at it.
    pub async fn delete_manifest(&self, repository: &str, digest: &str) -> Result<()> {
        with_pool!(&self.writer, pool => {
            let mut tx = pool.begin().await?;
            for statement in [
                "DELETE FROM registry_tags WHERE repository = $1 AND digest = $2",
                "DELETE FROM registry_references WHERE repository = $1 AND manifest = $2",
                "DELETE FROM registry_manifests WHERE repository = $1 AND digest = $2",
            ] {
                db::query(pool, statement).bind(repository).bind(digest).execute(&mut *tx).await?;
            }
            tx.commit().await
        })?;
        Ok(())
    }

    /// Manifests no tag and no stored index points at, created at or before `before`
    /// (`mirrors_only`: in mirror repositories only).
    pub async fn orphan_manifests(
        &self,
        before: i64,
        mirrors_only: bool,
        limit: u32,
    ) -> Result<Vec<(String, String)>> {
        let rows: Vec<(String, String)> = with_pool!(&self.reader, pool => {
            sqlx::query_as("SELECT m.repository, m.digest FROM registry_manifests m \
                 WHERE m.created_at <= $1 \
                 AND ($2 = 0 OR m.repository IN (SELECT name FROM registry_repositories WHERE org_id IS NULL)) \
                 AND NOT EXISTS (SELECT 1 FROM registry_tags t WHERE t.repository = m.repository AND t.digest = m.digest) \
                 AND NOT EXISTS (SELECT 1 FROM registry_references r \
                     WHERE r.repository = m.repository AND r.target = m.digest AND r.kind = 'manifest') \
                 ORDER BY m.created_at LIMIT $3")
                .bind(before)
                .bind(i64::from(mirrors_only))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })?;
        Ok(rows)
    }

    /// Blobs no manifest references, last used at or before `before` (`mirrors_only`:
    /// linked to no org repository, so the upstream still has them).
    pub async fn orphan_blobs(
        &self,
        before: i64,
        mirrors_only: bool,
        limit: u32,
    ) -> Result<Vec<BlobRow>> {
        let rows: Vec<(String, i64)> = with_pool!(&self.reader, pool => {
            sqlx::query_as("SELECT b.digest, b.size FROM registry_blobs b \
                 WHERE b.last_used <= $1 \
                 AND NOT EXISTS (SELECT 1 FROM registry_references r WHERE r.target = b.digest AND r.kind = 'blob') \
                 AND ($2 = 0 OR NOT EXISTS (SELECT 1 FROM registry_links l \
                     JOIN registry_repositories p ON p.name = l.repository \
                     WHERE l.digest = b.digest AND p.org_id IS NOT NULL)) \
                 ORDER BY b.last_used LIMIT $3")
                .bind(before)
                .bind(i64::from(mirrors_only))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(digest, size)| BlobRow {
                digest: digest_of(digest),
                size: size.max(0) as u64,
            })
            .collect())
    }

    /// Forgets a blob and its links (after its object was deleted), unless a
    /// manifest came to reference it meanwhile (then `false`: keep the object).
    pub async fn forget_blob(&self, digest: &Digest) -> Result<bool> {
        let forgotten = with_pool!(&self.writer, pool => {
            let mut tx = pool.begin().await?;
            let referenced: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM registry_references WHERE target = $1 AND kind = 'blob' LIMIT 1")
                .bind(digest.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            if referenced.is_none() {
                db::query(pool, "DELETE FROM registry_links WHERE digest = $1")
                    .bind(digest.as_str()).execute(&mut *tx).await?;
                db::query(pool, "DELETE FROM registry_blobs WHERE digest = $1")
                    .bind(digest.as_str()).execute(&mut *tx).await?;
            }
            tx.commit().await.map(|()| referenced.is_none())
        })?;
        Ok(forgotten)
    }

    /// Bytes of all stored blobs.
    pub async fn stored_bytes(&self) -> Result<u64> {
        let total: Option<i64> = with_pool!(&self.reader, pool => {
            sqlx::query_scalar("SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM registry_blobs")
                .fetch_one(pool)
                .await
        })?;
        Ok(total.unwrap_or(0).max(0) as u64)
    }

    /// The least recently pulled mirror tag.
    pub async fn coldest_mirror_tag(&self) -> Result<Option<(String, String)>> {
        let row: Option<(String, String)> = with_pool!(&self.reader, pool => {
            sqlx::query_as("SELECT t.repository, t.tag FROM registry_tags t \
                 JOIN registry_repositories p ON p.name = t.repository \
                 WHERE p.org_id IS NULL ORDER BY t.last_pull LIMIT 1")
                .fetch_optional(pool)
                .await
        })?;
        Ok(row)
    }

    /// Removes a tag (the manifest stays until garbage collection finds it
    /// untagged); a missing tag is not an error.
    pub async fn delete_tag(&self, repository: &str, tag: &str) -> Result<()> {
        with_pool!(&self.writer, pool => {
            sqlx::query("DELETE FROM registry_tags WHERE repository = $1 AND tag = $2")
                .bind(repository)
                .bind(tag)
                .execute(pool)
                .await.map(drop)
        })?;
        Ok(())
    }
}
