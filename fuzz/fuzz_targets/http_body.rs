//! Fuzz target `http_body`: a mode byte, a length byte and a request body; the properties are `ssehub_fuzz::checks::http_body`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ssehub_fuzz::checks::http_body(data));
