//! Raw throughput of the log's CRC-32C (`ssehub::log::crc32c`), the number behind the
//! choice of implementation in `src/log/crc.rs` (issue 12). Checksums 64 MiB cut into
//! record-sized (200 B) and read-buffer-sized (64 KiB) pieces; prints the median of 7
//! passes per size. Measures, never asserts.
//!
//! `cargo run --release --example crc_throughput` (pin it with `taskset -c 0`).

use ssehub::log::crc32c;
use std::hint::black_box;
use std::time::Instant;

const TOTAL: usize = 64 << 20;
const PASSES: usize = 7;

fn main() {
    // Not constant bytes, so that nothing can be folded away.
    let data: Vec<u8> = (0..TOTAL as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for chunk in [200usize, 64 << 10] {
        let mut secs: Vec<f64> = (0..PASSES)
            .map(|_| {
                let t0 = Instant::now();
                let mut acc = 0u32;
                for piece in data.chunks(chunk) {
                    acc ^= crc32c(black_box(piece));
                }
                black_box(acc);
                t0.elapsed().as_secs_f64()
            })
            .collect();
        secs.sort_by(f64::total_cmp);
        let median = secs[PASSES / 2];
        println!(
            "chunk={chunk} bytes={TOTAL} median_ms={:.2} MiB/s={:.0}",
            median * 1e3,
            TOTAL as f64 / (1 << 20) as f64 / median
        );
    }
}
