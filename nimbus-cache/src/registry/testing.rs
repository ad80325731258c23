//! Fixtures for registry tests and benchmarks (feature `testsuite`): the
//! reference distribution registry (Debian's `docker-registry`) as an upstream,
//! OCI image layouts of chosen layer sizes, and Debian's `skopeo` as the client.
//! Under CI=true a missing program fails instead of skipping.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// The reference registry, serving from `root` on a free loopback port.
pub struct UpstreamRegistry {
    child: Option<Child>,
    /// The loopback port it listens on.
    pub port: u16,
    /// Its access log (one line per request).
    pub log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or(5055)
}

/// Whether `program --version` runs.
fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

impl UpstreamRegistry {
    /// Starts `docker-registry` with its storage under `root`; `None` (or a
    /// panic under CI=true) when it is not installed.
    pub fn start(root: &Path) -> Option<Self> {
        nimbus_core::testsuite::require(
            installed("docker-registry").then_some(()),
            "docker-registry (scripts/services.sh start registry)",
        )?;
        std::fs::create_dir_all(root).ok()?;
        let port = free_port();
        let config = root.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                root.join("data").display()
            ),
        )
        .ok()?;
        let log = root.join("access.log");
        let output = std::fs::File::create(&log).ok()?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(output.try_clone().ok()?)
            .stderr(output)
            .spawn()
            .ok()?;
        let registry = UpstreamRegistry {
            child: Some(child),
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(registry)
    }

    /// Its base URL, `http://127.0.0.1:PORT` (plain HTTP).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `host:port`, as image references name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How many blob GETs it has answered (from its access log).
    pub fn blob_gets(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains("\"GET /v2/") && line.contains("/blobs/sha256:"))
            .count()
    }

    /// Stops it (a pull that still works is served by the mirror alone).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for UpstreamRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An OCI image layout on disk (`oci:DIR:TAG` for skopeo).
#[derive(Debug, Clone)]
pub struct ImageLayout {
    /// The layout's directory (`index.json`, `oci-layout`, `blobs/sha256/`).
    pub dir: PathBuf,
    /// The tag the image is named by in `index.json`.
    pub tag: String,
    /// The image manifest's digest, `sha256:HEX`.
    pub manifest_digest: String,
    /// Config and layers: digest and size.
    pub blobs: Vec<(String, u64)>,
}

impl ImageLayout {
    /// `oci:DIR:TAG`
    pub fn reference(&self) -> String {
        format!("oci:{}:{}", self.dir.display(), self.tag)
    }

    /// Bytes of the config and layers together (not the manifest).
    pub fn total_bytes(&self) -> u64 {
        self.blobs.iter().map(|(_, size)| size).sum()
    }
}

fn write_blob(dir: &Path, bytes: &[u8]) -> std::io::Result<(String, u64)> {
    let hex = hex::encode(Sha256::digest(bytes));
    std::fs::write(dir.join("blobs/sha256").join(&hex), bytes)?;
    Ok((format!("sha256:{hex}"), bytes.len() as u64))
}

/// Writes an image with incompressible layers of `layer_sizes` bytes (a fixed
/// xorshift stream from `seed`, so runs agree) into `dir`.
pub fn write_image(
    dir: &Path,
    tag: &str,
    layer_sizes: &[usize],
    seed: u64,
) -> std::io::Result<ImageLayout> {
    std::fs::create_dir_all(dir.join("blobs/sha256"))?;
    let mut state = seed | 1;
    let mut layers = Vec::new();
    for size in layer_sizes {
        let mut bytes = vec![0u8; *size];
        for chunk in bytes.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        layers.push(write_blob(dir, &bytes)?);
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>()},
    });
    let config = write_blob(dir, config.to_string().as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": super::manifest::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": layers.iter().map(|(digest, size)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size,
        })).collect::<Vec<_>>(),
    });
    let (manifest_digest, manifest_size) = write_blob(dir, manifest.to_string().as_bytes())?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": super::manifest::OCI_MANIFEST,
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string())?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut blobs = vec![config];
    blobs.extend(layers);
    Ok(ImageLayout {
        dir: dir.to_path_buf(),
        tag: tag.to_string(),
        manifest_digest,
        blobs,
    })
}

/// Whether skopeo is installed (through `require`).
pub fn skopeo_available() -> bool {
    nimbus_core::testsuite::require(
        installed("skopeo").then_some(()),
        "skopeo (scripts/services.sh start registry)",
    )
    .is_some()
}

/// `skopeo copy SRC DEST` over plain HTTP, with `creds` (`user:password`) for
/// the source and the destination; `Err(stderr)` when it fails.
pub fn skopeo_copy(
    source: &str,
    destination: &str,
    source_creds: Option<&str>,
    destination_creds: Option<&str>,
) -> Result<(), String> {
    let mut command = Command::new("skopeo");
    command.args([
        "--insecure-policy",
        "copy",
        "--retry-times=0",
        // Copy bytes as they are: without it skopeo gzips uncompressed layers on
        // the way to a registry, and the digests change.
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
    ]);
    if let Some(creds) = source_creds {
        command.arg(format!("--src-creds={creds}"));
    }
    if let Some(creds) = destination_creds {
        command.arg(format!("--dest-creds={creds}"));
    }
    let output = command
        .arg(source)
        .arg(destination)
        .env("HOME", std::env::temp_dir())
        .output()
        .map_err(|e| format!("running skopeo: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// The sha256 of every blob and the manifest of a `dir:` copy, sorted.
pub fn blob_digests(dir: &Path) -> Vec<String> {
    let mut digests: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.path().is_file())
                .filter(|entry| entry.file_name() != "version")
                .filter_map(|entry| std::fs::read(entry.path()).ok())
                .map(|bytes| format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
                .collect()
        })
        .unwrap_or_default();
    digests.sort();
    digests
}
