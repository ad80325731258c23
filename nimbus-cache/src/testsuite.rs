//! The shared [`CacheBackend`](crate::CacheBackend) test suite: every backend
//! (and an embedder's own) must pass it. Use [`cache_backend_test_suite!`].

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::backend::{
    bytes_stream, read_to_vec, ByteRange, ByteStream, CacheBackend, ObjectMeta, ObjectReader,
    StoredObject,
};
use crate::error::{Error, Result};

/// A backend whose every call fails: what a suite runs against when its real
/// service is missing outside CI (each case then returns early).
pub struct Unavailable;

#[async_trait]
impl CacheBackend for Unavailable {
    fn name(&self) -> &'static str {
        "unavailable"
    }
    async fn put(&self, _: &str, _: ByteStream) -> Result<StoredObject> {
        Err(Error::Backend("unavailable".into()))
    }
    async fn get(&self, _: &str, _: Option<ByteRange>) -> Result<ObjectReader> {
        Err(Error::Backend("unavailable".into()))
    }
    async fn head(&self, _: &str) -> Result<Option<ObjectMeta>> {
        Err(Error::Backend("unavailable".into()))
    }
    async fn delete(&self, _: &str) -> Result<()> {
        Err(Error::Backend("unavailable".into()))
    }
    async fn list(&self, _: &str) -> Result<Vec<ObjectMeta>> {
        Err(Error::Backend("unavailable".into()))
    }
    async fn put_part(&self, _: &str, _: &str, _: ByteStream) -> Result<StoredObject> {
        Err(Error::Backend("unavailable".into()))
    }
    async fn complete(&self, _: &str, _: &[String], _: &str) -> Result<StoredObject> {
        Err(Error::Backend("unavailable".into()))
    }
    async fn abort(&self, _: &str) -> Result<()> {
        Err(Error::Backend("unavailable".into()))
    }
    async fn list_uploads(&self) -> Result<Vec<String>> {
        Err(Error::Backend("unavailable".into()))
    }
}

/// A body of `chunks` pieces that fails with an I/O error at the end, like a
/// client killed mid-upload.
pub fn truncated_stream(chunks: Vec<Bytes>) -> ByteStream {
    Box::pin(
        futures::stream::iter(chunks.into_iter().map(Ok)).chain(futures::stream::once(async {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "client went away",
            ))
        })),
    )
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A put is read back whole, headed and deleted; deleting twice is fine.
pub async fn put_get_head_delete(backend: &dyn CacheBackend) {
    let data = pattern(300_000, 1);
    let stored = backend
        .put("suite/a/object", bytes_stream(data.clone()))
        .await
        .expect("put");
    assert_eq!(stored.size, data.len() as u64);
    assert_eq!(stored.sha256, sha256_hex(&data));
    assert_eq!(
        read_to_vec(backend, "suite/a/object", None)
            .await
            .expect("get"),
        data
    );
    let head = backend
        .head("suite/a/object")
        .await
        .expect("head")
        .expect("exists");
    assert_eq!(head.size, data.len() as u64);
    backend.delete("suite/a/object").await.expect("delete");
    assert!(backend
        .head("suite/a/object")
        .await
        .expect("head")
        .is_none());
    backend
        .delete("suite/a/object")
        .await
        .expect("deleting twice is fine");
    assert!(matches!(
        backend.get("suite/a/object", None).await.err(),
        Some(Error::NotFound(_))
    ));
}

/// Ranged reads return the range, clamped to the object's end.
pub async fn ranged_reads(backend: &dyn CacheBackend) {
    let data = pattern(10_000, 2);
    backend
        .put("suite/ranged", bytes_stream(data.clone()))
        .await
        .expect("put");
    let part = read_to_vec(
        backend,
        "suite/ranged",
        Some(ByteRange {
            start: 100,
            end: 250,
        }),
    )
    .await
    .expect("range");
    assert_eq!(part, &data[100..250]);
    let tail = read_to_vec(
        backend,
        "suite/ranged",
        Some(ByteRange {
            start: 9_990,
            end: 20_000,
        }),
    )
    .await
    .expect("clamped");
    assert_eq!(tail, &data[9_990..]);
    let reader = backend
        .get("suite/ranged", Some(ByteRange { start: 5, end: 6 }))
        .await
        .expect("range");
    assert_eq!(reader.size, 10_000, "size is the whole object's");
    backend.delete("suite/ranged").await.expect("delete");
}

