//! Shared code of ssehub's fuzz targets: the properties (`checks`, also replayed by
//! `tests/fuzz_regressions.rs`), the WHATWG event-stream parser they read SSE back with
//! (`event_stream`), and the structured input of `sse_encoder` with its byte encoding for
//! seeding.

pub mod checks;
pub mod event_stream;

use arbitrary::{Arbitrary, Unstructured};
use checks::SseCase;

/// The `sse_encoder` target's input, derived with `arbitrary` from the fuzzer's bytes.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct SseInput {
    pub id: u64,
    pub earliest: Option<u64>,
    pub event: Option<String>,
    pub data: String,
}

impl From<SseInput> for SseCase {
    fn from(i: SseInput) -> SseCase {
        SseCase {
            id: i.id,
            earliest: i.earliest,
            event: i.event,
            data: i.data,
        }
    }
}

impl From<SseCase> for SseInput {
    fn from(c: SseCase) -> SseInput {
        SseInput {
            id: c.id,
            earliest: c.earliest,
            event: c.event,
            data: c.data,
        }
    }
}

/// What `arbitrary` makes of `bytes`, as libfuzzer-sys does it (`arbitrary_take_rest`).
pub fn sse_input(bytes: &[u8]) -> Option<SseInput> {
    SseInput::arbitrary_take_rest(Unstructured::new(bytes)).ok()
}

/// Fuzzer bytes from which `arbitrary` derives exactly `case` (for seed files); None when no
/// such bytes were found. The layout follows arbitrary 1.x: integers little-endian, an
/// `Option` a flag byte, a `String` that is not last its bytes with its length taken from
/// the end of the input, the last field the rest. Checked by decoding it back.
pub fn sse_input_bytes(case: &SseCase) -> Option<Vec<u8>> {
    let want = SseInput::from(case.clone());
    let mut head = case.id.to_le_bytes().to_vec();
    match case.earliest {
        Some(e) => {
            head.push(1);
            head.extend_from_slice(&e.to_le_bytes());
        }
        None => head.push(0),
    }
    let candidates: Vec<Vec<u8>> = match &case.event {
        None => {
            let mut b = head.clone();
            b.push(0);
            b.extend_from_slice(case.data.as_bytes());
            vec![b]
        }
        Some(event) => {
            // The length of `event` sits at the end, in 1, 2 or 4 big-endian bytes.
            let len = event.len() as u32;
            [1usize, 2, 4]
                .iter()
                .map(|&width| {
                    let mut b = head.clone();
                    b.push(1);
                    b.extend_from_slice(event.as_bytes());
                    b.extend_from_slice(case.data.as_bytes());
                    b.extend_from_slice(&len.to_be_bytes()[4 - width..]);
                    b
                })
                .collect()
        }
    };
    candidates
        .into_iter()
        .find(|b| sse_input(b).as_ref() == Some(&want))
}
