//! `nimbus assets build DIR`: kernel, initramfs and rootfs from Debian packages only.
//!
//! - kernel: the package `linux-image-cloud-amd64` depends on, fetched with
//!   `apt-get download` and unpacked with `dpkg-deb`; its bzImage boots QEMU, and an
//!   ELF `vmlinux` is extracted for Firecracker;
//! - initramfs: static busybox + virtio modules ([`super::initramfs`]);
//! - rootfs: `debootstrap --variant=minbase` with git, curl and ca-certificates, the
//!   static `nimbus-guest` and `/sbin/nimbus-init`, as a directory (the sandbox's
//!   root) and as an ext4 image (the VMs' root);
//! - `manifest.json` with the sha256 of every file a driver boots from.
//!
//! Slow parts are cached under `DIR/cache` (kernel package, unpacked kernel) and the
//! rootfs tree is kept: rebuilding after a new `nimbus-guest` only copies the binary
//! and remakes the image (seconds). `--rebuild-rootfs` starts the tree afresh.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{
    file_digest, initramfs, tree_digest, vmlinux, write_manifest, Manifest,
    ACTIONS_RUNNER_IN_ROOTFS, ACTIONS_RUNNER_TARBALL, GUEST_BINARY, GUEST_IN_ROOTFS, GUEST_IN_TREE,
    INITRD, KERNEL, MANIFEST_FORMAT, ROOTFS_IMAGE, ROOTFS_TREE, SANDBOX_DIR, SANDBOX_ROOT, VMLINUX,
};
use crate::{Error, Result};

/// Marks a complete debootstrap in the rootfs tree (a half-built one is redone).
const BASE_STAMP: &str = ".nimbus-base";

/// The rootfs's init: PID 1 in the guest, with nimbus-guest as its child.
pub const NIMBUS_INIT: &str = r#"#!/bin/sh
# nimbus-init: PID 1 of a Nimbus guest. nimbus-guest --vm mounts what the system
# needs, talks to the host and runs the job; then the machine powers off.
/usr/local/bin/nimbus-guest --vm
echo "nimbus-init: nimbus-guest exited with $?"
sync
echo o > /proc/sysrq-trigger
sleep 10
"#;

/// Packages added to the minimal Debian base.
pub const DEFAULT_PACKAGES: &[&str] = &[
    "git",
    "curl",
    "ca-certificates",
    "iproute2",
    // `shell: python` steps (GitHub's images have Python; nimbus run runs them).
    "python3-minimal",
];

/// What `nimbus assets build` builds and from where; [`BuildOptions::new`] has the defaults.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The asset directory to write (its `cache/` keeps the slow parts between builds).
    pub out: PathBuf,
    /// The `nimbus-guest` binary to install (static, so it runs on any rootfs).
    pub guest: PathBuf,
    /// Debian release of the rootfs; default: the host's, else `bookworm`.
    pub suite: String,
    /// Debian mirror for debootstrap; default: the host's apt mirror, else deb.debian.org.
    pub mirror: String,
    /// Meta-package whose `linux-image-*` dependency is the kernel (`linux-image-cloud-amd64`).
    pub kernel_package: String,
    /// Packages added to the minimal base; default [`DEFAULT_PACKAGES`].
    pub packages: Vec<String>,
    /// Static busybox for the initramfs; default `/bin/busybox`.
    pub busybox: PathBuf,
    /// Redo the debootstrap instead of reusing the rootfs tree of an earlier build.
    pub rebuild_rootfs: bool,
    /// Also extract the ELF vmlinux Firecracker needs (a second or two).
    pub vmlinux: bool,
    /// A GitHub Actions runner release (`actions-runner-linux-x64-*.tar.gz`) to
    /// unpack at /opt/actions-runner; its sha256 goes into the manifest.
    pub actions_runner: Option<PathBuf>,
}

impl BuildOptions {
    /// Options for building into `out` with the `guest` binary; everything else defaulted.
    pub fn new(out: impl Into<PathBuf>, guest: impl Into<PathBuf>) -> Self {
        BuildOptions {
            out: out.into(),
            guest: guest.into(),
            suite: host_suite().unwrap_or_else(|| "bookworm".to_string()),
            mirror: host_mirror().unwrap_or_else(|| "http://deb.debian.org/debian".to_string()),
            kernel_package: "linux-image-cloud-amd64".to_string(),
            packages: DEFAULT_PACKAGES.iter().map(|p| p.to_string()).collect(),
            busybox: PathBuf::from("/bin/busybox"),
            rebuild_rootfs: false,
            vmlinux: true,
            actions_runner: None,
        }
    }
}

/// Builds the guest assets, reporting progress as it goes.
pub struct AssetBuilder {
    options: BuildOptions,
    progress: Box<dyn Fn(&str) + Send + Sync>,
}

