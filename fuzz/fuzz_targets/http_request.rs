//! Fuzz target `http_request`: raw bytes in; the properties are `ssehub_fuzz::checks::http_request`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ssehub_fuzz::checks::http_request(data));
