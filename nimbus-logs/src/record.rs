//! Log lines and metadata rows: their wire form, validation and normalisation.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest message stored; longer ones are cut with [`TRUNCATION_MARKER`].
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Appended to a message cut at [`MAX_MESSAGE_BYTES`]; the cut message, marker
/// included, still fits in the limit.
pub const TRUNCATION_MARKER: &str = "…[truncated by nimbus]";
/// Levels, as stored (agents may send `warning`, `err`, `stdout`, `stderr` too).
pub const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

/// One log line of a job: a row of `ci_logs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The job the line belongs to (1 to `i64::MAX`).
    pub job_id: u64,
    /// The host agent that ran the job (1-256 bytes); for lease writers, taken from
    /// the token.
    pub agent_id: String,
    /// The job's org, if known (for lease writers, taken from the token); org-scoped
    /// queries and stats filter on it.
    #[serde(default)]
    pub org_id: Option<u64>,
    /// The job's repository, if known.
    #[serde(default)]
    pub repo_id: Option<u64>,
    /// One of [`LEVELS`] once normalised; synonyms such as `warning` or `stderr` are mapped.
    pub level: String,
    /// The line's text, at most [`MAX_MESSAGE_BYTES`] once normalised.
    pub message: String,
    /// Epoch milliseconds; on the wire an RFC 3339 string or a number of ms.
    #[serde(serialize_with = "ts_out", deserialize_with = "ts_in")]
    pub ts: i64,
    /// Position of the line in its job's output, from 1; (job_id, seq) is unique.
    pub seq: u64,
}

/// One metadata row of a job (`param:`/`meta:` labels and submitted metadata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataRecord {
    /// The job the row describes (1 to `i64::MAX`).
    pub job_id: u64,
    /// The job's org, if known; org-scoped reads filter on it.
    #[serde(default)]
    pub org_id: Option<u64>,
    /// The job's repository, if known.
    #[serde(default)]
    pub repo_id: Option<u64>,
    /// The metadata key (1-256 bytes). A job has one value per key: the last written wins.
    pub key: String,
    /// At most 4096 bytes.
    pub value: String,
    /// When the value was recorded, epoch milliseconds (on the wire an RFC 3339 string or a
    /// number of ms). Retention prunes by it.
    #[serde(serialize_with = "ts_out", deserialize_with = "ts_in")]
    pub ts: i64,
}

fn ts_out<S: Serializer>(millis: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_millis(*millis))
}

fn ts_in<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    // A visitor rather than an untagged enum: untagged buffers every value first,
    // and this runs once per ingested line.
    struct Ts;
    impl serde::de::Visitor<'_> for Ts {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an RFC 3339 timestamp or epoch milliseconds")
        }
        fn visit_i64<E: serde::de::Error>(self, ms: i64) -> Result<i64, E> {
            Ok(ms)
        }
        fn visit_u64<E: serde::de::Error>(self, ms: u64) -> Result<i64, E> {
            i64::try_from(ms).map_err(|_| E::custom(format!("ts {ms} is out of range")))
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<i64, E> {
            parse_rfc3339(text).ok_or_else(|| {
                E::custom(format!(
                    "ts {text:?} is neither RFC 3339 nor epoch milliseconds"
                ))
            })
        }
    }
    deserializer.deserialize_any(Ts)
}

/// Epoch milliseconds of an RFC 3339 timestamp such as `2026-11-27T08:00:00.123Z`;
/// `None` when it does not parse or is out of range.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let parsed =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Epoch milliseconds as an RFC 3339 timestamp in UTC; the bare number when out of range.
pub fn format_millis(millis: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| millis.to_string())
}

/// 2000-01-01 and 2100-01-01: timestamps outside are bugs, not logs.
const TS_MIN: i64 = 946_684_800_000;
const TS_MAX: i64 = 4_102_444_800_000;

