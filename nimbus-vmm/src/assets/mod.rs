//! Guest assets — kernel, initramfs, rootfs — and their attestation.
//!
//! `nimbus assets build DIR` ([`build`]) writes the files and a `manifest.json`
//! with the sha256 of each. Before a VM boots, [`AssetSet::verify`] hashes the files
//! that driver uses and refuses any that differ from the manifest (and, when
//! `NIMBUS_ROOTFS_SHA256` pins it, a manifest whose rootfs is not the pinned one).
//! Hashes are remembered per (path, size, mtime, ctime, inode), so a long-running
//! agent hashes each asset once, and any change to a file — even a flipped byte
//! written in place — makes it hash again.
//!
//! The sandbox boots a directory tree rather than an image: `sandbox/rootfs`, a
//! copy of the rootfs whose owners are shifted into the sandbox's id range
//! ([`SANDBOX_ID_BASE`]: the job's root is that unprivileged host uid), attested
//! as a whole by [`tree_digest`] (every path, type, mode, owner, link target and
//! file content). The host starts the sandbox with `nimbus-guest` from the top of
//! the asset directory (root-owned, attested), never with a binary from a tree a
//! job's uid owns.

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

/// The manifest's file name in the asset directory.
pub const MANIFEST: &str = "manifest.json";
/// The compressed kernel (bzImage), for QEMU.
pub const KERNEL: &str = "vmlinuz";
/// The uncompressed ELF kernel, for Firecracker (and QEMU's faster PVH boot).
pub const VMLINUX: &str = "vmlinux";
/// The initramfs (busybox, virtio modules, `/init`).
pub const INITRD: &str = "initrd.img";
/// The rootfs as an ext4 image, for the VM drivers.
pub const ROOTFS_IMAGE: &str = "rootfs.ext4";
/// The rootfs as built, a directory tree: the image and [`SANDBOX_ROOT`] are made from it.
pub const ROOTFS_TREE: &str = "rootfs";
/// Where the guest agent lives inside the rootfs.
pub const GUEST_IN_ROOTFS: &str = "usr/local/bin/nimbus-guest";
/// The manifest key of the guest agent inside the tree.
pub const GUEST_IN_TREE: &str = "rootfs/usr/local/bin/nimbus-guest";
/// The guest agent the host runs to start a sandbox (root-owned, outside any tree).
pub const GUEST_BINARY: &str = "nimbus-guest";
/// The sandbox's directory (mode 0700: no host user but root reaches the tree).
pub const SANDBOX_DIR: &str = "sandbox";
/// The sandbox's root tree, owners shifted by [`SANDBOX_ID_BASE`].
pub const SANDBOX_ROOT: &str = "sandbox/rootfs";
/// Host uid (and gid) that uid 0 of a sandbox job maps to; the job's ids
/// `0..SANDBOX_ID_COUNT` are host ids `SANDBOX_ID_BASE..`. 0x70000000 lies above
/// the range systemd hands to containers and below 2^31, in ids no distribution
/// assigns: the job's root is nobody on the host.
pub const SANDBOX_ID_BASE: u32 = 0x7000_0000;
/// How many ids a sandbox maps, from [`SANDBOX_ID_BASE`] up (what a Debian system uses).
pub const SANDBOX_ID_COUNT: u32 = 65_536;
/// The manifest format this Nimbus writes and reads; any other is refused.
pub const MANIFEST_FORMAT: u32 = 1;
/// The operator-supplied GitHub Actions runner release, as given (kept for the manifest).
pub const ACTIONS_RUNNER_TARBALL: &str = "actions-runner.tar.gz";
/// Where the runner is unpacked in the rootfs (the guest starts `run.sh` there).
pub const ACTIONS_RUNNER_IN_ROOTFS: &str = "opt/actions-runner";

/// The asset directory's `manifest.json`: what was built, and the digest of every file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`] at build time.
    pub format: u32,
    /// When the assets were built, RFC 3339.
    pub created_at: String,
    /// `uname -r` of the kernel in the assets.
    pub kernel_release: String,
    /// The Debian release the assets were built from, e.g. `bookworm`.
    pub debian_suite: String,
    /// File name (relative to the asset directory) → digest.
    pub files: BTreeMap<String, FileDigest>,
    /// Directory (relative to the asset directory) → [`tree_digest`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trees: BTreeMap<String, FileDigest>,
}

