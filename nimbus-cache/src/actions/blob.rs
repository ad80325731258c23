//! The Azure Blob block-blob subset the v2 client's upload uses, on links the proxy
//! signed (`/_blob/upload/{id}?exp=…&sig=…`), and the plain download.
//!
//! - `PUT` (no `comp`): Put Blob, the whole archive in one body (≤ 128 MiB from
//!   the client); stored and committed at once.
//! - `PUT ?comp=block&blockid=B`: Put Block, staged; any order, in parallel.
//! - `PUT ?comp=blocklist`: Put Block List, `<BlockList><Latest>B</Latest>…`,
//!   joins the blocks in that order and commits.

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;

use crate::cache::PartOrder;
use crate::error::{Error, Result};
use crate::index::{EntryState, Part};
use crate::server::{body_stream, serve_entry, Proxy};

/// Azure's limit on a block id (before base64).
const MAX_BLOCK_ID_BYTES: usize = 64;
/// A block list names at most this many blocks (Azure: 50,000).
const MAX_BLOCKS: usize = 50_000;

/// The query string of a signed blob link: `exp` (expiry, Unix seconds) and
/// `sig` (the proxy's signature), plus Azure's `comp` and `blockid` on uploads.
/// Every field is optional here; the handlers reject what they need and miss.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LinkQuery {
    exp: Option<String>,
    sig: Option<String>,
    comp: Option<String>,
    blockid: Option<String>,
}

impl LinkQuery {
    /// The link's expiry and signature; a link without them is not one the
    /// proxy signed (401, like any missing credential).
    fn credentials(&self) -> Result<(i64, &str)> {
        match (
            self.exp.as_deref().and_then(|e| e.parse::<i64>().ok()),
            self.sig.as_deref(),
        ) {
            (Some(exp), Some(sig)) => Ok((exp, sig)),
            _ => Err(Error::Unauthenticated(
                "this link carries no valid signature (exp, sig): use the link the cache API answered".into(),
            )),
        }
    }
}

/// The query of a link: an unparsable one is a 400 JSON error.
fn link_query(query: Result<Query<LinkQuery>, QueryRejection>) -> Result<LinkQuery> {
    query
        .map(|Query(query)| query)
        .map_err(|e| Error::InvalidInput(format!("invalid query: {}", e.body_text())))
}

/// A block id as a staging part name: the hex of its bytes (ids are base64 of up
/// to 64 bytes; hex keeps names to a safe alphabet).
fn block_part_name(block_id: &str) -> Result<String> {
    let bytes = STANDARD
        .decode(block_id.trim())
        .map_err(|_| Error::InvalidInput(format!("block id {block_id:?} is not base64")))?;
    if bytes.is_empty() || bytes.len() > MAX_BLOCK_ID_BYTES {
        return Err(Error::InvalidInput(format!(
            "block id {block_id:?} must decode to 1 to {MAX_BLOCK_ID_BYTES} bytes"
        )));
    }
    Ok(format!("b{}", hex::encode(bytes)))
}

