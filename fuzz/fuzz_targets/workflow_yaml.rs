#![no_main]
//! Any workflow file given to `nimbus run` must plan into jobs or a clear error.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = nimbus_vmm::workflow::plan(text, None);
    let _ = nimbus_vmm::workflow::plan(text, Some("build"));
});
