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

    /// A composed entry is its staged parts moved, not copied (the part file's
    /// inode is the one staged), listed by a manifest; parts moved by a compose
    /// that crashed before writing its manifest are removed at the next open.
    #[tokio::test]
    async fn composing_moves_the_parts_and_a_crash_before_the_manifest_leaves_nothing() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = FsBackend::open(dir.path()).expect("open");
        for part in ["a", "b"] {
            backend
                .put_part(
                    "up",
                    part,
                    nimbus_cache::backend::bytes_stream(part.repeat(1000)),
                )
                .await
                .expect("part");
        }
        let inode = std::fs::metadata(dir.path().join("staging/up/a"))
            .expect("staged")
            .ino();
        let parts = ["a".to_string(), "b".to_string()];
        assert_eq!(
            backend
                .compose("up", &parts, "org-1/x")
                .await
                .expect("compose"),
            2000
        );
        let manifest =
            std::fs::read_to_string(dir.path().join("manifests/org-1/x")).expect("manifest");
        let composed = dir
            .path()
            .join("composed")
            .join(manifest.lines().nth(1).expect("dir"));
        assert_eq!(
            std::fs::metadata(composed.join("a")).expect("moved").ino(),
            inode,
            "the same file, not a copy"
        );
        // A compose interrupted after the move, before the manifest.
        std::fs::create_dir_all(dir.path().join("composed/orphan")).expect("mkdir");
        std::fs::write(dir.path().join("composed/orphan/a"), b"x").expect("write");
        let backend = FsBackend::open(dir.path()).expect("reopen");
        assert!(!dir.path().join("composed/orphan").exists());
        assert!(composed.exists(), "listed parts stay");
        assert_eq!(
            nimbus_cache::backend::read_to_vec(&backend, "org-1/x", None)
                .await
                .expect("get")
                .len(),
            2000
        );
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
