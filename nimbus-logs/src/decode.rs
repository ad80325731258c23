//! Request bodies of `POST /api/logs` and `POST /api/metadata`: a JSON array or
//! NDJSON (one record per line). Invalid UTF-8 is replaced, every record is
//! validated, and a batch with one bad record is refused whole, naming its index.

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::record::{LogRecord, MetadataRecord};

/// Most records one request may carry.
pub const MAX_RECORDS: usize = 100_000;

/// Decodes and normalises the lines of a `POST /api/logs` body. One bad record refuses
/// the whole batch with [`Error::InvalidRecord`] naming its index; more than
/// [`MAX_RECORDS`] is [`Error::InvalidInput`].
pub fn decode_logs(body: &[u8]) -> Result<Vec<LogRecord>> {
    let mut records: Vec<LogRecord> = decode(body)?;
    for (index, record) in records.iter_mut().enumerate() {
        record
            .normalise()
            .map_err(|reason| Error::InvalidRecord { index, reason })?;
    }
    Ok(records)
}

/// Decodes and checks the rows of a `POST /api/metadata` body, with the same rules as
/// [`decode_logs`].
pub fn decode_metadata(body: &[u8]) -> Result<Vec<MetadataRecord>> {
    let mut records: Vec<MetadataRecord> = decode(body)?;
    for (index, record) in records.iter_mut().enumerate() {
        record
            .normalise()
            .map_err(|reason| Error::InvalidRecord { index, reason })?;
    }
    Ok(records)
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<Vec<T>> {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        // Parse the array's elements one by one so a bad one is named by index.
        let values: Vec<serde_json::Value> = serde_json::from_str(trimmed)
            .map_err(|e| Error::InvalidInput(format!("the body is not a JSON array: {e}")))?;
        if values.len() > MAX_RECORDS {
            return Err(too_many(values.len()));
        }
        values
            .into_iter()
            .enumerate()
            .map(|(index, value)| {
                serde_json::from_value(value).map_err(|e| Error::InvalidRecord {
                    index,
                    reason: e.to_string(),
                })
            })
            .collect()
    } else {
        let mut records = Vec::new();
        for line in trimmed.lines().filter(|line| !line.trim().is_empty()) {
            let index = records.len();
            if index >= MAX_RECORDS {
                return Err(too_many(index + 1));
            }
            records.push(
                serde_json::from_str(line).map_err(|e| Error::InvalidRecord {
                    index,
                    reason: e.to_string(),
                })?,
            );
        }
        Ok(records)
    }
}

fn too_many(count: usize) -> Error {
    Error::InvalidInput(format!(
        "{count} records in one request; send at most {MAX_RECORDS} per request"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LINE: &str = r#"{"job_id":1,"agent_id":"a","org_id":2,"level":"info","message":"hi","ts":1795852800000,"seq":1}"#;

    #[test]
    fn arrays_and_ndjson_decode_alike() {
        let array = decode_logs(format!("[{LINE},{LINE}]").as_bytes()).expect("array");
        let ndjson = decode_logs(format!("{LINE}\n\n{LINE}\n").as_bytes()).expect("ndjson");
        assert_eq!(array, ndjson);
        assert_eq!(array.len(), 2);
        assert!(decode_logs(b"").expect("empty").is_empty());
    }

    #[test]
    fn one_bad_record_refuses_the_batch_and_names_it() {
        let body = format!("{LINE}\n{LINE}\n{{\"job_id\":1}}\n{LINE}\n");
        match decode_logs(body.as_bytes()) {
            Err(Error::InvalidRecord { index, reason }) => {
                assert_eq!(index, 2);
                assert!(reason.contains("missing field"), "{reason}");
            }
            other => panic!("expected InvalidRecord, got {other:?}"),
        }
        let body = format!("[{LINE}, {}]", LINE.replace("\"seq\":1", "\"seq\":0"));
        assert!(matches!(
            decode_logs(body.as_bytes()),
            Err(Error::InvalidRecord { index: 1, .. })
        ));
    }

    #[test]
    fn invalid_utf8_is_replaced_not_refused() {
        let mut body = LINE.replace("hi", "h\u{1}i").into_bytes();
        let at = body.iter().position(|&b| b == 1).expect("marker");
        body[at] = 0xff;
        // 0xff inside a JSON string: lossily decoded to U+FFFD.
        let records = decode_logs(&body).expect("decoded");
        assert_eq!(records[0].message, "h\u{fffd}i");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_logs(&bytes);
            let _ = decode_metadata(&bytes);
        }

        #[test]
        fn arbitrary_ndjson_lines_never_panic(lines in proptest::collection::vec("[ -~]{0,80}", 0..8)) {
            let _ = decode_logs(lines.join("\n").as_bytes());
        }
    }
}
