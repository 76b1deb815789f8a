//! Fuzz target `sse_encoder`: a structured event (id, event type, payload, reset's earliest
//! id) derived with `arbitrary`; the properties are `ssehub_fuzz::checks::sse_encoder`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssehub_fuzz::SseInput;

fuzz_target!(|input: SseInput| ssehub_fuzz::checks::sse_encoder(&input.into()));
