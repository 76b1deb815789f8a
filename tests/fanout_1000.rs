//! protocol 1 and 2: one event reaches 1,000 concurrent subscribers of a topic, each exactly
//! once and with nothing else on the stream; a second event too.
mod common;
use common::*;
use std::io::{ErrorKind, Read};
use std::time::{Duration, Instant};

const SUBSCRIBERS: usize = 1000;
const THREADS: usize = 8;

/// Reads one event from each client, spread over threads; returns the ones that differ.
fn read_one_each(clients: &mut [Client], expected: &str) -> Vec<(usize, String)> {
    let per = clients.len().div_ceil(THREADS);
    std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .chunks_mut(per)
            .enumerate()
            .map(|(chunk, cs)| {
                s.spawn(move || {
                    let mut wrong = Vec::new();
                    for (i, c) in cs.iter_mut().enumerate() {
                        c.set_timeout(Duration::from_secs(15));
                        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            c.read_event()
                        }))
                        .unwrap_or_else(|_| "<EOF or timeout>".to_string());
                        if got != expected {
                            wrong.push((chunk * per + i, got));
                        }
                    }
                    wrong
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("reader thread"))
            .collect()
    })
}

/// Clients that hold any further byte (buffered or on the socket).
fn clients_with_extra_bytes(clients: &mut [Client]) -> Vec<(usize, Vec<u8>)> {
    let mut extra = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        // Bytes already buffered by the fixture beyond the event.
        let mut got = c.read_for(Duration::ZERO);
        c.sock.set_nonblocking(true).unwrap();
        let mut chunk = [0u8; 4096];
        loop {
            match c.sock.read(&mut chunk) {
                Ok(0) => {
                    got.extend_from_slice(b"<EOF>");
                    break;
                }
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    got.extend_from_slice(format!("<{e}>").as_bytes());
                    break;
                }
            }
        }
        c.sock.set_nonblocking(false).unwrap();
        if !got.is_empty() {
            extra.push((i, got));
        }
    }
    extra
}

#[test]
fn one_thousand_subscribers_each_get_every_event_once() {
    let server = Server::start();
    let started = Instant::now();
    // `subscribe` reads the head and the retry line: once it returns, the server holds the
    // subscription (and nothing but head + retry was sent before it).
    let mut clients: Vec<Client> = (0..SUBSCRIBERS)
        .map(|_| server.subscribe("topic=fan"))
        .collect();
    eprintln!("{} streams open in {:?}", clients.len(), started.elapsed());
    // Before any event: nothing beyond head and retry.
    let early = clients_with_extra_bytes(&mut clients);
    assert!(
        early.is_empty(),
        "bytes before any event: {:?}",
        &early[..early.len().min(3)]
    );

    let mut p = server.producer();
    let mut last = 0;
    for round in 0..2 {
        let data = format!("{{\"round\":{round},\"msg\":\"fan out\"}}");
        let id = p.publish("fan", &data);
        assert!(id > last);
        last = id;
        let expected = format!("id: {id}\ndata: {data}\n\n");
        let t = Instant::now();
        let wrong = read_one_each(&mut clients, &expected);
        assert!(
            wrong.is_empty(),
            "round {round}: {} of {SUBSCRIBERS} subscribers got something else; first: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(3)]
        );
        eprintln!(
            "round {round}: all {SUBSCRIBERS} received in {:?}",
            t.elapsed()
        );
        // Exactly once: no duplicate (or anything else) follows.
        std::thread::sleep(Duration::from_millis(200));
        let extra = clients_with_extra_bytes(&mut clients);
        assert!(
            extra.is_empty(),
            "round {round}: {} subscribers got extra bytes; first: {:?}",
            extra.len(),
            extra
                .iter()
                .take(3)
                .map(|(i, b)| (*i, String::from_utf8_lossy(b).into_owned()))
                .collect::<Vec<_>>()
        );
    }
    // A stream on another topic was unaffected and the server still answers.
    let mut other = server.subscribe("topic=other");
    let id = p.publish("other", "x");
    assert_eq!(other.read_event(), format!("id: {id}\ndata: x\n\n"));
}
