//! A producer that never reads its answers is slowed, never buffered without bound
//! (protocol 3.1): the server stops reading from it, stays responsive to everyone else, keeps
//! its memory bounded, and once the producer reads, every answer arrives, in order.
mod common;
use common::*;

use std::io::{BufRead, BufReader, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const LINES: usize = 200_000;

#[test]
fn producer_that_never_reads_is_slowed_not_buffered() {
    let server = Server::start();
    let slow = server.producer();

    let mut input = Vec::new();
    for i in 0..LINES {
        input.extend_from_slice(format!("{{\"topic\":\"slow\",\"data\":{i}}}\n").as_bytes());
    }
    let total = input.len();
    let written = Arc::new(AtomicUsize::new(0));
    let writer = {
        let mut sock = slow.sock.try_clone().unwrap();
        // Short timeouts so the thread notices its deadline: the test cannot hang on it.
        sock.set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let written = written.clone();
        thread::spawn(move || -> Result<(), String> {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut at = 0;
            while at < total {
                let end = (at + 4096).min(total);
                match sock.write(&input[at..end]) {
                    Ok(0) => return Err("write returned 0".into()),
                    Ok(n) => {
                        at += n;
                        written.store(at, Ordering::SeqCst);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if Instant::now() > deadline {
                            return Err(format!("gave up after writing {at} of {total}"));
                        }
                    }
                    Err(e) => return Err(format!("write failed after {at} bytes: {e}")),
                }
            }
            Ok(())
        })
    };

    // The writer stalls: its byte count stops growing for a full second.
    let stall_deadline = Instant::now() + Duration::from_secs(20);
    let mut last = written.load(Ordering::SeqCst);
    let mut still_since = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(50));
        let now = written.load(Ordering::SeqCst);
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() >= Duration::from_secs(1) {
            break;
        }
        assert!(
            Instant::now() < stall_deadline,
            "the writer never stalled: {now} of {total} bytes written"
        );
    }
    let stalled_at = written.load(Ordering::SeqCst);
    assert!(
        stalled_at < total,
        "the server read all {total} bytes from a producer that reads no answers"
    );
    assert!(
        stalled_at < total / 2,
        "the server read {stalled_at} of {total} bytes before slowing the producer"
    );

    // Memory stays bounded during the stall.
    let rss = vm_rss_kib(server.pid()).expect("VmRSS");
    eprintln!("stalled after {stalled_at} of {total} bytes; server VmRSS {rss} KiB");
    assert!(rss < 100 * 1024, "server VmRSS {rss} KiB during the stall");

    // Everyone else is served promptly.
    let t = Instant::now();
    let mut c = Client::connect(server.addr);
    c.send("GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n");
    let (status, _, body) = c.read_response();
    assert_eq!((status, body.trim()), (200, "ok"));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "/healthz took {:?} during the stall",
        t.elapsed()
    );
    let t = Instant::now();
    let mut other = server.producer();
    let other_id = other.publish("other", "still here");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "another producer's publish took {:?} during the stall",
        t.elapsed()
    );
    // Still stalled (nothing above unblocked it).
    assert!(
        written.load(Ordering::SeqCst) < total,
        "writer finished without its answers being read"
    );

    // The slow producer reads: it gets every answer, in order, and its writer finishes.
    let mut answers = BufReader::new(slow.sock.try_clone().unwrap());
    let mut line = String::new();
    let mut prev = 0;
    let mut below_other = 0;
    for i in 0..LINES {
        line.clear();
        let n = answers
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("answer {i} of {LINES}: {e}"));
        assert!(n > 0, "EOF after {i} of {LINES} answers");
        let id = parse_ok(line.trim_end()).unwrap_or_else(|| panic!("answer {i}: {line:?}"));
        assert!(id > prev, "answer {i}: id {id} not above {prev}");
        prev = id;
        if id < other_id {
            below_other += 1;
        }
    }
    assert!(
        (1..LINES).contains(&below_other),
        "the other producer's event should fall amid the slow one's ({below_other} below it)"
    );
    writer
        .join()
        .expect("writer thread")
        .expect("writer finishes once answers are read");
    assert_eq!(written.load(Ordering::SeqCst), total);
    let rss = vm_rss_kib(server.pid()).expect("VmRSS");
    assert!(rss < 100 * 1024, "server VmRSS {rss} KiB after the run");
}
