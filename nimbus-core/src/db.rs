//! One way to SQLite and PostgreSQL for every part that keeps state in SQL: the
//! control plane's store (`store/`), the cache index (`nimbus-cache/src/index.rs`)
//! and the embedded log sink (`nimbus-logs/src/sink/sqlite.rs`).
//!
//! - Statements are written once, in the dialect both databases share (`$N`
//!   parameters, `ON CONFLICT … DO`, `RETURNING`), and run on sqlx's typed drivers.
//!   A [`Pool`] is one of them; [`with_pool!`](crate::with_pool) compiles a block
//!   once per database, so each statement's binds and rows are checked against that
//!   driver's types. Not sqlx's `Any` driver: it has no arrays or JSON, which the
//!   PostgreSQL store's batched admission needs, and hides which database runs.
//! - Where the dialects differ, a part keeps the differing statements per database
//!   beside the backend (`store/sqlite.rs`, `store/postgres.rs`).
//! - Schemas are sqlx migrations, one directory per database
//!   (`migrations/sqlite`, `migrations/postgres` in each crate), applied by
//!   [`Pool::migrate`].
//! - SQLite: WAL, one writer connection (writes queue in the pool, never in SQLite,
//!   where a transaction that reads before it writes fails with `SQLITE_BUSY`
//!   instead of waiting) and a pool of read-only readers ([`open_sqlite`]).
//!   PostgreSQL: one pool for both ([`open_postgres`]).

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use crate::error::{Error, Result};

/// A pool of connections to one of the supported databases.
#[derive(Debug, Clone)]
pub enum Pool {
    /// A SQLite pool.
    Sqlite(SqlitePool),
    /// A PostgreSQL pool (feature `postgres`).
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
}

/// Runs `$body` with `$pool` bound to the typed pool inside a [`Pool`]. The body
/// is compiled once per database, so it may build queries, open transactions and
/// decode rows (`#[derive(sqlx::FromRow)]` rows decode from either driver).
///
/// ```ignore
/// let row: Option<EntryRow> = with_pool!(&self.reader, pool => {
///     sqlx::query_as(SELECT_ENTRY).bind(id).fetch_optional(pool).await
/// })?;
/// ```
#[cfg(feature = "postgres")]
#[macro_export]
macro_rules! with_pool {
    ($pool:expr, $typed:ident => $body:expr) => {
        match $pool {
            $crate::db::Pool::Sqlite($typed) => $body,
            $crate::db::Pool::Postgres($typed) => $body,
        }
    };
}

/// Runs `$body` with `$pool` bound to the typed pool inside a [`Pool`] (this build
/// has SQLite only).
#[cfg(not(feature = "postgres"))]
#[macro_export]
macro_rules! with_pool {
    ($pool:expr, $typed:ident => $body:expr) => {
        match $pool {
            $crate::db::Pool::Sqlite($typed) => $body,
        }
    };
}

/// A writer and a reader pool over one database. On PostgreSQL both are the same
/// pool; on SQLite the writer has exactly one connection.
#[derive(Debug, Clone)]
pub struct Pools {
    /// The pool that writes (on SQLite: its one connection).
    pub writer: Pool,
    /// The pool that reads (on SQLite: read-only connections).
    pub reader: Pool,
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite: `sqlite:…` URLs, or file paths where allowed.
    Sqlite,
    /// PostgreSQL: `postgres://` or `postgresql://` URLs.
    Postgres,
}

impl Backend {
    /// `sqlite:…` (or, when `bare_paths`, a file path) or `postgres://` /
    /// `postgresql://`. `variable` names the setting in the error.
    pub fn of(url: &str, variable: &str, bare_paths: bool) -> Result<Backend> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Backend::Postgres);
        }
        if url.starts_with("sqlite:") || (bare_paths && !url.is_empty() && !url.contains("://")) {
            return Ok(Backend::Sqlite);
        }
        Err(Error::Config {
            variable: variable.into(),
            message: format!(
                "unsupported database URL {:?}: expected {}sqlite://PATH or postgres://…",
                redact_url(url),
                if bare_paths { "a file path, " } else { "" }
            ),
        })
    }
}

