//! Helpers every crate's tests share (feature `testsuite`). The shared suites of
//! the traits live beside them: [`crate::store::testsuite`],
//! [`crate::control_plane::testsuite`].

/// Whether the tests run under CI (`CI=true`), where a missing service fails the
/// run instead of skipping the test.
pub fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// `value`, or — when it is `None` — a failed test under CI and a skipped one
/// elsewhere (`what` is not available here: say what is missing and how to get it).
pub fn require<T>(value: Option<T>, what: &str) -> Option<T> {
    if value.is_none() {
        if ci() {
            panic!("{what} is not available and CI=true: the test cannot be skipped in CI (scripts/test.sh starts the services)");
        }
        eprintln!("skipping: {what} is not available");
    }
    value
}

/// The non-empty value of the test setting `name` (e.g. `NIMBUS_TEST_DATABASE_URL`),
/// through [`require`].
pub fn setting(name: &str) -> Option<String> {
    let value = std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    require(value, name)
}

/// A small filesystem of its own (a tmpfs of a given size) on a fresh directory,
/// for tests of what a service does when its disk fills up; unmounted when
/// dropped. Mounting needs root: [`SmallDisk::mount`] goes through [`require`].
#[derive(Debug)]
pub struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (`24m`, `1g`: mount(8)'s syntax) on a new
    /// directory under the system's temporary directory.
    pub fn mount(size: &str) -> Option<SmallDisk> {
        let path = std::env::temp_dir().join(format!(
            "nimbus-small-disk-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let mounted = std::fs::create_dir_all(&path).is_ok()
            && std::process::Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size}"),
                    "nimbus-small-disk",
                ])
                .arg(&path)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
        if !mounted {
            let _ = std::fs::remove_dir(&path);
        }
        require(
            mounted.then_some(SmallDisk { path }),
            "mounting a tmpfs (root; the full-disk tests need it)",
        )
    }

    /// Where it is mounted.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Fills what is left of it with one file, `filler`, and returns its path:
    /// remove it to make room again.
    pub fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        if let Ok(mut file) = std::fs::File::create(&filler) {
            let block = vec![0u8; 64 * 1024];
            while file.write_all(&block).is_ok() {}
            let mut byte = [0u8; 1];
            while file.write_all(&byte).is_ok() {
                byte[0] = byte[0].wrapping_add(1);
            }
        }
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
        let _ = std::fs::remove_dir(&self.path);
    }
}
