#![no_main]
//! Any bytes, under any event name, must parse to a value or a typed error.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (event, body) = match data.split_first() {
        Some((selector, rest)) => {
            let event = match selector % 4 {
                0 => "workflow_job",
                1 => "ping",
                2 => "push",
                _ => "",
            };
            (event, rest)
        }
        None => ("workflow_job", data),
    };
    let _ = nimbus_core::webhook::parse_event(event, body);
    let _ = nimbus_core::webhook::verify_signature(b"secret", body, std::str::from_utf8(data).ok());
});
