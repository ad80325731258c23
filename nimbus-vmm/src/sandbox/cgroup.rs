//! Resource limits for a sandbox, where the host lets us set them: memory, CPU
//! quota and a process count, in a cgroup per sandbox under `nimbus/<id>` — cgroup
//! v2 when the unified hierarchy has the controllers, else the v1 controllers.
//! Without write access (not root, no delegation) the sandbox runs unlimited and
//! says so; a VM driver's limits come from the hypervisor instead.

use std::path::{Path, PathBuf};

/// Most processes one sandbox may hold (a fork bomb stops here).
const PIDS_MAX: u32 = 4096;
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug)]
pub struct Cgroup {
    /// One directory (v2) or one per controller (v1).
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// Creates the cgroup with the limits; `Err` says why limits are unavailable.
    pub fn create(id: &str, memory_mib: u32, vcpus: u32) -> Result<Cgroup, String> {
        Self::create_under(Path::new("/sys/fs/cgroup"), id, memory_mib, vcpus)
    }

    fn create_under(root: &Path, id: &str, memory_mib: u32, vcpus: u32) -> Result<Cgroup, String> {
        let memory = u64::from(memory_mib.max(16)) << 20;
        let quota = u64::from(vcpus.max(1)) * CPU_PERIOD_US;
        let write = |dir: &Path, file: &str, value: &str| {
            std::fs::write(dir.join(file), value)
                .map_err(|e| format!("{}/{file}: {e}", dir.display()))
        };
        let mut cgroup = Cgroup { dirs: Vec::new() };
        let result = (|| {
            if root.join("cgroup.controllers").is_file() {
                let parent = root.join("nimbus");
                std::fs::create_dir_all(&parent)
                    .map_err(|e| format!("{}: {e}", parent.display()))?;
                // Hand the controllers down to nimbus/ and from there to each sandbox.
                write(root, "cgroup.subtree_control", "+memory +cpu +pids")?;
                write(&parent, "cgroup.subtree_control", "+memory +cpu +pids")?;
                let dir = parent.join(id);
                std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                cgroup.dirs.push(dir.clone());
                write(&dir, "memory.max", &memory.to_string())?;
                write(&dir, "memory.swap.max", "0").ok();
                write(&dir, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
                write(&dir, "pids.max", &PIDS_MAX.to_string())?;
            } else {
                for controller in ["memory", "cpu", "pids"] {
                    let dir = root.join(controller).join("nimbus").join(id);
                    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                    cgroup.dirs.push(dir.clone());
                    match controller {
                        "memory" => {
                            write(&dir, "memory.limit_in_bytes", &memory.to_string())?;
                            // Without this the limit only pushes pages to swap.
                            write(&dir, "memory.memsw.limit_in_bytes", &memory.to_string()).ok();
                        }
                        "cpu" => {
                            write(&dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                            write(&dir, "cpu.cfs_quota_us", &quota.to_string())?;
                        }
                        _ => write(&dir, "pids.max", &PIDS_MAX.to_string())?,
                    }
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(cgroup),
            Err(reason) => {
                cgroup.remove();
                Err(reason)
            }
        }
    }

    /// Moves a process tree (a process and all its descendants) into the cgroup;
    /// what they fork afterwards is born inside it.
    pub fn adopt_tree(&self, pid: u32) -> Result<(), String> {
        for pid in descendants(pid) {
            for dir in &self.dirs {
                std::fs::write(dir.join("cgroup.procs"), pid.to_string())
                    .map_err(|e| format!("{}/cgroup.procs: {e}", dir.display()))?;
            }
        }
        Ok(())
    }

    /// Removes the cgroup (its processes must be gone); best effort, idempotent.
    pub fn remove(&mut self) {
        for dir in self.dirs.drain(..) {
            let _ = std::fs::remove_dir(&dir);
        }
    }

    /// Removes what can be removed now; true once nothing is left.
    pub fn try_remove(&mut self) -> bool {
        self.dirs
            .retain(|dir| std::fs::remove_dir(dir).is_err() && dir.exists());
        self.dirs.is_empty()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// `pid` and every process below it, parents first.
fn descendants(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut index = 0;
    while index < all.len() {
        let parent = all[index];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) {
            for task in tasks.flatten() {
                let children =
                    std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
                all.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        index += 1;
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_layouts_get_their_limit_files() {
        let base = std::env::temp_dir().join(format!("nimbus-cgroup-{}", std::process::id()));
        let v1 = base.join("v1");
        for controller in ["memory", "cpu", "pids"] {
            std::fs::create_dir_all(v1.join(controller)).expect("dir");
        }
        let cgroup = Cgroup::create_under(&v1, "sb-1", 256, 2).expect("v1");
        let read = |path: PathBuf| std::fs::read_to_string(path).unwrap_or_default();
        assert_eq!(
            read(v1.join("memory/nimbus/sb-1/memory.limit_in_bytes")),
            (256u64 << 20).to_string()
        );
        assert_eq!(read(v1.join("cpu/nimbus/sb-1/cpu.cfs_quota_us")), "200000");
        assert_eq!(read(v1.join("pids/nimbus/sb-1/pids.max")), "4096");
        drop(cgroup);

        let v2 = base.join("v2");
        std::fs::create_dir_all(&v2).expect("dir");
        std::fs::write(v2.join("cgroup.controllers"), "cpu memory pids").expect("controllers");
        let cgroup = Cgroup::create_under(&v2, "sb-2", 64, 1).expect("v2");
        assert_eq!(read(v2.join("nimbus/sb-2/cpu.max")), "100000 100000");
        assert_eq!(
            read(v2.join("nimbus/sb-2/memory.max")),
            (64u64 << 20).to_string()
        );
        drop(cgroup);
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn descendants_include_the_process_itself() {
        assert_eq!(descendants(std::process::id())[0], std::process::id());
    }
}