/// Listing returns the objects under a prefix, in key order.
pub async fn list_by_prefix(backend: &dyn CacheBackend) {
    for key in [
        "suite/list/b",
        "suite/list/a",
        "suite/list/sub/c",
        "suite/other",
    ] {
        backend
            .put(key, bytes_stream(Bytes::from_static(b"x")))
            .await
            .expect("put");
    }
    let keys: Vec<String> = backend
        .list("suite/list/")
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, ["suite/list/a", "suite/list/b", "suite/list/sub/c"]);
    for key in [
        "suite/list/b",
        "suite/list/a",
        "suite/list/sub/c",
        "suite/other",
    ] {
        backend.delete(key).await.expect("delete");
    }
}

/// Parts staged out of order are joined in the order `complete` is given.
pub async fn staged_upload_joins_parts_in_the_given_order(backend: &dyn CacheBackend) {
    let first = pattern(70_000, 3);
    let second = pattern(50_000, 4);
    // Parts arrive out of order; the list puts them right.
    backend
        .put_part("upload1", "p2", bytes_stream(second.clone()))
        .await
        .expect("p2");
    backend
        .put_part("upload1", "p1", bytes_stream(first.clone()))
        .await
        .expect("p1");
    assert!(
        backend.head("suite/staged").await.expect("head").is_none(),
        "invisible before commit"
    );
    assert!(backend
        .list_uploads()
        .await
        .expect("uploads")
        .contains(&"upload1".to_string()));
    let stored = backend
        .complete(
            "upload1",
            &["p1".to_string(), "p2".to_string()],
            "suite/staged",
        )
        .await
        .expect("complete");
    let mut expected = first;
    expected.extend_from_slice(&second);
    assert_eq!(stored.size, expected.len() as u64);
    assert_eq!(
        read_to_vec(backend, "suite/staged", None)
            .await
            .expect("get"),
        expected
    );
    assert!(!backend
        .list_uploads()
        .await
        .expect("uploads")
        .contains(&"upload1".to_string()));
    backend.delete("suite/staged").await.expect("delete");
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data))
}

/// `compose` joins staged parts without the caller reading them back: large
/// parts (S3 copies those server-side) and small ones (S3 cannot; the backend
/// must still join them), each part's sha256 reported by `put_part`.
pub async fn compose_joins_parts_without_reading_them_back(backend: &dyn CacheBackend) {
    // Over S3's 5 MiB minimum for every part but the last.
    let big = [
        pattern(6 << 20, 6),
        pattern((5 << 20) + 17, 7),
        pattern(1000, 8),
    ];
    let small = [pattern(10, 9), pattern(70_000, 10)];
    for (upload, parts) in [("compose-big", &big[..]), ("compose-small", &small[..])] {
        // Staged out of order, as parallel clients do.
        for (i, data) in parts.iter().enumerate().rev() {
            let staged = backend
                .put_part(upload, &format!("p{i}"), bytes_stream(data.clone()))
                .await
                .expect("put part");
            assert_eq!(staged.size, data.len() as u64);
            assert_eq!(staged.sha256, sha256_hex(data), "the part's own sha256");
        }
        let names: Vec<String> = (0..parts.len()).map(|i| format!("p{i}")).collect();
        let key = format!("suite/{upload}");
        let size = backend
            .compose(upload, &names, &key)
            .await
            .expect("compose");
        let expected = parts.concat();
        assert_eq!(size, expected.len() as u64);
        let stored = read_to_vec(backend, &key, None).await.expect("get");
        assert!(stored == expected, "{upload}: the parts, joined in order");
        // Ranges across the parts' boundaries, head and list, as for any object.
        let first = parts[0].len() as u64;
        for (start, end) in [(first - 3, first + 5), (1, expected.len() as u64 - 1)] {
            let ranged = read_to_vec(backend, &key, Some(ByteRange { start, end }))
                .await
                .expect("ranged get");
            assert!(
                ranged == expected[start as usize..end as usize],
                "{upload}: bytes {start}..{end}"
            );
        }
        let head = backend.head(&key).await.expect("head").expect("exists");
        assert_eq!(head.size, expected.len() as u64);
        let listed = backend.list("suite/compose").await.expect("list");
        assert!(
            listed
                .iter()
                .any(|meta| meta.key == key && meta.size == expected.len() as u64),
            "{upload}: listed with its size: {listed:?}"
        );
        assert!(!backend
            .list_uploads()
            .await
            .expect("uploads")
            .contains(&upload.to_string()));
        // A put replaces a composed object, as any other.
        backend
            .put(&key, bytes_stream(Bytes::from_static(b"replaced")))
            .await
            .expect("put over");
        assert_eq!(
            read_to_vec(backend, &key, None).await.expect("get"),
            b"replaced"
        );
        backend.delete(&key).await.expect("delete");
        assert!(backend.head(&key).await.expect("head").is_none());
    }
    // And a composed object replaces a put one.
    backend
        .put(
            "suite/compose-over",
            bytes_stream(Bytes::from_static(b"old")),
        )
        .await
        .expect("put");
    backend
        .put_part("compose-over", "p0", bytes_stream(pattern(1000, 2)))
        .await
        .expect("part");
    backend
        .compose("compose-over", &["p0".to_string()], "suite/compose-over")
        .await
        .expect("compose over");
    assert_eq!(
        read_to_vec(backend, "suite/compose-over", None)
            .await
            .expect("get"),
        pattern(1000, 2)
    );
    backend.delete("suite/compose-over").await.expect("delete");
    backend
        .put_part("compose-gap", "p1", bytes_stream(pattern(10, 1)))
        .await
        .expect("part");
    assert!(
        matches!(
            backend
                .compose(
                    "compose-gap",
                    &["p0".to_string(), "p1".to_string()],
                    "suite/gap"
                )
                .await,
            Err(Error::InvalidInput(_))
        ),
        "a part never uploaded"
    );
    assert!(backend.head("suite/gap").await.expect("head").is_none());
    backend.abort("compose-gap").await.expect("abort");
}

