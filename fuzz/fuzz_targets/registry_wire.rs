#![no_main]
//! What registry clients and upstreams send the cache proxy's registry besides
//! blob bytes: repository names, tags and digests, manifests (with and without a
//! Content-Type), upload chunks' Content-Range, and the upstream's
//! WWW-Authenticate challenges. Each gets an answer, never a panic.

use libfuzzer_sys::fuzz_target;
use nimbus_cache::registry::{manifest, upstream, Digest, Reference, Repository};

fuzz_target!(|data: &[u8]| {
    let _ = manifest::parse(None, data);
    let _ = manifest::parse(Some(manifest::OCI_INDEX), data);
    let _ = manifest::parse(Some(manifest::DOCKER_MANIFEST), data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Repository::parse(text);
        let _ = Reference::parse(text);
        let _ = Digest::parse(text);
        let _ = upstream::challenge_params(text);
        let _ = nimbus_cache::registry::http::parse_content_range(text);
    }
});
