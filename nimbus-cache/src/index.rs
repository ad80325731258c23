//! The cache index: entries, their parts while uploading, sizes, last access and
//! per-org hit/miss/eviction counters (`NIMBUS_CACHE_METRICS_DB`).
//!
//! One implementation for SQLite and PostgreSQL, the way every part does it
//! (`nimbus-core/src/db.rs`): statements in the dialect both share (`$N`
//! parameters, `ON CONFLICT`, `RETURNING`, `substr`/`length` for prefix matches
//! instead of `LIKE` escaping) run on typed pools; the tables are migrations
//! (`migrations/sqlite`, `migrations/postgres`).

use std::time::{SystemTime, UNIX_EPOCH};

use nimbus_core::db::{self, is_unique_violation, Pool};
use nimbus_core::{with_pool, OrgId};

use crate::error::{Error, Result};

/// State of an entry: reserved and uploading, or committed and servable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// Reserved; parts may be arriving; never served.
    Pending,
    /// Whole and durable; served to restores.
    Committed,
}

impl EntryState {
    fn as_str(self) -> &'static str {
        match self {
            EntryState::Pending => "pending",
            EntryState::Committed => "committed",
        }
    }
}

/// One cache entry as the index knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The index's own id (also in signed download links).
    pub id: i64,
    /// The org that owns the entry: no other org's token reaches it.
    pub org_id: OrgId,
    /// The repository (`owner/name`) the entry was saved from.
    pub repo: String,
    /// The git ref it was saved on; restores look here, then in the default branch.
    pub git_ref: String,
    /// The client's cache key (1–512 bytes, no commas).
    pub key: String,
    /// The client's version hash (paths and compression); empty for artifacts.
    pub version: String,
    /// Pending (being uploaded) or committed.
    pub state: EntryState,
    /// The backend's staging name of the upload.
    pub upload_id: String,
    /// Where the committed blob lives in the backend.
    pub blob_key: String,
    /// Bytes stored (0 while pending).
    pub size: u64,
    /// What the uploader announced (v1 `cacheSize`), checked at commit.
    pub expected_size: Option<u64>,
    /// The committed bytes' digest: a sha256 (hex), or for an entry joined from
    /// several parts the composite `HEX-N` ([`crate::digest`]); `None` while pending.
    pub sha256: Option<String>,
    /// When it was reserved, then when committed (Unix milliseconds).
    pub created_at: i64,
    /// The last upload activity or restore (Unix milliseconds): eviction goes by it.
    pub last_access: i64,
    /// Restores served.
    pub hits: u64,
    /// The store's own upload of the blob while parts are staged in place
    /// ([`crate::backend::Placement`]); `None` otherwise.
    pub staging_handle: Option<String>,
}

/// A part staged for an entry; `start` is its byte offset when the protocol says
/// (v1 Content-Range), `None` when order comes at commit (blob block lists).
/// After a composed commit the entry keeps its parts as its layout: named by
/// position, with offsets (see [`crate::digest`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The part's staging name (unique within its upload).
    pub name: String,
    /// Its byte offset in the entry, when known.
    pub start: Option<u64>,
    /// Bytes staged.
    pub size: u64,
    /// The part's sha256 (hex) as staged; `None` for parts staged by a version
    /// that did not record it.
    pub sha256: Option<String>,
    /// The part's rank when it was staged in place in the store's upload
    /// ([`crate::backend::Placement`]); `None` when staged as an object.
    pub rank: Option<u32>,
}

/// One org's figures for `GET /api/usage`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OrgUsage {
    /// The org these figures are for.
    pub org_id: OrgId,
    /// Bytes of its committed entries.
    pub bytes: u64,
    /// Its committed entries.
    pub entries: u64,
    /// Restores that found an entry.
    pub hits: u64,
    /// Restores that found none.
    pub misses: u64,
    /// Entries evicted (budget or idle time).
    pub evictions: u64,
}

/// What to reserve: a key in a scope.
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    /// The owning org (from the token, never from the request).
    pub org_id: OrgId,
    /// The repository (from the token).
    pub repo: &'a str,
    /// The ref to save on (from the token).
    pub git_ref: &'a str,
    /// The client's cache key.
    pub key: &'a str,
    /// The client's version hash.
    pub version: &'a str,
    /// The size the client announced, if it did.
    pub expected_size: Option<u64>,
}

