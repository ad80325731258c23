//! Guest assets — kernel, initramfs, rootfs — and their attestation.
//!
//! `nimbus assets build DIR` ([`build`]) writes the files and a `manifest.json`
//! with the sha256 of each. Before a VM boots, [`AssetSet::verify`] hashes the files
//! that driver uses and refuses any that differ from the manifest (and, when
//! `NIMBUS_ROOTFS_SHA256` pins it, a manifest whose rootfs is not the pinned one).
//! Hashes are remembered per (path, size, mtime, ctime, inode), so a long-running
//! agent hashes each asset once, and any change to a file — even a flipped byte
//! written in place — makes it hash again.

pub mod build;
mod elf;
mod initramfs;
mod vmlinux;

pub use build::{AssetBuilder, BuildOptions};
pub use elf::is_static_elf;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{DriverKind, Error, Result};

pub const MANIFEST: &str = "manifest.json";
pub const KERNEL: &str = "vmlinuz";
pub const VMLINUX: &str = "vmlinux";
pub const INITRD: &str = "initrd.img";
pub const ROOTFS_IMAGE: &str = "rootfs.ext4";
pub const ROOTFS_TREE: &str = "rootfs";
/// Where the guest agent lives inside the rootfs.
pub const GUEST_IN_ROOTFS: &str = "usr/local/bin/nimbus-guest";
/// The manifest key of the guest agent inside the tree (the sandbox boots the tree).
pub const GUEST_IN_TREE: &str = "rootfs/usr/local/bin/nimbus-guest";
pub const MANIFEST_FORMAT: u32 = 1;
/// The operator-supplied GitHub Actions runner release, as given (kept for the manifest).
pub const ACTIONS_RUNNER_TARBALL: &str = "actions-runner.tar.gz";
/// Where the runner is unpacked in the rootfs (the guest starts `run.sh` there).
pub const ACTIONS_RUNNER_IN_ROOTFS: &str = "opt/actions-runner";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub created_at: String,
    pub kernel_release: String,
    pub debian_suite: String,
    /// File name (relative to the asset directory) → digest.
    pub files: BTreeMap<String, FileDigest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    pub sha256: String,
    pub size: u64,
}

/// An asset directory whose manifest has been read (nothing hashed yet).
#[derive(Debug, Clone)]
pub struct AssetSet {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// Asset paths whose content matched the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssets {
    pub kernel: PathBuf,
    pub vmlinux: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub rootfs: PathBuf,
    pub rootfs_tree: Option<PathBuf>,
    pub kernel_release: String,
}

