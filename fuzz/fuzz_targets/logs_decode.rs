//! The logging pipeline's request decoder (JSON array or NDJSON of log lines and
//! metadata rows) must answer every input with records or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nimbus_logs::decode::decode_logs(data);
    let _ = nimbus_logs::decode::decode_metadata(data);
});
