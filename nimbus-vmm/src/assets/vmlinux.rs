//! The uncompressed ELF kernel Firecracker boots, extracted from a bzImage the way
//! the kernel's `scripts/extract-vmlinux` does: find a compressed payload by its
//! magic and decompress it with the system's tool until the result is an ELF.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::{Error, Result};

const PAYLOADS: &[(&[u8], &str, &[&str])] = &[
    (b"\xfd7zXZ\x00", "xz", &["-dc"]),
    (b"\x28\xb5\x2f\xfd", "zstd", &["-dc"]),
    (b"\x1f\x8b\x08", "gzip", &["-dc"]),
    (b"\x02\x21\x4c\x18", "lz4", &["-dc"]),
];

pub fn extract(bzimage: &Path, out: &Path) -> Result<()> {
    let data =
        std::fs::read(bzimage).map_err(Error::io(format!("reading {}", bzimage.display())))?;
    for (magic, tool, args) in PAYLOADS {
        let mut from = 0;
        while let Some(offset) = find(&data[from..], magic).map(|o| o + from) {
            if let Some(elf) = decompress(tool, args, &data[offset..]) {
                std::fs::write(out, elf)
                    .map_err(Error::io(format!("writing {}", out.display())))?;
                return Ok(());
            }
            from = offset + 1;
        }
    }
    Err(Error::Assets(format!(
        "no ELF kernel found inside {} (tried xz, zstd, gzip, lz4 payloads)",
        bzimage.display()
    )))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn decompress(tool: &str, args: &[&str], input: &[u8]) -> Option<Vec<u8>> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let input = input.to_vec();
    // Trailing garbage after the payload makes the tool complain; what it decoded
    // before that is still the kernel.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().ok()?;
    let _ = writer.join();
    output
        .stdout
        .starts_with(b"\x7fELF")
        .then_some(output.stdout)
}