impl LogRecord {
    /// Checks and normalises one record (level spelling, long messages).
    pub fn normalise(&mut self) -> Result<(), String> {
        if self.job_id == 0 || self.job_id > i64::MAX as u64 {
            return Err(format!("job_id {} is out of range", self.job_id));
        }
        if self.seq == 0 || self.seq > i64::MAX as u64 {
            return Err(format!("seq {} is out of range (1 and up)", self.seq));
        }
        if self.agent_id.is_empty() || self.agent_id.len() > 256 {
            return Err("agent_id must be 1-256 bytes".into());
        }
        for (name, id) in [("org_id", self.org_id), ("repo_id", self.repo_id)] {
            if id.is_some_and(|id| id > i64::MAX as u64) {
                return Err(format!("{name} is out of range"));
            }
        }
        if !(TS_MIN..TS_MAX).contains(&self.ts) {
            return Err(format!(
                "ts {} is not between 2000 and 2100",
                format_millis(self.ts)
            ));
        }
        // Most agents already send a canonical level: keep the string as it is.
        if !LEVELS.contains(&self.level.as_str()) {
            self.level = normalise_level(&self.level)
                .ok_or_else(|| {
                    format!("level {:?} is not one of {}", self.level, LEVELS.join(", "))
                })?
                .to_string();
        }
        truncate_message(&mut self.message);
        Ok(())
    }
}

impl MetadataRecord {
    /// Checks one row: job_id in range, key 1-256 bytes, value at most 4096 bytes, ts
    /// between 2000 and 2100. The error is the reason, in words.
    pub fn normalise(&mut self) -> Result<(), String> {
        if self.job_id == 0 || self.job_id > i64::MAX as u64 {
            return Err(format!("job_id {} is out of range", self.job_id));
        }
        if self.key.is_empty() || self.key.len() > 256 {
            return Err("key must be 1-256 bytes".into());
        }
        if self.value.len() > 4096 {
            return Err("value must be at most 4096 bytes".into());
        }
        if !(TS_MIN..TS_MAX).contains(&self.ts) {
            return Err(format!(
                "ts {} is not between 2000 and 2100",
                format_millis(self.ts)
            ));
        }
        Ok(())
    }
}

/// The stored spelling of a level, ignoring case and surrounding spaces: `warning`
/// becomes `warn`, `notice` and `stdout` become `info`, `err`, `fatal`, `critical`
/// and `stderr` become `error`. `None` for anything else.
pub fn normalise_level(level: &str) -> Option<&'static str> {
    Some(match level.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" | "notice" | "stdout" => "info",
        "warn" | "warning" => "warn",
        "error" | "err" | "fatal" | "critical" | "stderr" => "error",
        _ => return None,
    })
}

/// Cuts a message longer than [`MAX_MESSAGE_BYTES`] on a char boundary and marks it.
pub fn truncate_message(message: &mut String) {
    if message.len() <= MAX_MESSAGE_BYTES {
        return;
    }
    let mut cut = MAX_MESSAGE_BYTES - TRUNCATION_MARKER.len();
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message.truncate(cut);
    message.push_str(TRUNCATION_MARKER);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> LogRecord {
        LogRecord {
            job_id: 1,
            agent_id: "host-1".into(),
            org_id: Some(7),
            repo_id: None,
            level: "WARNING".into(),
            message: "é".repeat(MAX_MESSAGE_BYTES),
            ts: 1_795_000_000_000,
            seq: 1,
        }
    }

    #[test]
    fn levels_and_long_messages_are_normalised() {
        let mut r = record();
        r.normalise().expect("valid");
        assert_eq!(r.level, "warn");
        assert!(r.message.len() <= MAX_MESSAGE_BYTES);
        assert!(r.message.ends_with(TRUNCATION_MARKER));
    }

    #[test]
    fn out_of_range_fields_are_refused_with_reasons() {
        for (mutate, needle) in [
            (
                Box::new(|r: &mut LogRecord| r.seq = 0) as Box<dyn Fn(&mut LogRecord)>,
                "seq",
            ),
            (
                Box::new(|r: &mut LogRecord| r.level = "loud".into()),
                "level",
            ),
            (Box::new(|r: &mut LogRecord| r.ts = 5), "ts"),
            (Box::new(|r: &mut LogRecord| r.agent_id.clear()), "agent_id"),
        ] {
            let mut r = record();
            mutate(&mut r);
            assert!(r.normalise().expect_err("refused").contains(needle));
        }
    }

    #[test]
    fn timestamps_read_both_forms_and_write_rfc3339() {
        let a: LogRecord = serde_json::from_str(
            r#"{"job_id":1,"agent_id":"a","level":"info","message":"m","ts":"2026-11-27T08:00:00.123Z","seq":1}"#,
        )
        .expect("rfc3339");
        let b: LogRecord = serde_json::from_str(
            r#"{"job_id":1,"agent_id":"a","level":"info","message":"m","ts":1795766400123,"seq":1}"#,
        )
        .expect("millis");
        assert_eq!(a.ts, b.ts);
        assert!(serde_json::to_string(&a)
            .expect("json")
            .contains("2026-11-27T08:00:00.123Z"));
    }
}
