//! How a cache entry's bytes are identified: the sha256 of the whole when the
//! proxy saw every byte in order (single-shot uploads, a one-part upload), or,
//! for an upload joined from several parts by the store itself, the composite
//! `HEX-N`: the sha256 of the N parts' sha256 digests (raw, in order) — the shape
//! S3 gives multipart ETags. The parts' own digests, sizes and offsets stay in
//! the index as the entry's layout, so the scrub can check every byte.

use sha2::{Digest, Sha256};

use crate::index::Part;

/// The digest of an entry joined from `parts` (in order), or `None` when a part
/// has no recorded sha256 (staged before digests were recorded).
pub fn composite(parts: &[Part]) -> Option<String> {
    let mut digests = Vec::with_capacity(parts.len());
    for part in parts {
        digests.push(part.sha256.as_deref()?);
    }
    match digests.as_slice() {
        [only] => Some((*only).to_string()),
        _ => {
            let mut hasher = Sha256::new();
            for digest in &digests {
                hasher.update(hex::decode(digest).ok()?);
            }
            Some(format!(
                "{}-{}",
                hex::encode(hasher.finalize()),
                digests.len()
            ))
        }
    }
}

/// Whether `digest` is a composite (checked part by part against the layout).
pub fn is_composite(digest: &str) -> bool {
    digest.contains('-')
}

/// Hashes a stream of chunks part by part along a layout, for the scrub.
pub struct LayoutHasher<'a> {
    parts: &'a [Part],
    current: usize,
    left: u64,
    hasher: Sha256,
    intact: bool,
}

impl<'a> LayoutHasher<'a> {
    /// A hasher expecting the parts of `parts`, in order.
    pub fn new(parts: &'a [Part]) -> Self {
        LayoutHasher {
            parts,
            current: 0,
            left: parts.first().map_or(0, |part| part.size),
            hasher: Sha256::new(),
            intact: true,
        }
    }

    /// Feeds the next bytes of the object, whatever their chunking.
    pub fn update(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() && self.intact {
            self.finish_empty_parts();
            if self.current >= self.parts.len() {
                self.intact = false; // more bytes than the layout has
                return;
            }
            let take = chunk
                .len()
                .min(usize::try_from(self.left).unwrap_or(usize::MAX));
            self.hasher.update(&chunk[..take]);
            self.left -= take as u64;
            chunk = &chunk[take..];
        }
    }

    /// Closes every part whose bytes are all in: its digest must match.
    fn finish_empty_parts(&mut self) {
        while self.left == 0 && self.current < self.parts.len() && self.intact {
            let digest = hex::encode(std::mem::take(&mut self.hasher).finalize());
            if self.parts[self.current].sha256.as_deref() != Some(digest.as_str()) {
                self.intact = false;
            }
            self.current += 1;
            self.left = self.parts.get(self.current).map_or(0, |part| part.size);
        }
    }

    /// Whether every part was there, whole, with its recorded digest.
    pub fn intact(mut self) -> bool {
        self.finish_empty_parts();
        self.intact && self.current == self.parts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(data: &[u8], start: u64) -> Part {
        Part {
            name: format!("{start}"),
            start: Some(start),
            size: data.len() as u64,
            sha256: Some(hex::encode(Sha256::digest(data))),
            rank: None,
        }
    }

    #[test]
    fn one_part_is_the_plain_sha256_and_several_a_composite() {
        let whole = part(b"hello", 0);
        assert_eq!(
            composite(std::slice::from_ref(&whole)),
            whole.sha256.clone()
        );
        let layout = [part(b"hel", 0), part(b"lo", 3)];
        let digest = composite(&layout).expect("digests");
        assert!(digest.ends_with("-2") && is_composite(&digest), "{digest}");
        assert!(!is_composite(whole.sha256.as_deref().unwrap_or_default()));
        let mut unknown = layout.clone();
        unknown[1].sha256 = None;
        assert_eq!(composite(&unknown), None);
    }

    #[test]
    fn the_layout_hasher_checks_every_part_whatever_the_chunking() {
        let layout = [part(b"abc", 0), part(b"", 3), part(b"defgh", 3)];
        for chunking in [1, 2, 4, 8] {
            let mut hasher = LayoutHasher::new(&layout);
            for chunk in b"abcdefgh".chunks(chunking) {
                hasher.update(chunk);
            }
            assert!(hasher.intact(), "chunks of {chunking}");
        }
        for bad in [&b"abcdefgX"[..], b"abcdefg", b"abcdefghi"] {
            let mut hasher = LayoutHasher::new(&layout);
            hasher.update(bad);
            assert!(!hasher.intact(), "{bad:?}");
        }
    }
}