/// The block's index when its id is one the Azure SDK makes (as the official
/// cache client's uploads do): base64 of 48 characters, a random prefix and the
/// block's index zero-padded to at least 6 digits; the blocks are listed in
/// that order, so the index is where the block goes ([`Part::rank`]). Any other
/// id has no rank and is staged on its own (and joined just as well).
fn block_rank(block_id: &str) -> Option<u32> {
    let bytes = STANDARD.decode(block_id.trim()).ok()?;
    if bytes.len() != 48 || !bytes.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let digits = &bytes[bytes.len() - 6..];
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The block ids of a `<BlockList>` body, in order (`Latest`, `Uncommitted` and
/// `Committed` all name staged blocks here: nothing is committed before the list).
/// Any bytes get an answer, never a panic (fuzzed).
pub fn parse_block_list(body: &[u8]) -> Result<Vec<String>> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut ids = Vec::new();
    let mut in_block = false;
    let mut saw_root = false;
    let mut buffer = Vec::new();
    loop {
        match reader.read_event_into(&mut buffer) {
            Ok(Event::Start(tag)) => match tag.name().as_ref() {
                b"BlockList" => saw_root = true,
                b"Latest" | b"Uncommitted" | b"Committed" => in_block = true,
                other => {
                    return Err(Error::InvalidInput(format!(
                        "unexpected element <{}> in the block list",
                        String::from_utf8_lossy(other)
                    )))
                }
            },
            Ok(Event::End(tag)) => {
                if matches!(
                    tag.name().as_ref(),
                    b"Latest" | b"Uncommitted" | b"Committed"
                ) {
                    in_block = false;
                }
            }
            Ok(Event::Text(text)) if in_block => {
                let raw = text
                    .decode()
                    .map_err(|e| Error::InvalidInput(format!("block list: {e}")))?;
                let id = quick_xml::escape::unescape(&raw)
                    .map_err(|e| Error::InvalidInput(format!("block list: {e}")))?;
                ids.push(block_part_name(&id)?);
                if ids.len() > MAX_BLOCKS {
                    return Err(Error::InvalidInput(format!(
                        "a block list names at most {MAX_BLOCKS} blocks"
                    )));
                }
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => {
                return Err(Error::InvalidInput(format!(
                    "block list is not valid XML: {e}"
                )))
            }
        }
        buffer.clear();
    }
    if !saw_root || ids.is_empty() {
        return Err(Error::InvalidInput("the block list names no blocks".into()));
    }
    Ok(ids)
}

/// The headers the Azure SDK reads from a successful write.
fn created(entry_sha: Option<&str>) -> Response {
    let now = time::OffsetDateTime::now_utc();
    let last_modified = now
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default()
        .replace("+0000", "GMT");
    let etag = format!(
        "\"0x{}\"",
        entry_sha
            .map(|s| s[..16.min(s.len())].to_uppercase())
            .unwrap_or_else(|| format!("{:X}", now.unix_timestamp_nanos()))
    );
    (
        StatusCode::CREATED,
        [
            (header::ETAG, etag),
            (header::LAST_MODIFIED, last_modified),
            (
                header::HeaderName::from_static("x-ms-request-id"),
                uuid::Uuid::new_v4().to_string(),
            ),
            (
                header::HeaderName::from_static("x-ms-version"),
                "2024-11-04".to_string(),
            ),
            (
                header::HeaderName::from_static("x-ms-request-server-encrypted"),
                "true".to_string(),
            ),
        ],
    )
        .into_response()
}

/// `PUT /_blob/upload/{id}`
pub async fn upload(
    State(state): State<Proxy>,
    Path(id): Path<i64>,
    query: Result<Query<LinkQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let query = link_query(query)?;
    let (exp, sig) = query.credentials()?;
    state.check_link("upload", id, exp, sig)?;
    let entry = state.cache.entry(id).await?;
    if entry.state != EntryState::Pending {
        return Err(Error::Conflict(format!(
            "cache entry {id} is already committed"
        )));
    }
    let content_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match query.comp.as_deref() {
        None => {
            let committed = state
                .cache
                .upload_whole(&entry, body_stream(body), content_length, false)
                .await?;
            state.wake_maintenance.notify_one();
            Ok(created(committed.sha256.as_deref()))
        }
        Some("block") => {
            let block_id = query
                .blockid
                .as_deref()
                .ok_or_else(|| Error::InvalidInput("Put Block needs a blockid".into()))?;
            let name = block_part_name(block_id)?;
            let rank = block_rank(block_id);
            state
                .cache
                .upload_part(
                    &entry,
                    Part {
                        name,
                        start: None,
                        size: content_length.unwrap_or(0),
                        sha256: None,
                        rank,
                    },
                    body_stream(body),
                )
                .await?;
            Ok(created(None))
        }
        Some("blocklist") => {
            let bytes: Bytes = axum::body::to_bytes(body, 8 * 1024 * 1024)
                .await
                .map_err(|e| Error::InvalidInput(format!("block list body: {e}")))?;
            let ids = match parse_block_list(&bytes) {
                Ok(ids) => ids,
                Err(error) => {
                    state.cache.discard(&entry).await;
                    return Err(error);
                }
            };
            let committed = state
                .cache
                .commit(&entry, PartOrder::Listed(ids), false)
                .await?;
            state.wake_maintenance.notify_one();
            Ok(created(committed.sha256.as_deref()))
        }
        Some(other) => Err(Error::InvalidInput(format!(
            "comp={other} is not supported (block, blocklist or none)"
        ))),
    }
}

/// `GET|HEAD /_blob/download/{id}`
pub async fn download(
    State(state): State<Proxy>,
    Path(id): Path<i64>,
    query: Result<Query<LinkQuery>, QueryRejection>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response> {
    let query = link_query(query)?;
    let (exp, sig) = query.credentials()?;
    state.check_link("download", id, exp, sig)?;
    let entry = state.cache.entry(id).await?;
    if entry.state != EntryState::Committed {
        return Err(Error::NotFound(format!("cache entry {id}")));
    }
    serve_entry(&state, &entry, &headers, method == Method::HEAD).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_lists_parse_in_order() {
        let a = STANDARD.encode("block-0000");
        let b = STANDARD.encode("block-0001");
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList><Latest>{b}</Latest><Latest>{a}</Latest></BlockList>"
        );
        let ids = parse_block_list(xml.as_bytes()).expect("parses");
        assert_eq!(
            ids,
            vec![
                block_part_name(&b).expect("b"),
                block_part_name(&a).expect("a")
            ]
        );
    }

    #[test]
    fn bad_block_lists_are_refused() {
        for body in [
            "",
            "<BlockList></BlockList>",
            "<BlockList><Latest>!!</Latest></BlockList>",
            "<Other/>",
            "<BlockList><Latest>",
        ] {
            assert!(parse_block_list(body.as_bytes()).is_err(), "{body:?}");
        }
    }
}