impl AssetSet {
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::Assets(format!(
                "cannot read {}: {e} (build the assets with `nimbus assets build {}`)",
                path.display(),
                dir.display()
            ))
        })?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
            Error::Assets(format!("{} is not a Nimbus manifest: {e}", path.display()))
        })?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(Error::Assets(format!(
                "{} has format {}, this Nimbus reads format {MANIFEST_FORMAT}: rebuild the assets",
                path.display(),
                manifest.format
            )));
        }
        Ok(AssetSet {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// Hashes the files `driver` boots from and compares them with the manifest.
    pub fn verify(
        &self,
        driver: DriverKind,
        pinned_rootfs_sha256: Option<&str>,
    ) -> Result<VerifiedAssets> {
        if let Some(pinned) = pinned_rootfs_sha256 {
            let recorded = self.digest(ROOTFS_IMAGE)?;
            if !recorded.sha256.eq_ignore_ascii_case(pinned.trim()) {
                return Err(Error::Attestation {
                    path: self.dir.join(ROOTFS_IMAGE),
                    reason: format!(
                        "the manifest's rootfs sha256 {} is not the pinned NIMBUS_ROOTFS_SHA256 {}",
                        recorded.sha256,
                        pinned.trim()
                    ),
                });
            }
        }
        let has_vmlinux = self.manifest.files.contains_key(VMLINUX);
        let needed: &[&str] = match driver {
            // QEMU boots the ELF vmlinux through PVH when there is one (no
            // decompression, which is slow under TCG), else the bzImage.
            DriverKind::Qemu if has_vmlinux => &[VMLINUX, INITRD, ROOTFS_IMAGE],
            DriverKind::Qemu => &[KERNEL, INITRD, ROOTFS_IMAGE],
            DriverKind::Firecracker => &[VMLINUX, ROOTFS_IMAGE],
            DriverKind::Sandbox => &[GUEST_IN_TREE],
        };
        for name in needed {
            self.check(name)?;
        }
        let has = |name: &str| {
            self.manifest
                .files
                .contains_key(name)
                .then(|| self.dir.join(name))
        };
        Ok(VerifiedAssets {
            kernel: self.dir.join(KERNEL),
            vmlinux: has(VMLINUX),
            initrd: has(INITRD),
            rootfs: self.dir.join(ROOTFS_IMAGE),
            rootfs_tree: (driver == DriverKind::Sandbox).then(|| self.dir.join(ROOTFS_TREE)),
            kernel_release: self.manifest.kernel_release.clone(),
        })
    }

    fn digest(&self, name: &str) -> Result<&FileDigest> {
        self.manifest
            .files
            .get(name)
            .ok_or_else(|| Error::Attestation {
                path: self.dir.join(name),
                reason: "not listed in the manifest".into(),
            })
    }

    fn check(&self, name: &str) -> Result<()> {
        let expected = self.digest(name)?;
        let path = self.dir.join(name);
        let actual = sha256_file_cached(&path)?;
        if !actual.eq_ignore_ascii_case(&expected.sha256) {
            return Err(Error::Attestation {
                path,
                reason: format!(
                    "sha256 {actual} does not match the manifest's {} (the file changed after \
                     `nimbus assets build`; rebuild or restore it)",
                    expected.sha256
                ),
            });
        }
        Ok(())
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).map_err(Error::io(format!("opening {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn stamp(path: &Path) -> Result<FileStamp> {
    let meta = std::fs::metadata(path).map_err(|e| Error::Attestation {
        path: path.to_path_buf(),
        reason: format!("missing: {e}"),
    })?;
    Ok(FileStamp {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
    })
}

fn sha256_file_cached(path: &Path) -> Result<String> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, (FileStamp, String)>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let before = stamp(path)?;
    if let Ok(cache) = cache.lock() {
        if let Some((cached, digest)) = cache.get(path) {
            if *cached == before {
                return Ok(digest.clone());
            }
        }
    }
    let digest = sha256_file(path)?;
    // Only remember a hash if the file did not change while it was read.
    if stamp(path)? == before {
        if let Ok(mut cache) = cache.lock() {
            cache.insert(path.to_path_buf(), (before, digest.clone()));
        }
    }
    Ok(digest)
}

/// Digest entry for a file.
pub fn file_digest(path: &Path) -> Result<FileDigest> {
    let size = std::fs::metadata(path)
        .map_err(Error::io(format!("reading {}", path.display())))?
        .len();
    Ok(FileDigest {
        sha256: sha256_file(path)?,
        size,
    })
}

/// Writes a manifest atomically (temp file + rename).
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let text = serde_json::to_string_pretty(manifest)
        .map_err(|e| Error::Assets(format!("serializing the manifest: {e}")))?;
    let temp = dir.join(".manifest.json.tmp");
    std::fs::write(&temp, text + "\n").map_err(Error::io("writing the manifest"))?;
    std::fs::rename(&temp, dir.join(MANIFEST)).map_err(Error::io("writing the manifest"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    fn fake_assets() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "nimbus-assets-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rootfs/usr/local/bin")).expect("dir");
        let mut files = BTreeMap::new();
        for (name, content) in [
            (KERNEL, &b"kernel"[..]),
            (INITRD, b"initrd"),
            (ROOTFS_IMAGE, &[7u8; 4096][..]),
            (GUEST_IN_TREE, b"guest"),
        ] {
            std::fs::write(dir.join(name), content).expect("write");
            files.insert(
                name.to_string(),
                file_digest(&dir.join(name)).expect("digest"),
            );
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            created_at: "2026-11-27T00:00:00Z".into(),
            kernel_release: "6.1.0-test".into(),
            debian_suite: "bookworm".into(),
            files,
        };
        write_manifest(&dir, &manifest).expect("manifest");
        dir
    }

    #[test]
    fn intact_assets_verify_and_a_flipped_byte_is_refused() {
        let dir = fake_assets();
        let set = AssetSet::open(&dir).expect("opens");
        let verified = set.verify(DriverKind::Qemu, None).expect("verifies");
        assert_eq!(verified.rootfs, dir.join(ROOTFS_IMAGE));
        assert_eq!(verified.kernel_release, "6.1.0-test");

        // Flip one byte in place (same size, same inode).
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(ROOTFS_IMAGE))
            .expect("open");
        file.seek(SeekFrom::Start(2048)).expect("seek");
        file.write_all(&[8]).expect("flip");
        drop(file);
        let error = set.verify(DriverKind::Qemu, None).expect_err("refused");
        let text = error.to_string();
        assert!(
            text.contains("rootfs.ext4") && text.contains("does not match"),
            "{text}"
        );
        // The sandbox does not boot the image, so it still verifies.
        assert!(set.verify(DriverKind::Sandbox, None).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_pinned_rootfs_must_be_the_manifests() {
        let dir = fake_assets();
        let set = AssetSet::open(&dir).expect("opens");
        let real = set.manifest.files[ROOTFS_IMAGE].sha256.clone();
        assert!(set.verify(DriverKind::Qemu, Some(&real)).is_ok());
        let error = set
            .verify(DriverKind::Qemu, Some(&"0".repeat(64)))
            .expect_err("refused");
        assert!(error.to_string().contains("NIMBUS_ROOTFS_SHA256"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_missing_manifest_says_how_to_build_one() {
        let error = AssetSet::open(Path::new("/nonexistent/assets")).expect_err("missing");
        assert!(error.to_string().contains("nimbus assets build"));
    }
}