pub(crate) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const COLUMNS: &str = "id, org_id, repo, git_ref, cache_key, version, state, upload_id, blob_key, \
     size, expected_size, sha256, created_at, last_access, hits, staging_handle";

/// A staged part as stored: name, offset, size, sha256, placed rank.
type PartRow = (String, Option<i64>, i64, Option<String>, Option<i64>);

/// The index over one database.
#[derive(Debug, Clone)]
pub struct CacheIndex {
    writer: Pool,
    reader: Pool,
}

/// An entry as stored.
#[derive(sqlx::FromRow)]
struct EntryRow {
    id: i64,
    org_id: i64,
    repo: String,
    git_ref: String,
    cache_key: String,
    version: String,
    state: String,
    upload_id: String,
    blob_key: String,
    size: i64,
    expected_size: Option<i64>,
    sha256: Option<String>,
    created_at: i64,
    last_access: i64,
    hits: i64,
    staging_handle: Option<String>,
}

impl From<EntryRow> for Entry {
    fn from(row: EntryRow) -> Entry {
        Entry {
            id: row.id,
            org_id: row.org_id,
            repo: row.repo,
            git_ref: row.git_ref,
            key: row.cache_key,
            version: row.version,
            state: if row.state == "committed" {
                EntryState::Committed
            } else {
                EntryState::Pending
            },
            upload_id: row.upload_id,
            blob_key: row.blob_key,
            size: count(row.size),
            expected_size: row.expected_size.map(count),
            sha256: row.sha256,
            created_at: row.created_at,
            last_access: row.last_access,
            hits: count(row.hits),
            staging_handle: row.staging_handle,
        }
    }
}

/// A stored size or count (never negative; clamped if a row says otherwise).
fn count(value: i64) -> u64 {
    value.max(0) as u64
}

impl CacheIndex {
    /// Opens `url` (`sqlite://PATH`, a bare path, or `postgres://…`) and applies
    /// the migrations.
    pub async fn open(url: &str) -> Result<Self> {
        const VARIABLE: &str = "NIMBUS_CACHE_METRICS_DB";
        let pools = db::open_index(
            url,
            VARIABLE,
            8,
            16,
            sqlx::migrate!("migrations/sqlite"),
            sqlx::migrate!("migrations/postgres"),
        )
        .await?;
        Ok(CacheIndex {
            writer: pools.writer,
            reader: pools.reader,
        })
    }

    /// Reserves `entry` for upload. Fails with [`Error::Conflict`] when another upload
    /// of the same key is in progress, or (unless `replace`) when it exists already.
    pub async fn reserve(&self, entry: &NewEntry<'_>, replace: bool) -> Result<Entry> {
        if !replace {
            if let Some(existing) = self
                .find(
                    entry.org_id,
                    entry.repo,
                    entry.git_ref,
                    entry.key,
                    entry.version,
                    EntryState::Committed,
                )
                .await?
            {
                return Err(Error::Conflict(format!(
                    "cache entry {:?} exists already (id {})",
                    entry.key, existing.id
                )));
            }
        }
        let upload_id = uuid::Uuid::new_v4().simple().to_string();
        let blob_key = format!("org-{}/{}", entry.org_id, upload_id);
        let now = now_millis();
        let inserted: sqlx::Result<EntryRow> = with_pool!(&self.writer, pool => {
            sqlx::query_as(&format!(
                "INSERT INTO cache_entries (org_id, repo, git_ref, cache_key, version, state, \
                 upload_id, blob_key, expected_size, created_at, last_access) \
                 VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9, $9) RETURNING {COLUMNS}"
            ))
            .bind(entry.org_id)
            .bind(entry.repo)
            .bind(entry.git_ref)
            .bind(entry.key)
            .bind(entry.version)
            .bind(&upload_id)
            .bind(&blob_key)
            .bind(entry.expected_size.map(|v| v as i64))
            .bind(now)
            .fetch_one(pool)
            .await
        });
        match inserted {
            Ok(row) => Ok(row.into()),
            Err(error) if is_unique_violation(&error) => Err(Error::Conflict(format!(
                "another job is uploading cache entry {:?}",
                entry.key
            ))),
            Err(error) => Err(error.into()),
        }
    }