/// Parts staged in place ([`CacheBackend::put_part_at`]) are joined by
/// `compose_at` in the order given, whether their ranks run in that order (the
/// store's upload is completed as it is), out of it (rearranged), or mixed with
/// parts the store would not place; a body of another length than announced is
/// refused. A store without uploads of its own goes through the defaults.
pub async fn parts_staged_in_place_join_in_the_given_order(backend: &dyn CacheBackend) {
    use crate::backend::{Placement, StagedPart};
    let mib = 1u64 << 20;
    // (name, rank, bytes): a 17 MiB part is sent as two pieces, the last is too
    // small to place.
    let parts = [
        ("a", 0u32, pattern(6 * mib as usize, 21)),
        ("b", 1, pattern(9 * mib as usize, 22)),
        ("c", 2, pattern((17 * mib + 3) as usize, 23)),
        ("d", 3, pattern(1000, 24)),
    ];
    // In rank order: the store's upload is completed as it is. Out of it: completed,
    // then rearranged by copies, or streamed when a small part sits in the middle.
    for (case, order) in [
        ("in-order", [0usize, 1, 2, 3]),
        ("copied", [1, 0, 2, 3]),
        ("streamed", [1, 0, 3, 2]),
    ] {
        let upload = format!("inplace-{case}");
        let key = format!("suite/inplace-{case}");
        let handle = backend
            .begin_upload(&upload, &key)
            .await
            .expect("begin upload");
        let handle_text = handle.clone().unwrap_or_default();
        let mut staged = Vec::new();
        // Staged in reverse, as parallel clients may.
        for (name, rank, data) in parts.iter().rev() {
            let at = Placement {
                key: &key,
                handle: &handle_text,
                rank: *rank,
                size: data.len() as u64,
            };
            let placed = backend
                .put_part_at(&upload, name, &at, bytes_stream(data.clone()))
                .await
                .expect("put part at");
            assert_eq!(
                placed.stored.sha256,
                sha256_hex(data),
                "the part's own sha256"
            );
            if handle.is_some() {
                assert_eq!(
                    placed.placed,
                    *name != "d",
                    "{name}: placed unless too small"
                );
            }
            staged.push((
                *name,
                StagedPart {
                    name: name.to_string(),
                    size: data.len() as u64,
                    rank: placed.placed.then_some(*rank),
                },
            ));
        }
        staged.reverse();
        let listed: Vec<StagedPart> = order.iter().map(|&i| staged[i].1.clone()).collect();
        let size = backend
            .compose_at(&upload, &handle_text, &listed, &key)
            .await
            .expect("compose at");
        let expected: Vec<u8> = order.iter().flat_map(|&i| parts[i].2.clone()).collect();
        assert_eq!(size, expected.len() as u64, "{case}");
        let stored = read_to_vec(backend, &key, None).await.expect("get");
        assert!(
            stored == expected,
            "{case}: the parts, joined in the order given"
        );
        assert!(!backend
            .list_uploads()
            .await
            .expect("uploads")
            .contains(&upload));
        backend.delete(&key).await.expect("delete");
    }

    // A body shorter or longer than announced is refused.
    let handle = backend
        .begin_upload("inplace-short", "suite/inplace-short")
        .await
        .expect("begin upload")
        .unwrap_or_default();
    for (name, len) in [("short", 6 * mib - 1), ("long", 6 * mib + 1)] {
        let at = Placement {
            key: "suite/inplace-short",
            handle: &handle,
            rank: 0,
            size: 6 * mib,
        };
        let result = backend
            .put_part_at(
                "inplace-short",
                name,
                &at,
                bytes_stream(pattern(len as usize, 25)),
            )
            .await;
        if !handle.is_empty() {
            assert!(
                matches!(result, Err(Error::InvalidInput(_))),
                "{name}: {result:?}"
            );
        }
    }
    backend
        .abandon("suite/inplace-short", &handle)
        .await
        .expect("abandon");
    backend
        .abandon("suite/inplace-short", &handle)
        .await
        .expect("abandon twice");
    backend.abort("inplace-short").await.expect("abort");
    assert!(backend
        .head("suite/inplace-short")
        .await
        .expect("head")
        .is_none());
}