impl AssetBuilder {
    /// A builder that reports each stage to `progress` (one human-readable line per call).
    pub fn new(options: BuildOptions, progress: impl Fn(&str) + Send + Sync + 'static) -> Self {
        AssetBuilder {
            options,
            progress: Box::new(progress),
        }
    }

    fn say(&self, message: &str) {
        (self.progress)(message);
    }

    /// Builds (or refreshes) every asset and writes the manifest.
    pub fn build(&self) -> Result<Manifest> {
        let o = &self.options;
        self.check_prerequisites()?;
        let out = &o.out;
        let cache = out.join("cache");
        std::fs::create_dir_all(&cache)
            .map_err(Error::io(format!("creating {}", cache.display())))?;

        let (release, kernel_tree) = self.kernel(&cache)?;
        let modules = kernel_tree.join("lib/modules").join(&release);
        std::fs::copy(
            kernel_tree.join(format!("boot/vmlinuz-{release}")),
            out.join(KERNEL),
        )
        .map_err(Error::io("copying the kernel"))?;
        if o.vmlinux {
            self.say("extracting the ELF vmlinux for Firecracker");
            vmlinux::extract(&out.join(KERNEL), &out.join(VMLINUX))?;
        }

        self.say("building the initramfs (busybox + virtio modules)");
        tool("depmod", &["-b", path_str(&kernel_tree)?, &release])?;
        let loaded = initramfs::build(&modules, &o.busybox, &out.join(INITRD))?;
        self.say(&format!(
            "  {} modules: {}",
            loaded.len(),
            module_names(&loaded)
        ));

        let tree = out.join(ROOTFS_TREE);
        self.rootfs_tree(&tree)?;
        self.install_guest(&tree)?;
        let runner = self.install_actions_runner(&tree, out)?;
        self.rootfs_image(&tree, &out.join(ROOTFS_IMAGE))?;
        self.sandbox_tree(&tree, out)?;

        self.say("hashing the assets into manifest.json");
        let mut files = BTreeMap::new();
        let mut names = vec![KERNEL, INITRD, ROOTFS_IMAGE, GUEST_IN_TREE, GUEST_BINARY];
        if o.vmlinux {
            names.push(VMLINUX);
        }
        if runner {
            names.push(ACTIONS_RUNNER_TARBALL);
        }
        for name in names {
            let path = out.join(name);
            if !name.contains('/') && name != GUEST_BINARY {
                // Public artifacts, read by VMMs that may run as another user
                // (Firecracker's jailer): readable by all, writable by root only,
                // whatever the builder's umask.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                    .map_err(Error::io(format!("chmod 644 {}", path.display())))?;
            }
            files.insert(name.to_string(), file_digest(&path)?);
        }
        let mut trees = BTreeMap::new();
        trees.insert(
            SANDBOX_ROOT.to_string(),
            tree_digest(&out.join(SANDBOX_ROOT))?,
        );
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            created_at: now_rfc3339(),
            kernel_release: release,
            debian_suite: o.suite.clone(),
            files,
            trees,
        };
        write_manifest(out, &manifest)?;
        Ok(manifest)
    }

    fn check_prerequisites(&self) -> Result<()> {
        let o = &self.options;
        let mut missing = Vec::new();
        for (program, package) in [
            ("apt-get", "apt"),
            ("dpkg-deb", "dpkg"),
            ("depmod", "kmod"),
            ("debootstrap", "debootstrap"),
            ("mkfs.ext4", "e2fsprogs"),
            ("xz", "xz-utils"),
        ] {
            if crate::host::find_binary(program, None).is_err()
                && crate::host::find_binary(program, Some(&Path::new("/usr/sbin").join(program)))
                    .is_err()
                && crate::host::find_binary(program, Some(&Path::new("/sbin").join(program)))
                    .is_err()
            {
                missing.push(package);
            }
        }
        if !super::is_static_elf(&o.busybox).unwrap_or(false) {
            missing.push("busybox-static");
        }
        if !missing.is_empty() {
            return Err(Error::Assets(format!(
                "missing tools; install them with: apt-get install -y {}",
                missing.join(" ")
            )));
        }
        if !o.guest.is_file() {
            return Err(Error::Assets(format!(
                "no nimbus-guest binary at {} (build it: scripts/build-guest.sh)",
                o.guest.display()
            )));
        }
        if !super::is_static_elf(&o.guest).unwrap_or(false) {
            return Err(Error::Assets(format!(
                "{} is not a static executable; build it with scripts/build-guest.sh \
                 (RUSTFLAGS=\"-C target-feature=+crt-static\")",
                o.guest.display()
            )));
        }
        Ok(())
    }

    /// Downloads and unpacks the kernel package; returns (release, unpacked tree).
    fn kernel(&self, cache: &Path) -> Result<(String, PathBuf)> {
        let o = &self.options;
        let depends = tool("apt-cache", &["depends", &o.kernel_package])?;
        let package = depends
            .lines()
            .find_map(|line| {
                let dep = line.trim().strip_prefix("Depends:")?.trim();
                dep.starts_with("linux-image-").then(|| dep.to_string())
            })
            .ok_or_else(|| {
                Error::Assets(format!(
                    "`apt-cache depends {}` names no linux-image package (run apt-get update?)",
                    o.kernel_package
                ))
            })?;
        let release = package.trim_start_matches("linux-image-").to_string();
        let tree = cache.join(format!("kernel-{release}"));
        if tree.join(format!("boot/vmlinuz-{release}")).is_file() {
            self.say(&format!("kernel {release}: cached"));
            return Ok((release, tree));
        }
        self.say(&format!("kernel {release}: apt-get download {package}"));
        let status = Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(cache)
            .output()
            .map_err(Error::io("running apt-get download"))?;
        if !status.status.success() {
            return Err(Error::Command {
                command: format!("apt-get download {package}"),
                message: String::from_utf8_lossy(&status.stderr).trim().to_string(),
            });
        }
        let deb = std::fs::read_dir(cache)
            .map_err(Error::io("listing the asset cache"))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
            .ok_or_else(|| Error::Assets(format!("apt-get download left no {package}_*.deb")))?;
        let partial = cache.join(format!("kernel-{release}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        tool("dpkg-deb", &["-x", path_str(&deb)?, path_str(&partial)?])?;
        std::fs::rename(&partial, &tree).map_err(Error::io("moving the unpacked kernel"))?;
        Ok((release, tree))
    }

    fn rootfs_tree(&self, tree: &Path) -> Result<()> {
        let o = &self.options;
        // The stamp names the suite and packages the base was made with: a base
        // made from another list (an older build's defaults) is made afresh.
        let wanted = format!("{} {}\n", o.suite, o.packages.join(","));
        let current = std::fs::read_to_string(tree.join(BASE_STAMP)).ok();
        if o.rebuild_rootfs || current.as_deref() != Some(wanted.as_str()) {
            let _ = std::fs::remove_dir_all(tree);
            let include = format!("--include={}", o.packages.join(","));
            self.say(&format!(
                "rootfs: debootstrap --variant=minbase {include} {} (about a minute)",
                o.suite
            ));
            tool(
                "debootstrap",
                &[
                    "--variant=minbase",
                    &include,
                    &o.suite,
                    path_str(tree)?,
                    &o.mirror,
                ],
            )?;
            // Documentation, manuals and translations are dead weight in a CI guest.
            for dir in [
                "usr/share/doc",
                "usr/share/man",
                "usr/share/info",
                "usr/share/locale",
                "var/cache/apt/archives",
            ] {
                let path = tree.join(dir);
                if path.is_dir() {
                    let _ = std::fs::remove_dir_all(&path);
                    let _ = std::fs::create_dir_all(&path);
                }
            }
            std::fs::write(tree.join(BASE_STAMP), &wanted)
                .map_err(Error::io("writing the rootfs stamp"))?;
        } else {
            self.say("rootfs: reusing the Debian base (--rebuild-rootfs to start afresh)");
        }
        Ok(())
    }

    /// The sandbox's root: the tree copied with its owners shifted into the sandbox's
    /// id range, in a directory only root can enter; and the guest agent the host
    /// starts sandboxes with, root-owned, outside every tree.
    fn sandbox_tree(&self, tree: &Path, out: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        self.say("sandbox: copying the rootfs with owners shifted into the sandbox's id range");
        let dir = out.join(SANDBOX_DIR);
        std::fs::create_dir_all(&dir).map_err(Error::io("creating the sandbox directory"))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(Error::io("chmod 700 the sandbox directory"))?;
        let root = out.join(SANDBOX_ROOT);
        let partial = dir.join("rootfs.partial");
        for old in [&root, &partial] {
            if old.exists() {
                std::fs::remove_dir_all(old)
                    .map_err(Error::io(format!("removing {}", old.display())))?;
            }
        }
        super::copy_tree_shifted(tree, &partial, super::SANDBOX_ID_BASE)?;
        std::fs::rename(&partial, &root).map_err(Error::io("moving the sandbox tree in place"))?;
        let guest = out.join(GUEST_BINARY);
        let _ = std::fs::remove_file(&guest);
        std::fs::copy(&self.options.guest, &guest)
            .map_err(Error::io("copying nimbus-guest beside the assets"))?;
        std::fs::set_permissions(&guest, std::fs::Permissions::from_mode(0o755))
            .map_err(Error::io("chmod 755 nimbus-guest"))
    }

    fn install_guest(&self, tree: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        self.say("rootfs: installing nimbus-guest and /sbin/nimbus-init");
        let guest = tree.join(GUEST_IN_ROOTFS);
        if let Some(parent) = guest.parent() {
            std::fs::create_dir_all(parent).map_err(Error::io("creating /usr/local/bin"))?;
        }
        // Replace, never write through: the old binary may be hard-linked elsewhere.
        let _ = std::fs::remove_file(&guest);
        std::fs::copy(&self.options.guest, &guest).map_err(Error::io("installing nimbus-guest"))?;
        let init = tree.join("sbin/nimbus-init");
        let _ = std::fs::remove_file(&init);
        std::fs::write(&init, NIMBUS_INIT).map_err(Error::io("writing /sbin/nimbus-init"))?;
        for path in [&guest, &init] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                .map_err(Error::io("chmod 755"))?;
        }
        for dir in ["scratch", "mnt", "proc", "sys", "dev", "tmp", "run"] {
            std::fs::create_dir_all(tree.join(dir))
                .map_err(Error::io(format!("creating /{dir}")))?;
        }
        Ok(())
    }

    /// Unpacks the operator's runner release into the tree (or removes one left by
    /// an earlier build) and keeps a copy of the tarball for the manifest.
    fn install_actions_runner(&self, tree: &Path, out: &Path) -> Result<bool> {
        let dir = tree.join(ACTIONS_RUNNER_IN_ROOTFS);
        let kept = out.join(ACTIONS_RUNNER_TARBALL);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(Error::io("removing the old actions runner"))?;
        }
        let Some(tarball) = &self.options.actions_runner else {
            let _ = std::fs::remove_file(&kept);
            return Ok(false);
        };
        if !tarball.is_file() {
            return Err(Error::Assets(format!(
                "no Actions runner release at {} (download actions-runner-linux-x64-VERSION.tar.gz \
                 from https://github.com/actions/runner/releases)",
                tarball.display()
            )));
        }
        self.say(&format!(
            "rootfs: unpacking the Actions runner {}",
            tarball.display()
        ));
        std::fs::create_dir_all(&dir).map_err(Error::io("creating /opt/actions-runner"))?;
        tool("tar", &["-xzf", path_str(tarball)?, "-C", path_str(&dir)?])?;
        if !dir.join("run.sh").is_file() {
            return Err(Error::Assets(format!(
                "{} has no run.sh at its top level: is it an actions/runner release?",
                tarball.display()
            )));
        }
        let _ = std::fs::remove_file(&kept);
        std::fs::copy(tarball, &kept).map_err(Error::io("keeping the runner tarball"))?;
        Ok(true)
    }

    fn rootfs_image(&self, tree: &Path, image: &Path) -> Result<()> {
        let used = tool("du", &["-sb", path_str(tree)?])?;
        let used: u64 = used
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::Assets("cannot read the rootfs size from du".into()))?;
        // Headroom for ext4's metadata; jobs write to their scratch disk, not here.
        let size_mib = (used * 5 / 4) / (1 << 20) + 96;
        self.say(&format!("rootfs: ext4 image of {size_mib} MiB"));
        let temp = image.with_extension("ext4.tmp");
        let _ = std::fs::remove_file(&temp);
        let file = std::fs::File::create(&temp).map_err(Error::io("creating the rootfs image"))?;
        file.set_len(size_mib << 20)
            .map_err(Error::io("sizing the rootfs image"))?;
        drop(file);
        tool(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-L",
                "nimbus-root",
                "-d",
                path_str(tree)?,
                path_str(&temp)?,
            ],
        )?;
        std::fs::rename(&temp, image).map_err(Error::io("moving the rootfs image"))
    }
}

