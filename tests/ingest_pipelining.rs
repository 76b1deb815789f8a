//! A producer may pipeline many lines without waiting (protocol 3.1): every line gets its
//! answer, in order, with strictly increasing ids, and subscribers get every event in order.
mod common;
use common::*;

use std::io::Write;
use std::thread;

/// Reads `n` events from `client`: (id, data) each.
fn read_events(mut client: Client, n: usize) -> Vec<(u64, String)> {
    (0..n)
        .map(|_| {
            let event = client.read_event();
            let mut id = None;
            let mut data = None;
            for line in event.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(v.to_string());
                }
            }
            match (id, data) {
                (Some(id), Some(data)) => (id, data),
                _ => panic!("malformed event {event:?}"),
            }
        })
        .collect()
}

/// Writes all `lines` from a thread, then reads one answer per line; returns the ids.
fn pipeline(p: &mut Producer, lines: Vec<u8>, count: usize) -> Vec<u64> {
    let mut sock = p.sock.try_clone().unwrap();
    let writer = thread::spawn(move || sock.write_all(&lines));
    let ids: Vec<u64> = (0..count)
        .map(|i| {
            let answer = p.read_answer();
            parse_ok(&answer).unwrap_or_else(|| panic!("answer {i}: {answer}"))
        })
        .collect();
    writer.join().unwrap().expect("write lines");
    ids
}

fn assert_strictly_increasing(ids: &[u64], who: &str) {
    for w in ids.windows(2) {
        assert!(
            w[0] < w[1],
            "{who}: ids not increasing: {} then {}",
            w[0],
            w[1]
        );
    }
}

#[test]
fn five_thousand_lines_in_one_go() {
    const N: usize = 5_000;
    let server = Server::start();
    let sub = server.subscribe("topic=pipe");
    let reader = thread::spawn(move || read_events(sub, N));
    let mut p = server.producer();
    let mut lines = Vec::new();
    for i in 0..N {
        lines.extend_from_slice(format!("{{\"topic\":\"pipe\",\"data\":\"n{i}\"}}\n").as_bytes());
    }
    let ids = pipeline(&mut p, lines, N);
    assert_eq!(ids.len(), N);
    assert_strictly_increasing(&ids, "producer");
    let events = reader.join().expect("subscriber");
    for (i, (id, data)) in events.iter().enumerate() {
        assert_eq!(data, &format!("n{i}"), "event {i} out of order");
        assert_eq!(*id, ids[i], "event {i}: id differs from its answer");
    }
}

#[test]
fn two_producers_at_once() {
    const N: usize = 2_000;
    let server = Server::start();
    let sub = server.subscribe("topic=both");
    let reader = thread::spawn(move || read_events(sub, 2 * N));
    let producers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let mut p = server.producer();
            thread::spawn(move || {
                let mut lines = Vec::new();
                for i in 0..N {
                    lines.extend_from_slice(
                        format!("{{\"topic\":\"both\",\"data\":\"{name}{i}\"}}\n").as_bytes(),
                    );
                }
                pipeline(&mut p, lines, N)
            })
        })
        .collect();
    let ids: Vec<Vec<u64>> = producers
        .into_iter()
        .map(|h| h.join().expect("producer thread"))
        .collect();
    for (name, ids) in ["a", "b"].iter().zip(&ids) {
        assert_eq!(ids.len(), N, "producer {name}");
        assert_strictly_increasing(ids, name);
    }
    let mut all: Vec<u64> = ids.concat();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 2 * N, "ids are unique across producers");
    // The subscriber sees everything once, in id order, each producer's events in its order.
    let events = reader.join().expect("subscriber");
    let got: Vec<u64> = events.iter().map(|(id, _)| *id).collect();
    assert_eq!(got, all, "subscriber gets every event once, in id order");
    for (name, ids) in ["a", "b"].iter().zip(&ids) {
        let mine: Vec<(u64, String)> = events
            .iter()
            .filter(|(_, d)| d.starts_with(name))
            .cloned()
            .collect();
        let want: Vec<(u64, String)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, format!("{name}{i}")))
            .collect();
        assert_eq!(mine, want, "producer {name}'s events");
    }
}
