#![no_main]
//! Whatever a caller puts after `Bearer `: API tokens (every audience), log ingest
//! tokens, cache tokens and signed cache links must verify or be refused, and a
//! forged one (it is signed with another secret here) must never verify.

use libfuzzer_sys::fuzz_target;
use nimbus_core::auth::{Audience, JwtKeys};
use nimbus_core::cache_token::CacheTokenKeys;
use nimbus_core::Secret;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let keys = JwtKeys::new(&Secret::new("fuzz-jwt-secret-0123456789"));
    for audience in Audience::ALL {
        assert!(keys.verify(token, audience).is_err(), "a forged API token verified");
    }
    assert!(keys.verify_ingest(token).is_err(), "a forged ingest token verified");
    let cache = CacheTokenKeys::new(&Secret::new("fuzz-cache-secret-0123456789"));
    assert!(cache.verify(token).is_err(), "a forged cache token verified");
    if let Some((message, signature)) = token.rsplit_once('&') {
        assert!(!cache.verify_url(message, signature), "a forged link verified");
    }
    let _ = nimbus_core::auth::bearer_token(&{
        let mut headers = axum::http::HeaderMap::new();
        if let Ok(value) = axum::http::HeaderValue::from_str(token) {
            headers.insert(axum::http::header::AUTHORIZATION, value);
        }
        headers
    });
});
