//! The embedded sink: one SQLite file (`$NIMBUS_DATA_DIR/logs.db`), WAL, one
//! writer connection and a pool of readers. `(job_id, seq)` is the primary key, so
//! a duplicate line is dropped by the database itself (`INSERT OR IGNORE`).

use std::path::Path;

use async_trait::async_trait;
use sqlx::sqlite::SqlitePool;
use sqlx::{QueryBuilder, Row};

use super::{LogQuery, LogSink, Order, Stats};
use crate::error::Result;
use crate::record::{LogRecord, MetadataRecord};

/// Rows per INSERT statement (9 parameters each, under SQLite's 32766 limit).
const ROWS_PER_STATEMENT: usize = 3000;

/// The embedded [`LogSink`]: one SQLite database file. Open it with [`SqliteSink::open`].
pub struct SqliteSink {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteSink {
    /// Opens (creating if needed) the database at `path`: WAL, synchronous
    /// `NORMAL` (a committed batch survives a crash of the process; an OS crash may
    /// lose the last commits, like ClickHouse's default fsync policy).
    pub async fn open(path: &Path) -> Result<Self> {
        let (writer, reader) =
            nimbus_core::db::connect_sqlite(&path.display().to_string(), "NIMBUS_DATA_DIR", 4)
                .await?;
        nimbus_core::db::migrate_sqlite(&writer, sqlx::migrate!("migrations/sqlite")).await?;
        Ok(SqliteSink { writer, reader })
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn row_to_record(row: &sqlx::sqlite::SqliteRow) -> Result<LogRecord> {
    Ok(LogRecord {
        job_id: row.try_get::<i64, _>("job_id")? as u64,
        seq: row.try_get::<i64, _>("seq")? as u64,
        agent_id: row.try_get("agent_id")?,
        org_id: row.try_get::<Option<i64>, _>("org_id")?.map(|v| v as u64),
        repo_id: row.try_get::<Option<i64>, _>("repo_id")?.map(|v| v as u64),
        level: row.try_get("level")?,
        message: row.try_get("message")?,
        ts: row.try_get("ts")?,
    })
}

#[async_trait]
impl LogSink for SqliteSink {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn write(&self, batch: &[LogRecord]) -> Result<u64> {
        let inserted_at = now_millis();
        let mut tx = self.writer.begin().await?;
        let mut written = 0;
        for chunk in batch.chunks(ROWS_PER_STATEMENT) {
            let mut builder = QueryBuilder::new(
                "INSERT OR IGNORE INTO ci_logs (job_id, seq, agent_id, org_id, repo_id, level, message, ts, inserted_at) ",
            );
            builder.push_values(chunk, |mut row, r| {
                row.push_bind(to_i64(r.job_id))
                    .push_bind(to_i64(r.seq))
                    .push_bind(&r.agent_id)
                    .push_bind(r.org_id.map(to_i64))
                    .push_bind(r.repo_id.map(to_i64))
                    .push_bind(&r.level)
                    .push_bind(&r.message)
                    .push_bind(r.ts)
                    .push_bind(inserted_at);
            });
            written += builder.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn stored_seqs(&self, job_id: u64) -> Result<Vec<u64>> {
        let rows = sqlx::query("SELECT seq FROM ci_logs WHERE job_id = $1")
            .bind(to_i64(job_id))
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|row| Ok(row.try_get::<i64, _>(0)? as u64))
            .collect()
    }

    async fn query(&self, query: &LogQuery) -> Result<Vec<LogRecord>> {
        let mut builder = QueryBuilder::new(
            "SELECT job_id, seq, agent_id, org_id, repo_id, level, message, ts FROM ci_logs WHERE 1 = 1",
        );
        if let Some(job_id) = query.job_id {
            builder.push(" AND job_id = ").push_bind(to_i64(job_id));
        }
        if let Some(org_id) = query.org_id {
            builder.push(" AND org_id = ").push_bind(to_i64(org_id));
        }
        if let Some(level) = &query.level {
            builder.push(" AND level = ").push_bind(level.clone());
        }
        if let Some(since) = query.since {
            builder.push(" AND ts >= ").push_bind(since);
        }
        if let Some(after) = query.after_seq {
            builder.push(" AND seq > ").push_bind(to_i64(after));
        }
        let direction = match query.order {
            Order::Newest => "DESC",
            Order::Oldest => "ASC",
        };
        if query.job_id.is_some() {
            builder.push(format!(" ORDER BY job_id {direction}, seq {direction}"));
        } else {
            builder.push(format!(
                " ORDER BY ts {direction}, job_id {direction}, seq {direction}"
            ));
        }
        builder.push(" LIMIT ").push_bind(i64::from(query.limit));
        let rows = builder.build().fetch_all(&self.reader).await?;
        let mut records = rows.iter().map(row_to_record).collect::<Result<Vec<_>>>()?;
        if query.order == Order::Newest {
            records.reverse();
        }
        Ok(records)
    }

    async fn prune(&self, older_than: i64) -> Result<u64> {
        let result = sqlx::query("DELETE FROM ci_logs WHERE ts < $1")
            .bind(older_than)
            .execute(&self.writer)
            .await?;
        Ok(result.rows_affected())
    }

    async fn write_metadata(&self, rows: &[MetadataRecord]) -> Result<u64> {
        let mut tx = self.writer.begin().await?;
        let mut written = 0;
        for r in rows {
            written += sqlx::query(
                "INSERT INTO job_metadata (job_id, key, org_id, repo_id, value, ts) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (job_id, key) DO UPDATE SET value = excluded.value, ts = excluded.ts,
                   org_id = excluded.org_id, repo_id = excluded.repo_id",
            )
            .bind(to_i64(r.job_id))
            .bind(&r.key)
            .bind(r.org_id.map(to_i64))
            .bind(r.repo_id.map(to_i64))
            .bind(&r.value)
            .bind(r.ts)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn query_metadata(
        &self,
        job_id: u64,
        org_id: Option<u64>,
    ) -> Result<Vec<MetadataRecord>> {
        let rows = sqlx::query(
            "SELECT job_id, key, org_id, repo_id, value, ts FROM job_metadata
             WHERE job_id = $1 AND ($2 IS NULL OR org_id = $2) ORDER BY key",
        )
        .bind(to_i64(job_id))
        .bind(org_id.map(to_i64))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(MetadataRecord {
                    job_id: row.try_get::<i64, _>("job_id")? as u64,
                    key: row.try_get("key")?,
                    org_id: row.try_get::<Option<i64>, _>("org_id")?.map(|v| v as u64),
                    repo_id: row.try_get::<Option<i64>, _>("repo_id")?.map(|v| v as u64),
                    value: row.try_get("value")?,
                    ts: row.try_get("ts")?,
                })
            })
            .collect()
    }

    async fn prune_metadata(&self, older_than: i64) -> Result<u64> {
        let result = sqlx::query("DELETE FROM job_metadata WHERE ts < $1")
            .bind(older_than)
            .execute(&self.writer)
            .await?;
        Ok(result.rows_affected())
    }

    async fn stats(&self, org_id: Option<u64>) -> Result<Stats> {
        let org = org_id.map(to_i64);
        let mut stats = Stats::default();
        let rows = sqlx::query(
            "SELECT level, COUNT(*) AS lines, COALESCE(SUM(LENGTH(CAST(message AS BLOB))), 0) AS bytes,
                    MAX(inserted_at) AS last
             FROM ci_logs WHERE ($1 IS NULL OR org_id = $1) GROUP BY level",
        )
        .bind(org)
        .fetch_all(&self.reader)
        .await?;
        for row in &rows {
            let lines = row.try_get::<i64, _>("lines")? as u64;
            stats.lines += lines;
            stats.bytes += row.try_get::<i64, _>("bytes")? as u64;
            stats.per_level.insert(row.try_get("level")?, lines);
            let last: Option<i64> = row.try_get("last")?;
            stats.last_ingest = stats.last_ingest.max(last);
        }
        let rows = sqlx::query(
            "SELECT org_id, COUNT(*) AS lines FROM ci_logs WHERE ($1 IS NULL OR org_id = $1) GROUP BY org_id",
        )
        .bind(org)
        .fetch_all(&self.reader)
        .await?;
        for row in &rows {
            let org: Option<i64> = row.try_get("org_id")?;
            let key = org.map(|o| o.to_string()).unwrap_or_else(|| "none".into());
            stats
                .per_org
                .insert(key, row.try_get::<i64, _>("lines")? as u64);
        }
        Ok(stats)
    }
}
