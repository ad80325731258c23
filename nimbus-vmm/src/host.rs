//! What this host offers: hardware KVM, hypervisor binaries, user namespaces.

use std::path::{Path, PathBuf};

/// Whether `/dev/kvm` is real hardware virtualisation.
///
/// PVM (a software substitute for nested virtualisation, `/sys/module/kvm_pvm`)
/// exposes `/dev/kvm` too, but ordinary guests crash under it, so it does not count.
pub fn hardware_kvm() -> Result<(), String> {
    hardware_kvm_at(Path::new("/"))
}

fn hardware_kvm_at(root: &Path) -> Result<(), String> {
    let kvm = root.join("dev/kvm");
    if !kvm.exists() {
        return Err("/dev/kvm does not exist (no KVM on this host)".into());
    }
    let module = |name: &str| root.join("sys/module").join(name).exists();
    if module("kvm_pvm") && !module("kvm_intel") && !module("kvm_amd") {
        return Err(
            "/dev/kvm is PVM (kvm_pvm), not hardware KVM: ordinary guests crash under it".into(),
        );
    }
    if root == Path::new("/") {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&kvm)
            .map_err(|e| format!("/dev/kvm cannot be opened read-write: {e}"))?;
    }
    Ok(())
}

/// `explicit` if given (it must exist), else `name` on PATH.
pub fn find_binary(name: &str, explicit: Option<&Path>) -> Result<PathBuf, String> {
    find_binary_on(
        name,
        explicit,
        &std::env::var_os("PATH").unwrap_or_default(),
    )
}

/// [`find_binary`] with `search_path` (a `PATH`-style list) instead of the process's.
pub fn find_binary_on(
    name: &str,
    explicit: Option<&Path>,
    search_path: &std::ffi::OsStr,
) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return if is_executable(path) {
            Ok(path.to_path_buf())
        } else {
            Err(format!("{} is not an executable file", path.display()))
        };
    }
    std::env::split_paths(search_path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| format!("{name} is not on PATH"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_is_not_hardware_kvm() {
        let root = std::env::temp_dir().join(format!("nimbus-kvm-{}", std::process::id()));
        std::fs::create_dir_all(root.join("dev")).expect("dev");
        std::fs::create_dir_all(root.join("sys/module/kvm_pvm")).expect("pvm");
        assert!(hardware_kvm_at(&root)
            .expect_err("an error")
            .contains("/dev/kvm does not exist"));
        std::fs::write(root.join("dev/kvm"), b"").expect("kvm");
        assert!(hardware_kvm_at(&root)
            .expect_err("an error")
            .contains("PVM"));
        std::fs::create_dir_all(root.join("sys/module/kvm_intel")).expect("intel");
        assert!(hardware_kvm_at(&root).is_ok());
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn binaries_are_found_on_path_or_refused_by_name() {
        assert!(find_binary("sh", None).is_ok());
        assert!(find_binary("surely-not-a-binary-nimbus", None)
            .expect_err("an error")
            .contains("not on PATH"));
        assert!(find_binary("x", Some(Path::new("/nonexistent/fc"))).is_err());
    }
}