impl Pool {
    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Pool::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Applies the migrations for this pool's database. Several parts may keep
    /// their tables in one PostgreSQL database and so share sqlx's migrations
    /// table: each part ignores the versions it does not know (the parts' version
    /// ranges are disjoint, see docs/architecture.md).
    pub async fn migrate(&self, sqlite: Migrator, postgres: Migrator) -> Result<()> {
        match self {
            Pool::Sqlite(pool) => migrate_sqlite(pool, sqlite).await?,
            #[cfg(feature = "postgres")]
            Pool::Postgres(pool) => {
                let mut migrator = postgres;
                migrator.set_ignore_missing(true);
                migrator.run(pool).await?;
            }
        }
        #[cfg(not(feature = "postgres"))]
        drop(postgres);
        Ok(())
    }

    /// Answers when the database does (for readiness probes).
    pub async fn ping(&self) -> Result<()> {
        with_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop))?;
        Ok(())
    }

    /// Closes every connection of the pool, waiting for those in use to be returned.
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }
}

/// Applies `migrations` to a SQLite-only part's database (see [`Pool::migrate`]).
pub async fn migrate_sqlite(pool: &SqlitePool, migrations: Migrator) -> Result<()> {
    let mut migrator = migrations;
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}

/// `sqlx::query(sql)` for the database of `pool` (names the driver for the
/// compiler where nothing else does, e.g. in a closure).
pub fn query<'q, DB: sqlx::Database>(
    _pool: &sqlx::Pool<DB>,
    sql: &'q str,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>> {
    sqlx::query(sql)
}

/// A query builder for the database of `pool` (names the driver for the compiler
/// inside [`with_pool!`](crate::with_pool)).
pub fn query_builder<'args, DB: sqlx::Database>(
    _pool: &sqlx::Pool<DB>,
    sql: impl Into<String>,
) -> sqlx::QueryBuilder<'args, DB> {
    sqlx::QueryBuilder::new(sql)
}

/// Opens the SQLite database `url` (`sqlite://PATH`, `sqlite::memory:`, or a
/// bare file path), creating the file and its directory: WAL, synchronous
/// `NORMAL` (a committed transaction survives a crash of the process; an OS crash
/// may lose the last ones), a 10 s busy timeout, foreign keys on, one writer
/// connection and up to `readers` read-only ones. An in-memory database is one
/// connection's own, so its readers are the writer.
pub async fn open_sqlite(url: &str, variable: &str, readers: u32) -> Result<Pools> {
    let (writer, reader) = connect_sqlite(url, variable, readers).await?;
    Ok(Pools {
        writer: Pool::Sqlite(writer),
        reader: Pool::Sqlite(reader),
    })
}

/// [`open_sqlite`] for a part that only ever uses SQLite: the writer and reader
/// pools, typed.
pub async fn connect_sqlite(
    url: &str,
    variable: &str,
    readers: u32,
) -> Result<(SqlitePool, SqlitePool)> {
    let url = if url.starts_with("sqlite:") {
        url.to_string()
    } else {
        format!("sqlite://{url}")
    };
    let options = SqliteConnectOptions::from_str(&url)
        .map_err(|e| Error::Config {
            variable: variable.into(),
            message: format!("invalid SQLite URL {url:?}: {e}"),
        })?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    if !in_memory {
        let path = options.get_filename();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
    }
    // `test_before_acquire` would cost a round trip to the connection's worker
    // thread on every query; the check on release below is what matters.
    let mut writer = SqlitePoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        // An in-memory database lives as long as its connection.
        .idle_timeout(None)
        .max_lifetime(None);
    if !in_memory {
        writer = writer.after_release(|connection, _| Box::pin(outside_transaction(connection)));
    }
    let writer = writer.connect_with(options.clone()).await?;
    let reader = if in_memory {
        writer.clone()
    } else {
        SqlitePoolOptions::new()
            .max_connections(readers.max(1))
            .test_before_acquire(false)
            .connect_with(options.read_only(true))
            .await?
    };
    Ok((writer, reader))
}

