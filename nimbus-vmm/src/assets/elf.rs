//! Just enough ELF to tell a static executable from a dynamic one.

use std::path::Path;

const PT_INTERP: u32 = 3;

/// True for a 64-bit little-endian ELF without a program interpreter (static).
pub fn is_static_elf(path: &Path) -> std::io::Result<bool> {
    let bytes = std::fs::read(path)?;
    Ok(static_elf(&bytes).unwrap_or(false))
}

fn static_elf(bytes: &[u8]) -> Option<bool> {
    if bytes.get(..4)? != b"\x7fELF" || *bytes.get(4)? != 2 || *bytes.get(5)? != 1 {
        return Some(false);
    }
    let u16_at = |at: usize| -> Option<u16> {
        Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
    };
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    };
    let phoff = u64_at(0x20)? as usize;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    for index in 0..phnum {
        if u32_at(phoff + index * phentsize)? == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_is_dynamic_and_garbage_is_not_static() {
        assert!(
            !is_static_elf(Path::new("/bin/sh")).unwrap_or(true)
                || Path::new("/bin/busybox").exists()
        );
        assert_eq!(static_elf(b"not an elf"), Some(false));
        assert_eq!(static_elf(b"\x7fELF\x02\x01"), None);
    }
}
