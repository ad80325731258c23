//! The repository's working tree, packed once per run for every job's VM: the
//! files git would see (`.gitignore`, `.git/info/exclude` and the global
//! excludes honoured, hidden files kept, `.git` itself left out), as a tar
//! stream the session sends to the guest before the job. `.nimbus` directories
//! are left out too, ignored or not: they hold `nimbus dev up`'s state (its
//! secrets, database and caches), which no job may see.

use std::path::{Path, PathBuf};

/// What [`pack`] made.
#[derive(Debug, Clone)]
pub struct Packed {
    /// The tar file.
    pub archive: PathBuf,
    /// Files in it.
    pub files: u64,
    /// Bytes of file content in it.
    pub bytes: u64,
}

/// Packs the tree under `root` into a tar at `archive`.
pub fn pack(root: &Path, archive: &Path) -> std::io::Result<Packed> {
    let file = std::fs::File::create(archive)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    tar.follow_symlinks(false);
    let walker = ignore::WalkBuilder::new(root)
        .hidden(false)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(true)
        .require_git(false)
        .parents(true)
        .filter_entry(|entry| {
            let is_dir = entry.file_type().is_some_and(|kind| kind.is_dir());
            entry.file_name() != ".git" && !(is_dir && entry.file_name() == ".nimbus")
        })
        .sort_by_file_name(|a, b| a.cmp(b))
        .build();
    let (mut files, mut bytes) = (0, 0);
    for entry in walker {
        let entry = entry.map_err(std::io::Error::other)?;
        let path = entry.path();
        let Ok(relative) = path.strip_prefix(root) else {
            continue;
        };
        if relative.as_os_str().is_empty() {
            continue;
        }
        let Some(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            tar.append_dir(relative, path)?;
        } else if kind.is_file() || kind.is_symlink() {
            tar.append_path_with_name(path, relative)?;
            files += 1;
            bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    tar.into_inner()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(Packed {
        archive: archive.to_path_buf(),
        files,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_is_packed_without_ignored_files_or_git() {
        let root = std::env::temp_dir().join(format!("nimbus-pack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["src", ".git", "target", ".github/workflows", ".nimbus"] {
            std::fs::create_dir_all(root.join(dir)).expect("dir");
        }
        for (file, text) in [
            (".gitignore", "target/\n*.log\n"),
            ("src/main.rs", "fn main() {}"),
            ("debug.log", "noise"),
            ("target/big", "built"),
            (".git/HEAD", "ref: refs/heads/main"),
            (".nimbus/dev.env", "NIMBUS_JWT_SECRET=not for jobs"),
            (".github/workflows/ci.yml", "jobs: {}"),
        ] {
            std::fs::write(root.join(file), text).expect("file");
        }
        let archive = root.with_extension("tar");
        let packed = pack(&root, &archive).expect("packs");
        let mut names: Vec<String> =
            tar::Archive::new(std::fs::File::open(&archive).expect("open"))
                .entries()
                .expect("entries")
                .map(|e| {
                    e.expect("entry")
                        .path()
                        .expect("path")
                        .display()
                        .to_string()
                })
                .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ".github",
                ".github/workflows",
                ".github/workflows/ci.yml",
                ".gitignore",
                "src",
                "src/main.rs"
            ]
        );
        assert_eq!(packed.files, 3);
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_file(&archive);
    }
}