/// Whether a writer connection going back to the pool is outside any transaction,
/// as SQLite and sqlx both see it; one that is not is closed (a new one is opened
/// when needed). A write that fails on a full disk (SQLITE_FULL) or an I/O error
/// can leave SQLite inside a transaction sqlx no longer tracks: reused, every
/// later transaction would nest in it as a savepoint and "commit" without a byte
/// reaching the disk, so writes would be acknowledged and lost (the full-disk
/// tests of the logging pipeline and the cache proxy found this).
async fn outside_transaction(connection: &mut sqlx::SqliteConnection) -> sqlx::Result<bool> {
    use sqlx::Connection;
    // Run first: it waits behind a rollback a dropped transaction has queued.
    let sqlite_idle = sqlx::query("BEGIN").execute(&mut *connection).await.is_ok()
        && sqlx::query("ROLLBACK")
            .execute(&mut *connection)
            .await
            .is_ok();
    let keep = sqlite_idle && !connection.is_in_transaction();
    if !keep {
        tracing::warn!("a SQLite connection was left inside a failed transaction; it is closed");
    }
    Ok(keep)
}

/// The connect options of a `postgres://` URL; `variable` names the setting in
/// the error.
#[cfg(feature = "postgres")]
pub fn postgres_options(url: &str, variable: &str) -> Result<sqlx::postgres::PgConnectOptions> {
    url.parse().map_err(|e| Error::Config {
        variable: variable.into(),
        message: format!("invalid PostgreSQL URL {:?}: {e}", redact_url(url)),
    })
}

/// A PostgreSQL pool of up to `max_connections`, connected once before it returns
/// (a wrong URL or password fails here, not at the first query).
#[cfg(feature = "postgres")]
pub async fn open_postgres(
    options: sqlx::postgres::PgConnectOptions,
    max_connections: u32,
) -> Result<sqlx::PgPool> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(Duration::from_secs(10))
        // A ping before every query would double the round trips; a dead
        // connection surfaces as an error on use and is then dropped.
        .test_before_acquire(false)
        .connect_with(options)
        .await?)
}

/// Whether the database at `url` (a `postgres://` URL, or a SQLite URL or path)
/// can be used, without creating or migrating anything: PostgreSQL answers a
/// query within 5 s; a SQLite file opens read-only, or its directory is writable
/// for it to be created. Says what was found (`nimbus doctor`).
#[cfg(feature = "postgres")]
pub async fn reachable(url: &str, variable: &str) -> Result<String> {
    match Backend::of(url, variable, true)? {
        Backend::Postgres => {
            use sqlx::{ConnectOptions, Connection};
            let options = postgres_options(url, variable)?;
            let connect = async {
                let mut connection = options.connect().await?;
                let version: (String,) = sqlx::query_as("SHOW server_version")
                    .fetch_one(&mut connection)
                    .await?;
                connection.close().await?;
                Ok::<_, sqlx::Error>(version.0)
            };
            let version = tokio::time::timeout(Duration::from_secs(5), connect)
                .await
                .map_err(|_| {
                    Error::Unavailable(format!("{} did not answer within 5 s", redact_url(url)))
                })??;
            Ok(format!("PostgreSQL {version} at {}", redact_url(url)))
        }
        Backend::Sqlite => {
            let path = std::path::Path::new(
                url.strip_prefix("sqlite://")
                    .or_else(|| url.strip_prefix("sqlite:"))
                    .unwrap_or(url),
            );
            let path = std::path::Path::new(
                path.to_str()
                    .unwrap_or_default()
                    .split('?')
                    .next()
                    .unwrap_or_default(),
            );
            if path.is_file() {
                use sqlx::{ConnectOptions, Connection};
                let mut connection = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .read_only(true)
                    .connect()
                    .await?;
                sqlx::query("SELECT count(*) FROM sqlite_master")
                    .execute(&mut connection)
                    .await?;
                connection.close().await?;
                return Ok(format!("SQLite file {} opens", path.display()));
            }
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let writable = parent.is_dir()
                && nix::unistd::access(
                    parent,
                    nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
                )
                .is_ok();
            if writable {
                Ok(format!(
                    "SQLite file {} will be created (its directory is writable)",
                    path.display()
                ))
            } else {
                Err(Error::Unavailable(format!(
                    "SQLite file {} does not exist and {} is not a writable directory",
                    path.display(),
                    parent.display()
                )))
            }
        }
    }
}

