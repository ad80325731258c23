//! The shared sink suite on SQLite (a fresh file) and on a real ClickHouse server
//! (`NIMBUS_TEST_CLICKHOUSE_URL`, started by scripts/services.sh; required under CI).

use std::sync::Arc;

use nimbus_logs::sink::clickhouse::{ClickHouseConfig, ClickHouseSink};
use nimbus_logs::sink::sqlite::SqliteSink;
use nimbus_logs::testsuite::require;
use nimbus_logs::LogSink;

mod sqlite {
    use super::*;

    pub async fn make() -> Option<Arc<dyn LogSink>> {
        let path = std::env::temp_dir().join(format!(
            "nimbus-logs-{}-{}.db",
            std::process::id(),
            nimbus_logs::testsuite::fresh_job_id()
        ));
        Some(Arc::new(
            SqliteSink::open(&path).await.expect("sqlite opens"),
        ))
    }

    nimbus_logs::log_sink_test_suite!(make);
}

mod clickhouse {
    use super::*;

    pub async fn make() -> Option<Arc<dyn LogSink>> {
        let url = std::env::var("NIMBUS_TEST_CLICKHOUSE_URL").ok();
        let sink = match url {
            Some(url) => Some(Arc::new(
                ClickHouseSink::connect(&ClickHouseConfig {
                    url,
                    user: None,
                    password: None,
                    database: "nimbus_test".into(),
                    log_retention_days: 3650,
                    metadata_retention_days: 3650,
                })
                .await
                .expect("clickhouse connects"),
            ) as Arc<dyn LogSink>),
            None => None,
        };
        require(sink, "ClickHouse (NIMBUS_TEST_CLICKHOUSE_URL)")
    }

    nimbus_logs::log_sink_test_suite!(make);
}