fn module_names(paths: &[String]) -> String {
    paths
        .iter()
        .map(|p| p.rsplit('/').next().unwrap_or(p).trim_end_matches(".ko"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| Error::Assets(format!("path {} is not UTF-8", path.display())))
}

/// Runs a build tool, returning stdout or its stderr as the error.
fn tool(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output()
        .map_err(|e| Error::Command {
            command: format!("{program} {}", args.join(" ")),
            message: e.to_string(),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let tail: Vec<&str> = stderr
            .lines()
            .chain(stdout.lines())
            .rev()
            .take(15)
            .collect();
        return Err(Error::Command {
            command: format!("{program} {}", args.join(" ")),
            message: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The running Debian's codename (the rootfs matches the host by default).
fn host_suite() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// The first Debian mirror apt is configured with (deb822 or one-line format).
fn host_mirror() -> Option<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines() {
            let line = line.trim();
            let url = if let Some(uris) = line.strip_prefix("URIs:") {
                uris.split_whitespace().next()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                rest.split_whitespace().find(|w| w.starts_with("http"))
            } else {
                None
            };
            if let Some(url) = url {
                if url.starts_with("http") && !url.contains("security") {
                    return Some(url.trim_end_matches('/').to_string());
                }
            }
        }
    }
    None
}
