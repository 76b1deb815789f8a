//! Fuzz target `ingest_line`: raw bytes in; the properties are `ssehub_fuzz::checks::ingest_line`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ssehub_fuzz::checks::ingest_line(data));