/// A truncated body leaves the previous object (or none) untouched; aborted uploads cannot complete.
pub async fn interrupted_writes_leave_nothing(backend: &dyn CacheBackend) {
    backend
        .put("suite/keep", bytes_stream(Bytes::from_static(b"old")))
        .await
        .expect("put");
    let result = backend
        .put(
            "suite/keep",
            truncated_stream(vec![Bytes::from(pattern(100_000, 5))]),
        )
        .await;
    assert!(result.is_err(), "a truncated body is an error");
    assert_eq!(
        read_to_vec(backend, "suite/keep", None)
            .await
            .expect("old object"),
        b"old",
        "the previous object is untouched"
    );
    let result = backend
        .put(
            "suite/never",
            truncated_stream(vec![Bytes::from_static(b"half")]),
        )
        .await;
    assert!(result.is_err());
    assert!(backend.head("suite/never").await.expect("head").is_none());
    backend
        .put_part("upload2", "p1", bytes_stream(Bytes::from_static(b"x")))
        .await
        .expect("part");
    backend.abort("upload2").await.expect("abort");
    backend.abort("upload2").await.expect("abort twice");
    assert!(backend
        .complete("upload2", &["p1".to_string()], "suite/x")
        .await
        .is_err());
    assert!(backend.head("suite/x").await.expect("head").is_none());
    backend.delete("suite/keep").await.expect("delete");
}

/// Keys and names that could escape the backend's namespace are refused.
pub async fn bad_keys_are_refused(backend: &dyn CacheBackend) {
    for key in ["../escape", "/abs", "a//b", ""] {
        assert!(
            matches!(
                backend
                    .put(key, bytes_stream(Bytes::from_static(b"x")))
                    .await,
                Err(Error::InvalidInput(_))
            ),
            "{key:?}"
        );
    }
    assert!(backend
        .put_part("../up", "p", bytes_stream(Bytes::new()))
        .await
        .is_err());
    assert!(backend
        .put_part("up", "../p", bytes_stream(Bytes::new()))
        .await
        .is_err());
}

/// Runs every case of the suite against the backend `make` builds (async, fresh per case).
#[macro_export]
macro_rules! cache_backend_test_suite {
    ($make:expr) => {
        mod cache_backend_suite {
            #[allow(unused_imports)]
            use super::*;
            use $crate::testsuite as suite;

            #[tokio::test]
            async fn compose_joins_parts_without_reading_them_back() {
                let backend = $make.await;
                if backend.name() == "unavailable" {
                    return;
                }
                suite::compose_joins_parts_without_reading_them_back(&*backend).await;
            }

            #[tokio::test]
            async fn parts_staged_in_place_join_in_the_given_order() {
                let backend = $make.await;
                if backend.name() == "unavailable" {
                    return;
                }
                suite::parts_staged_in_place_join_in_the_given_order(&*backend).await;
            }

            #[tokio::test]
            async fn put_get_head_delete() {
                let backend = $make.await;
                if backend.name() == "unavailable" {
                    return;
                }
                suite::put_get_head_delete(&*backend).await;
            }
            #[tokio::test]
            async fn ranged_reads() {
                let backend = $make.await;
                if backend.name() == "unavailable" {
                    return;
                }
                suite::ranged_reads(&*backend).await;
            }
            #[tokio::test]
            async fn list_by_prefix() {
                let backend = $make.await;
                if backend.name() == "unavailable" {
                    return;
                }
                suite::list_by_prefix(&*backend).await;
            }
            #[tokio::test]
            async fn staged_upload_joins_parts_in_the_given_order() {
                let backend = $make.await;
                if backend.name() == "unavailable" {
                    return;
                }
                suite::staged_upload_joins_parts_in_the_given_order(&*backend).await;
            }
            #[tokio::test]
            async fn interrupted_writes_leave_nothing() {
                let backend = $make.await;
                if backend.name() == "unavailable" {
                    return;
                }
                suite::interrupted_writes_leave_nothing(&*backend).await;
            }
            #[tokio::test]
            async fn bad_keys_are_refused() {
                let backend = $make.await;
                if backend.name() == "unavailable" {
                    return;
                }
                suite::bad_keys_are_refused(&*backend).await;
            }
        }
    };
}