/// A sha256 and size, of one file or of a whole tree ([`tree_digest`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    /// Lower-case hex sha256.
    pub sha256: String,
    /// Size in bytes (for a tree, the total of its files).
    pub size: u64,
}

/// An asset directory whose manifest has been read (nothing hashed yet).
#[derive(Debug, Clone)]
pub struct AssetSet {
    /// The asset directory.
    pub dir: PathBuf,
    /// Its parsed `manifest.json`.
    pub manifest: Manifest,
    /// sha256 of `manifest.json` as read: it names every file's digest, so it names
    /// the whole asset set (what snapshots are tied to).
    pub manifest_sha256: String,
}

/// Asset paths whose content matched the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssets {
    /// The compressed kernel (bzImage); always set, checked only for QEMU without a vmlinux.
    pub kernel: PathBuf,
    /// The ELF kernel, if the assets have one.
    pub vmlinux: Option<PathBuf>,
    /// The initramfs, if the assets have one.
    pub initrd: Option<PathBuf>,
    /// The ext4 rootfs image (checked for the VM drivers).
    pub rootfs: PathBuf,
    /// The shifted rootfs tree (sandbox driver only).
    pub rootfs_tree: Option<PathBuf>,
    /// The `nimbus-guest` the host runs to start a sandbox.
    pub guest: Option<PathBuf>,
    /// `uname -r` of the assets' kernel, from the manifest.
    pub kernel_release: String,
    /// sha256 of the asset set's `manifest.json`.
    pub manifest_sha256: String,
}

impl AssetSet {
    /// Reads `DIR/manifest.json` and checks its format; hashes nothing.
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
            manifest_sha256: {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(text.as_bytes()))
            },
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
            DriverKind::Sandbox => &[GUEST_BINARY],
        };
        for name in needed {
            self.check(name)?;
        }
        if driver == DriverKind::Sandbox {
            self.check_tree(SANDBOX_ROOT)?;
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
            rootfs_tree: (driver == DriverKind::Sandbox).then(|| self.dir.join(SANDBOX_ROOT)),
            guest: (driver == DriverKind::Sandbox).then(|| self.dir.join(GUEST_BINARY)),
            kernel_release: self.manifest.kernel_release.clone(),
            manifest_sha256: self.manifest_sha256.clone(),
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

impl AssetSet {
    /// Compares a tree with the manifest's digest of it.
    pub fn check_tree(&self, name: &str) -> Result<()> {
        let path = self.dir.join(name);
        let expected = self.manifest.trees.get(name).ok_or_else(|| Error::Attestation {
            path: path.clone(),
            reason: "not listed in the manifest (assets built by an older Nimbus: rebuild them with `nimbus assets build`)".into(),
        })?;
        let actual = tree_digest(&path)?;
        if !actual.sha256.eq_ignore_ascii_case(&expected.sha256) {
            return Err(Error::Attestation {
                path,
                reason: format!(
                    "tree digest {} does not match the manifest's {} (a file, mode or owner \
                     changed after `nimbus assets build`; rebuild the assets)",
                    actual.sha256, expected.sha256
                ),
            });
        }
        Ok(())
    }
}

/// The digest of a directory tree: sha256 over one line per entry, in path order —
/// its type, path, mode, owner and group, and a regular file's size and content
/// sha256 or a symbolic link's target. Device nodes, fifos and sockets are not part
/// of a tree (the sandbox mounts its own `/dev`) and make it fail. `size` is the
/// total of the files' sizes. File contents are hashed through the stamp cache, so
/// checking an unchanged tree again costs one `lstat` per entry.
pub fn tree_digest(root: &Path) -> Result<FileDigest> {
    fn walk(root: &Path, relative: &Path, hasher: &mut Sha256, total: &mut u64) -> Result<()> {
        let dir = root.join(relative);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(Error::io(format!("listing {}", dir.display())))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .map_err(Error::io(format!("listing {}", dir.display())))?;
        names.sort();
        for name in names {
            let path = relative.join(&name);
            let full = root.join(&path);
            let meta = std::fs::symlink_metadata(&full)
                .map_err(Error::io(format!("reading {}", full.display())))?;
            let kind = meta.file_type();
            let shown = path.to_string_lossy();
            let (mode, uid, gid) = (meta.mode() & 0o7777, meta.uid(), meta.gid());
            let line = if kind.is_dir() {
                format!("d {shown} {mode:o} {uid} {gid}\n")
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&full)
                    .map_err(Error::io(format!("reading {}", full.display())))?;
                format!("l {shown} {uid} {gid} {}\n", target.to_string_lossy())
            } else if kind.is_file() {
                *total += meta.len();
                let sha = sha256_file_cached(&full)?;
                format!("f {shown} {mode:o} {uid} {gid} {} {sha}\n", meta.len())
            } else {
                return Err(Error::Attestation {
                    path: full,
                    reason: "a device node, fifo or socket has no place in a rootfs tree".into(),
                });
            };
            hasher.update(line.as_bytes());
            if kind.is_dir() {
                walk(root, &path, hasher, total)?;
            }
        }
        Ok(())
    }
    let meta = std::fs::symlink_metadata(root).map_err(|e| Error::Attestation {
        path: root.to_path_buf(),
        reason: format!("missing: {e}"),
    })?;
    let mut hasher = Sha256::new();
    hasher.update(
        format!(
            "d . {:o} {} {}\n",
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid()
        )
        .as_bytes(),
    );
    let mut total = 0;
    walk(root, Path::new(""), &mut hasher, &mut total)?;
    Ok(FileDigest {
        sha256: hex::encode(hasher.finalize()),
        size: total,
    })
}

