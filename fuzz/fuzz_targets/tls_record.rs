//! Fuzz target `tls_record`: a script of TLS records; the properties are `ssehub_fuzz::checks::tls_record`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ssehub_fuzz::checks::tls_record(data));