/// Opens a part's own database — `url` is a SQLite path or URL, or a
/// `postgres://` URL, named by `variable` in errors — and applies its migrations:
/// SQLite with one writer and `readers` readers, PostgreSQL with one pool of
/// `connections` serving both. The cache index and the registry index open so.
#[cfg(feature = "postgres")]
pub async fn open_index(
    url: &str,
    variable: &str,
    readers: u32,
    connections: u32,
    sqlite: Migrator,
    postgres: Migrator,
) -> Result<Pools> {
    let pools = match Backend::of(url, variable, true)? {
        Backend::Sqlite => open_sqlite(url, variable, readers).await?,
        Backend::Postgres => {
            let pool =
                Pool::Postgres(open_postgres(postgres_options(url, variable)?, connections).await?);
            Pools {
                writer: pool.clone(),
                reader: pool,
            }
        }
    };
    pools.writer.migrate(sqlite, postgres).await?;
    Ok(pools)
}

/// Hides a password in a database URL for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Whether `error` is a unique-constraint violation (either database).
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://user:pw@host/db"),
            "postgres://user:***@host/db"
        );
        assert_eq!(redact_url("postgres://host/db"), "postgres://host/db");
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }

    #[test]
    fn urls_name_their_database() {
        let of = |url| Backend::of(url, "V", true).ok();
        assert_eq!(of("sqlite://x.db"), Some(Backend::Sqlite));
        assert_eq!(of("sqlite::memory:"), Some(Backend::Sqlite));
        assert_eq!(of("/var/lib/nimbus/index.db"), Some(Backend::Sqlite));
        assert_eq!(of("postgresql://h/db"), Some(Backend::Postgres));
        assert_eq!(of("mysql://h/db"), None);
        assert_eq!(of(""), None);
        let error = Backend::of("/x.db", "NIMBUS_DATABASE_URL", false)
            .expect_err("a path is not a URL here");
        assert!(error.to_string().contains("NIMBUS_DATABASE_URL"), "{error}");
    }

    /// Parts may share one PostgreSQL database and so sqlx's migrations table:
    /// each part's versions stay in its own range (YYYYMMDD then 0000NN for the
    /// control plane, 1000NN for the cache index, 2000NN for the log sink,
    /// 3000NN for the registry index).
    #[test]
    fn migration_versions_stay_in_their_parts_range() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut seen = std::collections::HashSet::new();
        for (part, range) in [
            ("nimbus-core", "0000"),
            ("nimbus-cache", "1000"),
            ("nimbus-logs", "2000"),
            ("nimbus-cache/migrations/registry", "3000"),
        ] {
            for database in ["sqlite", "postgres"] {
                let directory = match part.split_once("/migrations/") {
                    Some((krate, sub)) => root.join(krate).join("migrations").join(sub),
                    None => root.join(part).join("migrations"),
                };
                let Ok(files) = std::fs::read_dir(directory.join(database)) else {
                    continue;
                };
                for file in files {
                    let name = file
                        .expect("entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned();
                    let version = name.split('_').next().unwrap_or_default();
                    assert!(
                        version.len() == 14 && version[8..12] == *range,
                        "{part}/migrations/{database}/{name}: versions of {part} are YYYYMMDD{range}NN"
                    );
                    seen.insert((part, database, version.to_string()));
                }
            }
        }
        for part in ["nimbus-cache", "nimbus-cache/migrations/registry"] {
            assert!(seen.iter().any(|(p, _, _)| *p == part), "{part}: {seen:?}");
        }
    }

    #[tokio::test]
    async fn sqlite_creates_its_directory_and_migrates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/state.db");
        let pools = open_sqlite(&path.display().to_string(), "V", 2)
            .await
            .expect("open");
        pools
            .writer
            .migrate(
                sqlx::migrate!("migrations/sqlite"),
                sqlx::migrate!("migrations/postgres"),
            )
            .await
            .expect("migrate");
        pools.reader.ping().await.expect("ping");
        assert!(path.exists());
        assert_eq!(pools.writer.backend(), "sqlite");
    }
}
