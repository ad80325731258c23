//! The shared backend suite on a local directory and on a real S3-compatible
//! server (`NIMBUS_TEST_S3_ENDPOINT`, SeaweedFS started by scripts/services.sh;
//! required under CI=true).

use std::sync::Arc;

use nimbus_cache::CacheBackend;

mod fs {
    use super::*;
    use nimbus_cache::backend::fs::FsBackend;

    async fn make() -> Arc<dyn CacheBackend> {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        Arc::new(FsBackend::open(dir).expect("fs backend"))
    }

    nimbus_cache::cache_backend_test_suite!(make());

    #[tokio::test]
    async fn leftovers_of_interrupted_writes_are_removed_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        FsBackend::open(dir.path()).expect("open");
        std::fs::write(dir.path().join("tmp/half-written"), b"partial").expect("write");
        FsBackend::open(dir.path()).expect("reopen");
        assert!(!dir.path().join("tmp/half-written").exists());
    }
}

mod s3 {
    use super::*;
    use nimbus_cache::backend::s3::S3Backend;
    use nimbus_cache::server::S3Config;

    pub async fn make() -> Arc<dyn CacheBackend> {
        let Some(config) = s3_config(&format!("suite-{}/", uuid::Uuid::new_v4().simple())) else {
            return skipped();
        };
        Arc::new(S3Backend::connect(&config).await.expect("s3 backend"))
    }

    /// A backend that fails every call, for runs without S3 outside CI.
    fn skipped() -> Arc<dyn CacheBackend> {
        eprintln!("skipping: S3 (NIMBUS_TEST_S3_ENDPOINT) is not available");
        Arc::new(nimbus_cache::testsuite::Unavailable)
    }

    pub fn s3_config(prefix: &str) -> Option<S3Config> {
        let endpoint = nimbus_core::testsuite::setting("NIMBUS_TEST_S3_ENDPOINT")?;
        Some(S3Config {
            bucket: "nimbus-test".into(),
            endpoint: Some(endpoint),
            region: "us-east-1".into(),
            prefix: prefix.into(),
            path_style: true,
            access_key_id: Some("testkey".into()),
            secret_access_key: Some(nimbus_core::Secret::new("testsecret")),
        })
    }

    nimbus_cache::cache_backend_test_suite!(make());

    #[tokio::test]
    async fn objects_larger_than_a_part_go_up_in_parts_and_come_back_whole() {
        let backend = make().await;
        if backend.name() != "s3" {
            return;
        }
        let size = nimbus_cache::backend::s3::PART_BYTES * 2 + 12_345;
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<_> = data
            .chunks(1 << 20)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let stored = backend
            .put("big/object", Box::pin(futures::stream::iter(chunks)))
            .await
            .expect("multipart put");
        assert_eq!(stored.size, size as u64);
        let back = nimbus_cache::backend::read_to_vec(&*backend, "big/object", None)
            .await
            .expect("get");
        assert!(back == data, "bytes differ");
        backend.delete("big/object").await.expect("delete");
    }
}