    /// The entry of one key in one scope and state.
    pub async fn find(
        &self,
        org_id: OrgId,
        repo: &str,
        git_ref: &str,
        key: &str,
        version: &str,
        state: EntryState,
    ) -> Result<Option<Entry>> {
        let row: Option<EntryRow> = with_pool!(&self.reader, pool => {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM cache_entries WHERE org_id = $1 AND repo = $2 \
                 AND git_ref = $3 AND cache_key = $4 AND version = $5 AND state = $6"
            ))
            .bind(org_id)
            .bind(repo)
            .bind(git_ref)
            .bind(key)
            .bind(version)
            .bind(state.as_str())
            .fetch_optional(pool)
            .await
        })?;
        Ok(row.map(Entry::from))
    }

    /// The entry `id`, whatever its state.
    pub async fn get(&self, id: i64) -> Result<Option<Entry>> {
        let row: Option<EntryRow> = with_pool!(&self.reader, pool => {
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM cache_entries WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await
        })?;
        Ok(row.map(Entry::from))
    }

    /// The newest committed entry for a restore: for each ref in `refs`, the exact
    /// `keys[0]`, then each of `keys[1..]` as a prefix (newest first).
    pub async fn lookup(
        &self,
        org_id: OrgId,
        repo: &str,
        refs: &[&str],
        keys: &[&str],
        version: &str,
    ) -> Result<Option<Entry>> {
        for git_ref in refs {
            for (position, key) in keys.iter().enumerate() {
                let found = if position == 0 {
                    self.find(org_id, repo, git_ref, key, version, EntryState::Committed)
                        .await?
                } else {
                    let row: Option<EntryRow> = with_pool!(&self.reader, pool => {
                        sqlx::query_as(&format!(
                            "SELECT {COLUMNS} FROM cache_entries WHERE org_id = $1 AND repo = $2 \
                             AND git_ref = $3 AND version = $4 AND state = 'committed' \
                             AND substr(cache_key, 1, length($5)) = $5 \
                             ORDER BY created_at DESC, id DESC LIMIT 1"
                        ))
                        .bind(org_id)
                        .bind(repo)
                        .bind(*git_ref)
                        .bind(version)
                        .bind(*key)
                        .fetch_optional(pool)
                        .await
                    })?;
                    row.map(Entry::from)
                };
                if found.is_some() {
                    return Ok(found);
                }
            }
        }
        Ok(None)
    }

    /// Committed entries of one scope whose key starts with `prefix`, newest first.
    pub async fn list(
        &self,
        org_id: OrgId,
        repo: &str,
        git_ref: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<Entry>> {
        let rows: Vec<EntryRow> = with_pool!(&self.reader, pool => {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM cache_entries WHERE org_id = $1 AND repo = $2 \
                 AND git_ref = $3 AND state = 'committed' \
                 AND substr(cache_key, 1, length($4)) = $4 \
                 ORDER BY created_at DESC, id DESC LIMIT $5"
            ))
            .bind(org_id)
            .bind(repo)
            .bind(git_ref)
            .bind(prefix)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        Ok(rows.into_iter().map(Entry::from).collect())
    }

    /// Records a staged part (the same name again replaces it) and the upload's activity.
    pub async fn add_part(&self, entry_id: i64, part: &Part) -> Result<()> {
        with_pool!(&self.writer, pool => {
            sqlx::query("UPDATE cache_entries SET last_access = $2 WHERE id = $1")
                .bind(entry_id)
                .bind(now_millis())
                .execute(pool)
                .await?;
            sqlx::query(
                "INSERT INTO cache_parts (entry_id, part, start_offset, size, sha256, placed_rank) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (entry_id, part) DO UPDATE \
                 SET start_offset = excluded.start_offset, size = excluded.size, \
                 sha256 = excluded.sha256, placed_rank = excluded.placed_rank",
            )
            .bind(entry_id)
            .bind(&part.name)
            .bind(part.start.map(|v| v as i64))
            .bind(part.size as i64)
            .bind(&part.sha256)
            .bind(part.rank.map(i64::from))
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Records `handle` as the store's own upload of pending entry `entry_id`
    /// unless one was recorded first (parts of one upload arrive in parallel, on
    /// any replica); returns the one that counts. `None` when the entry is no
    /// longer pending.
    pub async fn set_staging_handle(&self, entry_id: i64, handle: &str) -> Result<Option<String>> {
        let row: Option<(Option<String>,)> = with_pool!(&self.writer, pool => {
            sqlx::query_as(
                "UPDATE cache_entries SET staging_handle = COALESCE(staging_handle, $2) \
                 WHERE id = $1 AND state = 'pending' RETURNING staging_handle",
            )
            .bind(entry_id)
            .bind(handle)
            .fetch_optional(pool)
            .await
        })?;
        Ok(row.and_then(|(handle,)| handle))
    }

    /// Unfinished uploads of `org_id`.
    pub async fn pending_count(&self, org_id: OrgId) -> Result<u64> {
        let (pending,): (i64,) = with_pool!(&self.reader, pool => {
            sqlx::query_as(
                "SELECT CAST(COUNT(*) AS BIGINT) FROM cache_entries \
                 WHERE org_id = $1 AND state = 'pending'",
            )
            .bind(org_id)
            .fetch_one(pool)
            .await
        })?;
        Ok(count(pending))
    }

    /// Bytes staged in the unfinished uploads of `org_id`.
    pub async fn org_staged_bytes(&self, org_id: OrgId) -> Result<u64> {
        let (bytes,): (i64,) = with_pool!(&self.reader, pool => {
            sqlx::query_as(
                "SELECT CAST(COALESCE(SUM(p.size), 0) AS BIGINT) FROM cache_parts p \
                 JOIN cache_entries e ON e.id = p.entry_id \
                 WHERE e.org_id = $1 AND e.state = 'pending'",
            )
            .bind(org_id)
            .fetch_one(pool)
            .await
        })?;
        Ok(count(bytes))
    }

    /// An entry's staged parts (a committed entry's layout), by offset then name.
    pub async fn parts(&self, entry_id: i64) -> Result<Vec<Part>> {
        let rows: Vec<PartRow> = with_pool!(&self.reader, pool => {
            sqlx::query_as(
                "SELECT part, start_offset, size, sha256, placed_rank FROM cache_parts \
                 WHERE entry_id = $1 ORDER BY start_offset, part",
            )
            .bind(entry_id)
            .fetch_all(pool)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(name, start, size, sha256, rank)| Part {
                name,
                start: start.map(count),
                size: count(size),
                sha256,
                rank: rank.and_then(|rank| u32::try_from(rank).ok()),
            })
            .collect())
    }

    /// Marks a pending entry committed with what the backend stored, its staged
    /// parts replaced by `layout` (a composed entry's parts, for the scrub). When
    /// `replace`, a committed entry of the same key is dropped from the index in
    /// the same transaction and returned, for its blob to be deleted.
    pub async fn commit(
        &self,
        entry_id: i64,
        size: u64,
        sha256: &str,
        layout: &[Part],
        replace: bool,
    ) -> Result<Option<Entry>> {
        with_pool!(&self.writer, pool => {
            let mut tx = pool.begin().await?;
            // Write first: on SQLite a transaction that reads and then writes cannot
            // wait for the write lock (another commit in between fails it with
            // SQLITE_BUSY_SNAPSHOT); one that starts with a write waits its turn.
            let row: Option<EntryRow> = sqlx::query_as(&format!(
                "UPDATE cache_entries SET last_access = $2 WHERE id = $1 AND state = 'pending' \
                 RETURNING {COLUMNS}"
            ))
            .bind(entry_id)
            .bind(now_millis())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(pending) = row.map(Entry::from) else {
                return Err(Error::NotFound(format!("pending cache entry {entry_id}")));
            };
            let mut replaced = None;
            if replace {
                let row: Option<EntryRow> = sqlx::query_as(&format!(
                    "DELETE FROM cache_entries WHERE org_id = $1 AND repo = $2 AND git_ref = $3 \
                     AND cache_key = $4 AND version = $5 AND state = 'committed' \
                     RETURNING {COLUMNS}"
                ))
                .bind(pending.org_id)
                .bind(&pending.repo)
                .bind(&pending.git_ref)
                .bind(&pending.key)
                .bind(&pending.version)
                .fetch_optional(&mut *tx)
                .await?;
                replaced = row.map(Entry::from);
            }
            let now = now_millis();
            let updated = sqlx::query(
                "UPDATE cache_entries SET state = 'committed', size = $2, sha256 = $3, \
                 created_at = $4, last_access = $4, verified_at = $4 WHERE id = $1",
            )
            .bind(entry_id)
            .bind(size as i64)
            .bind(sha256)
            .bind(now)
            .execute(&mut *tx)
            .await;
            match updated {
                Ok(_) => {}
                Err(error) if is_unique_violation(&error) => {
                    return Err(Error::Conflict(format!(
                        "cache entry {:?} was committed by another upload",
                        pending.key
                    )))
                }
                Err(error) => return Err(error.into()),
            }
            sqlx::query("DELETE FROM cache_parts WHERE entry_id = $1")
                .bind(entry_id)
                .execute(&mut *tx)
                .await?;
            for part in layout {
                sqlx::query(
                    "INSERT INTO cache_parts (entry_id, part, start_offset, size, sha256) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(entry_id)
                .bind(&part.name)
                .bind(part.start.map(|v| v as i64))
                .bind(part.size as i64)
                .bind(&part.sha256)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(replaced)
        })
    }

    /// Drops an entry (pending or committed) and its parts from the index.
    pub async fn remove(&self, entry_id: i64) -> Result<Option<Entry>> {
        with_pool!(&self.writer, pool => {
            let mut tx = pool.begin().await?;
            let row: Option<EntryRow> = sqlx::query_as(&format!(
                "DELETE FROM cache_entries WHERE id = $1 RETURNING {COLUMNS}"
            ))
            .bind(entry_id)
            .fetch_optional(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM cache_parts WHERE entry_id = $1")
                .bind(entry_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(row.map(Entry::from))
        })
    }

    /// A restore served `entry_id`: count the hit and refresh its last access.
    pub async fn record_hit(&self, entry: &Entry) -> Result<()> {
        with_pool!(&self.writer, pool => {
            sqlx::query("UPDATE cache_entries SET hits = hits + 1, last_access = $2 WHERE id = $1")
                .bind(entry.id)
                .bind(now_millis())
                .execute(pool)
                .await
                .map(drop)
        })?;
        self.bump_counter(entry.org_id, "hits").await
    }

    /// Counts a restore of `org_id` that found nothing.
    pub async fn record_miss(&self, org_id: OrgId) -> Result<()> {
        self.bump_counter(org_id, "misses").await
    }

    /// Counts an eviction of one of `org_id`'s entries.
    pub async fn record_eviction(&self, org_id: OrgId) -> Result<()> {
        self.bump_counter(org_id, "evictions").await
    }

    async fn bump_counter(&self, org_id: OrgId, column: &'static str) -> Result<()> {
        with_pool!(&self.writer, pool => {
            sqlx::query(&format!(
                "INSERT INTO cache_org_counters (org_id, {column}) VALUES ($1, 1) \
                 ON CONFLICT (org_id) DO UPDATE SET {column} = cache_org_counters.{column} + 1"
            ))
            .bind(org_id)
            .execute(pool)
            .await
            .map(drop)
        })?;
        Ok(())
    }

    /// Usage per org (only `org` when given), ordered by org id.
    pub async fn usage(&self, org: Option<OrgId>) -> Result<Vec<OrgUsage>> {
        let rows: Vec<(i64, i64, i64, i64, i64, i64)> = with_pool!(&self.reader, pool => {
            sqlx::query_as(
                "SELECT o.org_id, \
                    CAST(COALESCE((SELECT SUM(size) FROM cache_entries e \
                      WHERE e.org_id = o.org_id AND e.state = 'committed'), 0) AS BIGINT), \
                    (SELECT COUNT(*) FROM cache_entries e \
                      WHERE e.org_id = o.org_id AND e.state = 'committed'), \
                    COALESCE(c.hits, 0), COALESCE(c.misses, 0), COALESCE(c.evictions, 0) \
                 FROM (SELECT org_id FROM cache_entries UNION SELECT org_id FROM cache_org_counters) o \
                 LEFT JOIN cache_org_counters c ON c.org_id = o.org_id \
                 WHERE ($1 < 0 OR o.org_id = $1) ORDER BY o.org_id",
            )
            .bind(org.unwrap_or(-1))
            .fetch_all(pool)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(
                |(org_id, bytes, entries, hits, misses, evictions)| OrgUsage {
                    org_id,
                    bytes: count(bytes),
                    entries: count(entries),
                    hits: count(hits),
                    misses: count(misses),
                    evictions: count(evictions),
                },
            )
            .collect())
    }

    /// Committed bytes per org.
    pub async fn org_bytes(&self) -> Result<Vec<(OrgId, u64)>> {
        let rows: Vec<(i64, i64)> = with_pool!(&self.reader, pool => {
            sqlx::query_as(
                "SELECT org_id, CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM cache_entries \
                 WHERE state = 'committed' GROUP BY org_id ORDER BY org_id",
            )
            .fetch_all(pool)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(org_id, bytes)| (org_id, count(bytes)))
            .collect())
    }

    /// Committed entries, least recently used first (of one org when given).
    pub async fn least_recently_used(&self, org: Option<OrgId>, limit: u32) -> Result<Vec<Entry>> {
        let rows: Vec<EntryRow> = with_pool!(&self.reader, pool => {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM cache_entries WHERE state = 'committed' \
                 AND ($1 < 0 OR org_id = $1) ORDER BY last_access, id LIMIT $2"
            ))
            .bind(org.unwrap_or(-1))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        Ok(rows.into_iter().map(Entry::from).collect())
    }

    /// Committed entries not read since `before` (ms), oldest first.
    pub async fn idle_since(&self, before: i64, limit: u32) -> Result<Vec<Entry>> {
        let rows: Vec<EntryRow> = with_pool!(&self.reader, pool => {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM cache_entries WHERE state = 'committed' \
                 AND last_access < $1 ORDER BY last_access, id LIMIT $2"
            ))
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        Ok(rows.into_iter().map(Entry::from).collect())
    }

    /// Pending entries with no activity (reservation, part) since `idle_before`
    /// (ms), or reserved before `reserved_before` whatever their activity: abandoned
    /// uploads, and uploads kept alive by a trickle of parts.
    pub async fn pending_since(
        &self,
        idle_before: i64,
        reserved_before: i64,
        limit: u32,
    ) -> Result<Vec<Entry>> {
        let rows: Vec<EntryRow> = with_pool!(&self.reader, pool => {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM cache_entries WHERE state = 'pending' \
                 AND (last_access < $1 OR created_at < $2) ORDER BY last_access, id LIMIT $3"
            ))
            .bind(idle_before)
            .bind(reserved_before)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        Ok(rows.into_iter().map(Entry::from).collect())
    }

    /// Whether an upload id belongs to a pending entry (staging areas of others are garbage).
    pub async fn upload_is_pending(&self, upload_id: &str) -> Result<bool> {
        let row: Option<(i64,)> = with_pool!(&self.reader, pool => {
            sqlx::query_as("SELECT id FROM cache_entries WHERE upload_id = $1 AND state = 'pending'")
                .bind(upload_id)
                .fetch_optional(pool)
                .await
        })?;
        Ok(row.is_some())
    }

    /// Committed entries last verified before `before` (ms), longest ago first.
    pub async fn verified_before(&self, before: i64, limit: u32) -> Result<Vec<Entry>> {
        let rows: Vec<EntryRow> = with_pool!(&self.reader, pool => {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM cache_entries WHERE state = 'committed' \
                 AND COALESCE(verified_at, 0) < $1 ORDER BY COALESCE(verified_at, 0), id LIMIT $2"
            ))
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?;
        Ok(rows.into_iter().map(Entry::from).collect())
    }

    /// Records that the scrub checked `entry_id` now (it goes to the back of the queue).
    pub async fn mark_verified(&self, entry_id: i64) -> Result<()> {
        with_pool!(&self.writer, pool => {
            sqlx::query("UPDATE cache_entries SET verified_at = $2 WHERE id = $1")
                .bind(entry_id)
                .bind(now_millis())
                .execute(pool)
                .await
                .map(drop)
        })?;
        Ok(())
    }

    /// Whether any committed entry points at `blob_key`.
    pub async fn blob_is_indexed(&self, blob_key: &str) -> Result<bool> {
        let row: Option<(i64,)> = with_pool!(&self.reader, pool => {
            sqlx::query_as("SELECT id FROM cache_entries WHERE blob_key = $1")
                .bind(blob_key)
                .fetch_optional(pool)
                .await
        })?;
        Ok(row.is_some())
    }
}
