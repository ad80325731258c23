#![no_main]
//! What clients send the cache proxy besides bodies: v1 chunks' Content-Range,
//! Range headers of downloads, Azure Put Block List bodies. Each gets an answer.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nimbus_cache::actions::blob::parse_block_list(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = nimbus_cache::actions::v1::parse_content_range(text);
        if let Ok(value) = axum::http::HeaderValue::from_str(text) {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(axum::http::header::RANGE, value);
            for size in [0, 1, 4096, u64::MAX] {
                let _ = nimbus_cache::server::parse_range(&headers, size);
            }
        }
    }
});
