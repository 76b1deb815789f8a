//! `floor`: the cost of one `write()` per delivery on this machine, measured the way the
//! servers are, so that their deliveries per CPU-second can be read against it. A minimal
//! SSE "server" inside this process accepts N streams from the usual worker processes,
//! then writes each event's frame (encoded once) to every stream with one blocking
//! `write()` each, on one thread pinned to `--cpu`; nothing else runs on that thread. The
//! result is deliveries per CPU-second of that thread (`CLOCK_THREAD_CPUTIME_ID`), with
//! the workers checking every event arrived once (and measuring latency as for `fanout`).

use crate::coord::{Fleet, Watch};
use crate::hist::{Hist, Summary};
use crate::proto::{Mode, ToWorker, WorkerResult};
use crate::run::{Common, Provenance, parse_duration, round1};
use crate::sse::{Payload, payload};
use crate::sys;
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, alias = "subscribers", default_value_t = 10_000)]
    pub streams: usize,
    #[arg(long, default_value_t = 100)]
    pub events: u64,
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Events per second (0: back to back).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// CPU the writing thread is pinned to (the servers' core).
    #[arg(long, default_value_t = 0)]
    pub cpu: usize,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,
}

#[derive(Serialize)]
struct Report {
    scenario: &'static str,
    target: &'static str,
    label: Option<String>,
    ok: bool,
    problems: Vec<String>,
    streams: usize,
    events: u64,
    size: usize,
    rate: f64,
    writes: u64,
    writer_cpu_s: f64,
    deliveries_per_cpu_s: f64,
    deliveries: u64,
    missing: u64,
    duplicates: u64,
    latency_us: Summary,
    latency_sched_us: Summary,
    /// Events written per second, from the first event's due time to the last write (the
    /// rate a producer would have kept), as `fanout` reports it for a server.
    publish: FloorPublish,
    client_cpu_s: f64,
    wall_s: f64,
    #[serde(flatten)]
    provenance: Provenance,
}

#[derive(Serialize)]
struct FloorPublish {
    events_per_s: f64,
}

fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into the struct we pass, which lives on our stack.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn pin_this_thread(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity(0) applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

pub fn run(mut a: Args) -> i32 {
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ssehub-loadtest floor: bind: {e}");
            return 1;
        }
    };
    a.common.addr = listener.local_addr().expect("local addr");
    if let Err(e) = a.common.check() {
        eprintln!("ssehub-loadtest: {e}");
        return 2;
    }
    if a.events == 0 || a.streams == 0 {
        eprintln!("ssehub-loadtest floor: --streams and --events must be positive");
        return 2;
    }
    // This process holds the server side of every stream as well.
    if a.streams + 64 > sys::raise_nofile() as usize {
        eprintln!(
            "ssehub-loadtest floor: {} streams need more descriptors than this process has",
            a.streams
        );
        return 2;
    }
    let mut prov = Provenance::start();
    let t0 = sys::mono_ns();
    let publish_s = if a.rate > 0.0 {
        a.events as f64 / a.rate
    } else {
        60.0
    };
    let total = a.common.deadline.unwrap_or(
        a.common.connect_timeout
            + Duration::from_secs_f64(publish_s)
            + a.grace
            + Duration::from_secs(30),
    );
    let deadline = sys::mono_ns() + total.as_nanos() as u64;
    let watch = Watch::start(deadline, total.as_secs_f64());
    let mut configs = a.common.layout(Mode::Fanout, a.streams, 0, "floor");
    for c in &mut configs {
        c.events = a.events;
        c.deadline_ns = deadline;
    }
    let n = a.streams;
    let acceptor = std::thread::spawn(move || {
        let mut socks = Vec::with_capacity(n);
        let mut buf = [0u8; 4096];
        while socks.len() < n {
            let Ok((mut s, _)) = listener.accept() else {
                continue;
            };
            let _ = s.set_nodelay(true);
            let _ = s.read(&mut buf); // the request head (one segment on loopback)
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
                .is_ok()
            {
                socks.push(s);
            }
        }
        socks
    });
    watch.stage("opening streams");
    let mut fleet = match Fleet::spawn(&configs, &watch) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ssehub-loadtest: cannot start workers: {e}");
            return 1;
        }
    };
    if let Err(e) = fleet.wait_ready() {
        eprintln!("ssehub-loadtest: {e}");
        return 1;
    }
    let mut socks: Vec<TcpStream> = acceptor.join().expect("acceptor");
    watch.stage("writing");
    let self_cpu0 = sys::self_cpu_s();
    let cpu = a.cpu;
    let (events, size, rate) = (a.events, a.size, a.rate);
    let writer = std::thread::spawn(move || {
        if !pin_this_thread(cpu) {
            eprintln!("floor: could not pin the writer to cpu {cpu}");
        }
        let start = sys::mono_ns() + 20_000_000;
        let cpu0 = thread_cpu_s();
        let mut last_write_ns = start;
        let mut writes = 0u64;
        let mut failed = 0u64;
        for seq in 0..events {
            let sched = if rate > 0.0 {
                start + (seq as f64 * 1e9 / rate) as u64
            } else {
                sys::mono_ns()
            };
            sys::sleep_until_ns(sched);
            let sent = sys::mono_ns();
            let frame = format!(
                "id: {}\ndata: {}\n\n",
                seq + 1,
                payload(
                    Payload {
                        seq,
                        sched_ns: sched,
                        sent_ns: sent
                    },
                    size
                )
            );
            for s in &mut socks {
                match s.write_all(frame.as_bytes()) {
                    Ok(()) => writes += 1,
                    Err(_) => failed += 1,
                }
            }
            last_write_ns = sys::mono_ns();
        }
        let span_s = last_write_ns.saturating_sub(start) as f64 / 1e9;
        let events_per_s = if span_s > 0.0 {
            (events as f64 / span_s * 10.0).round() / 10.0
        } else {
            0.0
        };
        (writes, failed, thread_cpu_s() - cpu0, socks, events_per_s)
    });
    let (writes, failed, writer_cpu, socks, events_per_s) = writer.join().expect("writer");
    watch.stage("waiting for the last deliveries");
    fleet.send_all(&ToWorker::Finish {
        grace_ms: a.grace.as_millis() as u64,
    });
    let results = match fleet.wait_results() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ssehub-loadtest: {e}");
            return 1;
        }
    };
    let wall = (sys::mono_ns() - t0) as f64 / 1e9;
    drop(socks);
    fleet.finish();
    prov.end();
    let sum = |f: fn(&WorkerResult) -> u64| results.iter().map(f).sum::<u64>();
    let mut lat = Hist::default();
    let mut lat_sched = Hist::default();
    for r in &results {
        lat.merge(&r.latency_sent);
        lat_sched.merge(&r.latency_sched);
    }
    let (missing, duplicates) = (sum(|r| r.missing), sum(|r| r.duplicates));
    let mut problems = Vec::new();
    if missing > 0 || duplicates > 0 || failed > 0 {
        problems.push(format!(
            "missing {missing}, duplicated {duplicates}, failed writes {failed}"
        ));
    }
    let report = Report {
        scenario: "floor",
        target: "floor",
        label: a.common.label.clone(),
        ok: problems.is_empty(),
        problems,
        streams: a.streams,
        events: a.events,
        size: a.size,
        rate: a.rate,
        writes,
        writer_cpu_s: (writer_cpu * 1000.0).round() / 1000.0,
        deliveries_per_cpu_s: if writer_cpu > 0.0 {
            (writes as f64 / writer_cpu).round()
        } else {
            0.0
        },
        deliveries: sum(|r| r.deliveries),
        missing,
        duplicates,
        latency_us: lat.summary(),
        latency_sched_us: lat_sched.summary(),
        publish: FloorPublish { events_per_s },
        client_cpu_s: round1(
            results.iter().map(|r| r.cpu_s).sum::<f64>() + sys::self_cpu_s()
                - self_cpu0
                - writer_cpu,
        ),
        wall_s: round1(wall),
        provenance: prov,
    };
    println!("{}", serde_json::to_string(&report).expect("report"));
    eprintln!(
        "floor: {} writes in {:.3} CPU-s = {:.0} deliveries per CPU-second (one write each); p50={}us p99={}us",
        report.writes,
        report.writer_cpu_s,
        report.deliveries_per_cpu_s,
        report.latency_us.p50,
        report.latency_us.p99
    );
    if report.ok { 0 } else { 1 }
}
