//! Running Firecracker through its jailer: a chroot per VM under
//! `NIMBUS_JAILER_CHROOT_BASE`, an unprivileged uid/gid, new namespaces, and the
//! seccomp filter (Firecracker's built-in one, or `NIMBUS_SECCOMP_FILTER`).
//!
//! The jailer chroots to `<base>/firecracker/<id>/root`; every file Firecracker
//! opens must be inside it, so the kernel and disks are hard-linked (or copied
//! across filesystems) into the chroot and handed to the API by their in-chroot
//! paths.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// How Firecracker is jailed (the `NIMBUS_JAILER_*` variables).
#[derive(Debug, Clone)]
pub struct JailerConfig {
    /// The `jailer` binary (`NIMBUS_JAILER_BIN`).
    pub binary: PathBuf,
    /// uid Firecracker runs as in the jail (`NIMBUS_JAILER_UID`, default 65534).
    pub uid: u32,
    /// gid Firecracker runs as in the jail (`NIMBUS_JAILER_GID`, default 65534).
    pub gid: u32,
    /// Base of the per-VM chroots (`NIMBUS_JAILER_CHROOT_BASE`, default `/srv/jailer`).
    pub chroot_base: PathBuf,
    /// A compiled BPF filter; None keeps Firecracker's built-in default filter.
    pub seccomp_filter: Option<PathBuf>,
}

/// Where one VM lives inside its jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailLayout {
    /// `<base>/firecracker/<id>/root` on the host.
    pub root: PathBuf,
    /// The API socket as the host sees it.
    pub api_socket: PathBuf,
}

impl JailerConfig {
    /// Where the jail of VM `vm_id` is, by the jailer's naming rules.
    pub fn layout(&self, vm_id: &str) -> JailLayout {
        let root = self
            .chroot_base
            .join("firecracker")
            .join(vm_id)
            .join("root");
        JailLayout {
            api_socket: root.join("run/firecracker.socket"),
            root,
        }
    }

    /// The jailer's argv (program first) for `firecracker` and `vm_id`.
    pub fn argv(&self, firecracker: &Path, vm_id: &str) -> Vec<String> {
        let mut argv = vec![
            self.binary.display().to_string(),
            "--id".into(),
            vm_id.into(),
            "--exec-file".into(),
            firecracker.display().to_string(),
            "--uid".into(),
            self.uid.to_string(),
            "--gid".into(),
            self.gid.to_string(),
            "--chroot-base-dir".into(),
            self.chroot_base.display().to_string(),
            "--new-pid-ns".into(),
            "--".into(),
            "--api-sock".into(),
            "/run/firecracker.socket".into(),
        ];
        if let Some(filter) = &self.seccomp_filter {
            // The filter is linked into the chroot next to the other files.
            let _ = filter;
            argv.push("--seccomp-filter".into());
            argv.push("/seccomp.bpf".into());
        }
        argv
    }

    /// Places `file` inside the jail as `name` and returns its in-chroot path.
    /// A `private` file (the VM's own disks) is handed to the jail's uid, which must
    /// write it; a shared one (the attested kernel and initramfs, the seccomp
    /// filter) is linked in as it is — root-owned and read-only to the jail — since
    /// a hard link shares its inode, and handing that to the jail's uid would let
    /// every later VM boot what one escaped VM wrote.
    pub fn stage(
        &self,
        layout: &JailLayout,
        file: &Path,
        name: &str,
        private: bool,
    ) -> Result<String> {
        std::fs::create_dir_all(&layout.root)
            .map_err(Error::io(format!("creating {}", layout.root.display())))?;
        let target = layout.root.join(name);
        let _ = std::fs::remove_file(&target);
        if std::fs::hard_link(file, &target).is_err() {
            std::fs::copy(file, &target).map_err(Error::io(format!(
                "copying {} into the jail",
                file.display()
            )))?;
        }
        if private {
            std::os::unix::fs::chown(&target, Some(self.uid), Some(self.gid))
                .map_err(Error::io(format!("chown {}", target.display())))?;
        }
        Ok(format!("/{name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_and_layout_follow_the_jailer_contract() {
        let config = JailerConfig {
            binary: "/usr/bin/jailer".into(),
            uid: 123,
            gid: 456,
            chroot_base: "/srv/jailer".into(),
            seccomp_filter: Some("/etc/nimbus/seccomp.bpf".into()),
        };
        let layout = config.layout("job-7");
        assert_eq!(
            layout.root,
            PathBuf::from("/srv/jailer/firecracker/job-7/root")
        );
        assert_eq!(
            layout.api_socket,
            PathBuf::from("/srv/jailer/firecracker/job-7/root/run/firecracker.socket")
        );
        assert_eq!(
            config
                .argv(Path::new("/usr/bin/firecracker"), "job-7")
                .join(" "),
            "/usr/bin/jailer --id job-7 --exec-file /usr/bin/firecracker --uid 123 --gid 456 \
             --chroot-base-dir /srv/jailer --new-pid-ns -- --api-sock /run/firecracker.socket \
             --seccomp-filter /seccomp.bpf"
        );
    }
}
