//! `idle`: opens N event streams (spread over worker processes and source addresses in
//! 127.0.0.0/8), holds them, counts keepalives, and reports the server's private memory
//! per stream (`Private_Clean + Private_Dirty` of `/proc/PID/smaps_rollup`, all of the
//! server's processes) and the kernel's (the `Slab` line of `/proc/meminfo`, halved since
//! loopback holds both ends), measured with the streams open minus the same before any was
//! opened. Hold for two keepalive intervals so that keepalives have been written.

use crate::coord::{Fleet, Watch};
use crate::proto::{Mode, ToWorker};
use crate::run::{Common, Provenance, parse_duration};
use crate::sys;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Streams to hold.
    #[arg(long, default_value_t = 100)]
    pub streams: usize,
    #[arg(long, default_value = "idle")]
    pub topic: String,
    /// How long to hold them once all are open.
    #[arg(long, default_value = "35s", value_parser = parse_duration)]
    pub hold: Duration,
}

pub fn run(a: Args) -> i32 {
    if let Err(e) = a.common.check() {
        eprintln!("ssehub-loadtest: {e}");
        return 2;
    }
    let mut prov = Provenance::start();
    let total = a
        .common
        .deadline
        .unwrap_or(a.common.connect_timeout + a.hold + Duration::from_secs(30));
    let watch = Watch::start(
        sys::mono_ns() + total.as_nanos() as u64,
        total.as_secs_f64(),
    );
    let pid = a.common.server_pid;
    let before_private = pid.map_or(0, sys::private_kib);
    let before_slab = sys::slab_kib();
    let mut configs = a.common.layout(Mode::Idle, a.streams, 0, &a.topic);
    for c in &mut configs {
        c.deadline_ns = sys::mono_ns() + total.as_nanos() as u64;
    }
    watch.stage("opening streams");
    let mut fleet = match Fleet::spawn(&configs, &watch) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ssehub-loadtest: cannot start workers: {e}");
            return 1;
        }
    };
    let ready = match fleet.wait_ready() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ssehub-loadtest: {e}");
            return 1;
        }
    };
    let open: usize = ready.iter().map(|r| r.open).sum();
    let connect_ms = ready.iter().map(|r| r.connect_ms).max().unwrap_or(0);
    eprintln!("ready streams={open} after_ms={connect_ms}");
    if let Some(e) = ready.iter().find_map(|r| r.first_error.clone()) {
        eprintln!("first error: {e}");
    }
    watch.stage("holding streams");
    std::thread::sleep(a.hold);
    let during_private = pid.map_or(0, sys::private_kib);
    let during_slab = sys::slab_kib();
    watch.stage("collecting reports");
    fleet.send_all(&ToWorker::Report);
    let results = match fleet.wait_results() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ssehub-loadtest: {e}");
            return 1;
        }
    };
    fleet.finish();
    prov.end();
    let open: usize = results.iter().map(|r| r.open_at_end).sum();
    let closed: usize = results.iter().map(|r| r.closed_early).sum();
    let keepalives: u64 = results.iter().map(|r| r.keepalives).sum();
    let n = open.max(1) as f64;
    let private_per_stream = (during_private as f64 - before_private as f64) * 1024.0 / n;
    let slab_per_stream_one_side = (during_slab as f64 - before_slab as f64) * 1024.0 / n / 2.0;
    let js = |s: &str| serde_json::to_string(s).expect("string");
    // The first fields are the format this scenario has always printed.
    println!(
        "{{\"scenario\":\"idle\",\"streams_requested\":{},\"streams_open\":{open},\"streams_closed\":{closed},\
         \"keepalives_seen\":{keepalives},\"hold_s\":{},\"server_private_kib_before\":{before_private},\"server_private_kib_during\":{during_private},\
         \"server_private_bytes_per_stream\":{private_per_stream:.1},\"kernel_slab_bytes_per_stream_one_side\":{slab_per_stream_one_side:.1},\
         \"target\":\"{}\",\"label\":{},\"workers\":{},\"connect_ms\":{connect_ms},\"command\":{},\"unix_time\":{},\
         \"load_avg_start\":{},\"load_avg_end\":{}}}",
        a.streams,
        a.hold.as_secs_f64(),
        a.common.target.name(),
        a.common.label.as_deref().map_or("null".into(), js),
        configs.len(),
        js(&prov.command),
        prov.unix_time,
        js(&prov.load_avg_start),
        js(&prov.load_avg_end),
    );
    if open < a.streams { 1 } else { 0 }
}