/// Copies the tree `from` to `to` (which must not exist) with every owner and group
/// shifted by `base`: `root:root` becomes `base:base`. Modes, set-id bits included,
/// are kept (set after the owner, which clears them); device nodes, fifos and
/// sockets are left out. Hard links become separate files.
pub fn copy_tree_shifted(from: &Path, to: &Path, base: u32) -> Result<()> {
    use std::os::unix::fs::{lchown, symlink, PermissionsExt};
    let shift = |id: u32| -> Result<u32> {
        if id >= SANDBOX_ID_COUNT {
            return Err(Error::Assets(format!(
                "{}: owner id {id} is beyond the {SANDBOX_ID_COUNT} ids a sandbox maps",
                from.display()
            )));
        }
        Ok(base + id)
    };
    let meta = std::fs::symlink_metadata(from)
        .map_err(Error::io(format!("reading {}", from.display())))?;
    let kind = meta.file_type();
    if kind.is_dir() {
        std::fs::create_dir(to).map_err(Error::io(format!("creating {}", to.display())))?;
        let mut names: Vec<_> = std::fs::read_dir(from)
            .map_err(Error::io(format!("listing {}", from.display())))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .map_err(Error::io(format!("listing {}", from.display())))?;
        names.sort();
        for name in names {
            copy_tree_shifted(&from.join(&name), &to.join(&name), base)?;
        }
    } else if kind.is_symlink() {
        let target =
            std::fs::read_link(from).map_err(Error::io(format!("reading {}", from.display())))?;
        symlink(&target, to).map_err(Error::io(format!("creating {}", to.display())))?;
        lchown(to, Some(shift(meta.uid())?), Some(shift(meta.gid())?))
            .map_err(Error::io(format!("chown {}", to.display())))?;
        return Ok(());
    } else if kind.is_file() {
        std::fs::copy(from, to).map_err(Error::io(format!("copying {}", from.display())))?;
    } else {
        return Ok(());
    }
    lchown(to, Some(shift(meta.uid())?), Some(shift(meta.gid())?))
        .map_err(Error::io(format!("chown {}", to.display())))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(Error::io(format!("chmod {}", to.display())))
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
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o644))
            .map_err(Error::io("chmod 644 the manifest"))?;
    }
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
        std::fs::write(dir.join(GUEST_BINARY), b"guest").expect("guest");
        files.insert(
            GUEST_BINARY.to_string(),
            file_digest(&dir.join(GUEST_BINARY)).expect("digest"),
        );
        std::fs::create_dir_all(dir.join(SANDBOX_ROOT).join("etc")).expect("tree");
        std::fs::write(dir.join(SANDBOX_ROOT).join("etc/hostname"), b"x").expect("file");
        std::os::unix::fs::symlink("hostname", dir.join(SANDBOX_ROOT).join("etc/name"))
            .expect("link");
        let mut trees = BTreeMap::new();
        trees.insert(
            SANDBOX_ROOT.to_string(),
            tree_digest(&dir.join(SANDBOX_ROOT)).expect("tree digest"),
        );
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            created_at: "2026-11-27T00:00:00Z".into(),
            kernel_release: "6.1.0-test".into(),
            debian_suite: "bookworm".into(),
            files,
            trees,
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

    /// What snapshots are tied to: a rebuilt rootfs is a new manifest digest.
    #[test]
    fn a_changed_asset_changes_the_manifest_digest() {
        let dir = fake_assets();
        let before = AssetSet::open(&dir).expect("opens");
        let verified = before.verify(DriverKind::Qemu, None).expect("verifies");
        assert_eq!(verified.manifest_sha256, before.manifest_sha256);
        assert_eq!(verified.manifest_sha256.len(), 64);
        // Rebuild with another rootfs: what `nimbus assets build` writes.
        std::fs::write(dir.join(ROOTFS_IMAGE), [9u8; 4096]).expect("rootfs");
        let mut manifest = before.manifest.clone();
        manifest.files.insert(
            ROOTFS_IMAGE.to_string(),
            file_digest(&dir.join(ROOTFS_IMAGE)).expect("digest"),
        );
        write_manifest(&dir, &manifest).expect("manifest");
        let after = AssetSet::open(&dir).expect("opens");
        assert_ne!(after.manifest_sha256, before.manifest_sha256);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_sandbox_tree_is_attested_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = fake_assets();
        let set = AssetSet::open(&dir).expect("opens");
        let verified = set.verify(DriverKind::Sandbox, None).expect("verifies");
        assert_eq!(verified.rootfs_tree, Some(dir.join(SANDBOX_ROOT)));
        assert_eq!(verified.guest, Some(dir.join(GUEST_BINARY)));
        let file = dir.join(SANDBOX_ROOT).join("etc/hostname");
        // A mode change is a change.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        assert!(set.verify(DriverKind::Sandbox, None).is_err(), "mode");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(set.verify(DriverKind::Sandbox, None).is_ok());
        // So is a new file, and a changed link target.
        std::fs::write(dir.join(SANDBOX_ROOT).join("etc/planted"), b"x").expect("plant");
        assert!(set.verify(DriverKind::Sandbox, None).is_err(), "new file");
        std::fs::remove_file(dir.join(SANDBOX_ROOT).join("etc/planted")).expect("rm");
        std::fs::remove_file(dir.join(SANDBOX_ROOT).join("etc/name")).expect("rm");
        std::os::unix::fs::symlink("/etc/shadow", dir.join(SANDBOX_ROOT).join("etc/name"))
            .expect("link");
        assert!(
            set.verify(DriverKind::Sandbox, None).is_err(),
            "link target"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn shifted_copies_keep_everything_but_the_owners() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: giving files to another owner needs root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("nimbus-shift-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("src/bin")).expect("dir");
        std::fs::write(dir.join("src/bin/tool"), b"#!/bin/sh\n").expect("file");
        std::os::unix::fs::symlink("bin/tool", dir.join("src/link")).expect("link");
        copy_tree_shifted(&dir.join("src"), &dir.join("dst"), 5000).expect("copy");
        let meta = std::fs::symlink_metadata(dir.join("dst/bin/tool")).expect("meta");
        let source = std::fs::symlink_metadata(dir.join("src/bin/tool")).expect("meta");
        assert_eq!(meta.mode(), source.mode());
        assert_eq!(
            (meta.uid(), meta.gid()),
            (5000 + source.uid(), 5000 + source.gid())
        );
        assert_eq!(
            std::fs::read_link(dir.join("dst/link")).expect("link"),
            PathBuf::from("bin/tool")
        );
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
