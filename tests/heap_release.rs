//! Memory comes back after a peak (issue 28 item 4): the hub's allocator (jemalloc, with
//! its background purging thread, `src/heap.rs`) gives the pages of a history that filled
//! and expired back to the kernel on its own, and the loop keeps answering meanwhile.
//! Real binary, real sockets, `/proc/PID/smaps_rollup` read. Bounds are generous: the
//! time the loop stalls is measured by `loadtest/trim_stall.sh`, never asserted here.
mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Private memory of `pid` (Private_Clean + Private_Dirty), in KiB.
fn private_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// Publishes `count` events of `size` bytes round-robin over `topics` topics, pipelined;
/// returns how many were accepted.
fn flood(server: &Server, count: usize, topics: usize, size: usize) -> usize {
    let sock = UnixStream::connect(&server.socket).expect("connect ingest");
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut writer = sock.try_clone().unwrap();
    let feeder = std::thread::spawn(move || {
        let data = "x".repeat(size);
        let mut buf = Vec::with_capacity(1 << 20);
        for i in 0..count {
            let line = format!("{{\"topic\":\"t{}\",\"data\":\"{data}\"}}\n", i % topics);
            buf.extend_from_slice(line.as_bytes());
            if buf.len() > 1 << 19 {
                writer.write_all(&buf).expect("write lines");
                buf.clear();
            }
        }
        writer.write_all(&buf).expect("write lines");
    });
    let mut reader = BufReader::with_capacity(1 << 20, sock);
    let mut answer = String::new();
    let mut ok = 0;
    for _ in 0..count {
        answer.clear();
        reader.read_line(&mut answer).expect("answer");
        ok += usize::from(parse_ok(answer.trim_end()).is_some());
    }
    feeder.join().unwrap();
    ok
}

#[test]
fn memory_of_an_expired_history_goes_back_to_the_kernel() {
    let server = Server::start_with(&[(
        "history",
        "max_events = 1000000\nmax_age = \"1s\"\nmax_bytes = 1073741824",
    )]);
    let pid = server.pid();
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_string())
        .collect();
    assert!(
        threads.iter().any(|t| t == "jemalloc_bg_thd"),
        "no jemalloc background thread among {threads:?}: {}",
        server.log_text()
    );
    let idle = private_kib(pid);
    // ~120 MB of history in 120,000 small blocks, scattered over 120 topics.
    assert_eq!(flood(&server, 120_000, 120, 1000), 120_000);
    let peak = private_kib(pid);
    assert!(
        peak > idle + 100_000,
        "the flood did not build a peak: idle {idle} KiB, peak {peak} KiB"
    );
    // The history expires a second later; jemalloc's decay gives the pages back over its
    // 10 s (and the old glibc trim ran every 10 s). Back within 60 s to a quarter of the
    // peak's growth, with the loop answering meanwhile.
    let started = Instant::now();
    let mut now = peak;
    while started.elapsed() < Duration::from_secs(60) {
        let mut c = Client::connect(server.addr);
        c.send("GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert_eq!(c.read_response().0, 200);
        now = private_kib(pid);
        if now < idle + (peak - idle) / 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        now < idle + (peak - idle) / 4,
        "idle {idle} KiB, peak {peak} KiB, still {now} KiB after {:?}",
        started.elapsed()
    );
}
