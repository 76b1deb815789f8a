//! Resume (protocol 2.2): a client reconnecting with the id of the last event it saw gets
//! exactly what it missed, merged across its topics, then live; `reset` when the hub
//! cannot prove that nothing was missed.
mod common;
use common::*;
use std::time::Duration;

fn publish_n(p: &mut Producer, topic: &str, n: usize) -> Vec<u64> {
    (0..n)
        .map(|i| p.publish(topic, &format!("{topic}-{i}")))
        .collect()
}

fn read_ids(c: &mut Client, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| event_id(&c.read_event()).expect("event with id"))
        .collect()
}

#[test]
fn resume_gets_exactly_the_missed_events_then_live() {
    let server = Server::start();
    let mut p = server.producer();
    let mut c = server.subscribe("topic=a");
    let seen = publish_n(&mut p, "a", 3);
    assert_eq!(read_ids(&mut c, 3), seen);
    drop(c);
    let missed = publish_n(&mut p, "a", 3);
    let mut c = server.resume("topic=a", &seen[2].to_string());
    let replayed: Vec<String> = (0..3).map(|_| c.read_event()).collect();
    for (block, (id, i)) in replayed.iter().zip(missed.iter().zip(0..)) {
        assert_eq!(block, &format!("id: {id}\ndata: a-{i}\n\n"));
    }
    let live = p.publish("a", "live");
    assert_eq!(c.read_event(), format!("id: {live}\ndata: live\n\n"));
    assert!(
        c.read_for(Duration::from_millis(200)).is_empty(),
        "nothing else"
    );
}

#[test]
fn resume_merges_topics_in_id_order_and_sends_shared_events_once() {
    let server = Server::start();
    let mut p = server.producer();
    let start = p.publish("a", "before");
    let mut expected = Vec::new();
    for i in 0..5 {
        expected.push(p.publish("a", &format!("a{i}")));
        expected.push(p.publish("b", &format!("b{i}")));
        expected.push(p.publish_json(&format!("{{\"topics\":[\"a\",\"b\"],\"data\":\"ab{i}\"}}")));
        p.publish("c", "not mine");
    }
    let mut c = server.resume("topic=a&topic=b", &start.to_string());
    assert_eq!(read_ids(&mut c, expected.len()), expected);
    assert!(
        c.read_for(Duration::from_millis(200)).is_empty(),
        "no duplicate, nothing of c"
    );
}

#[test]
fn query_parameter_is_the_resume_point_of_a_first_connection_and_the_header_wins() {
    let server = Server::start();
    let mut p = server.producer();
    let ids = publish_n(&mut p, "q", 4);
    let mut c = server.subscribe(&format!("topic=q&lastEventId={}", ids[1]));
    assert_eq!(read_ids(&mut c, 2), &ids[2..]);
    let (mut c, head) = server.request_stream(
        &format!("topic=q&lastEventId={}", ids[0]),
        &format!("Last-Event-ID: {}\r\n", ids[2]),
    );
    assert!(head.starts_with("HTTP/1.1 200"));
    c.read_line();
    assert_eq!(read_ids(&mut c, 1), &ids[3..]);
    // An empty header counts as absent: the parameter applies.
    let (mut c, _) = server.request_stream(
        &format!("topic=q&lastEventId={}", ids[2]),
        "Last-Event-ID: \r\n",
    );
    c.read_line();
    assert_eq!(read_ids(&mut c, 1), &ids[3..]);
}

fn expect_reset(c: &mut Client, sent: &str, earliest: Option<u64>) {
    let block = c.read_event();
    let earliest = earliest.map_or("null".to_string(), |e| format!("\"{e}\""));
    assert_eq!(
        block,
        format!("event: reset\ndata: {{\"lastEventId\":\"{sent}\",\"earliestId\":{earliest}}}\n\n")
    );
}

#[test]
fn reset_for_ids_the_hub_never_issued() {
    let server = Server::start();
    let mut p = server.producer();
    let mut ids = publish_n(&mut p, "r", 2);
    for sent in [
        format!("{}", ids[1] + 1_000_000),
        "abc".to_string(),
        "1".to_string(),
    ] {
        let mut c = server.resume("topic=r", &sent);
        expect_reset(&mut c, &sent, Some(ids[0]));
        assert_eq!(read_ids(&mut c, ids.len()), ids, "then everything retained");
        let live = p.publish("r", "live");
        assert_eq!(read_ids(&mut c, 1), [live]);
        ids.push(live);
        p.publish("other", "x");
    }
    let mut c = server.resume("topic=empty", "abc");
    expect_reset(&mut c, "abc", None);
}

#[test]
fn reset_when_events_after_the_resume_point_were_evicted() {
    let server = Server::start_with(&[("history", "max_events = 3")]);
    let mut p = server.producer();
    let ids = publish_n(&mut p, "e", 6);
    let mut c = server.resume("topic=e", &ids[1].to_string());
    expect_reset(&mut c, &ids[1].to_string(), Some(ids[3]));
    assert_eq!(read_ids(&mut c, 3), &ids[3..]);
    // The client saw the newest evicted event: nothing is missing, no reset.
    let mut c = server.resume("topic=e", &ids[2].to_string());
    assert_eq!(read_ids(&mut c, 3), &ids[3..]);
}

#[test]
fn a_quiet_topic_resumes_without_reset() {
    let server = Server::start();
    let mut p = server.producer();
    let last = p.publish("quiet", "only");
    publish_n(&mut p, "busy", 50);
    let mut c = server.resume("topic=quiet", &last.to_string());
    assert!(
        c.read_for(Duration::from_millis(300)).is_empty(),
        "no reset, nothing to replay"
    );
    let next = p.publish("quiet", "next");
    assert_eq!(read_ids(&mut c, 1), [next]);
}

/// The hand-over race: events are published continuously while 100 clients resume, some
/// of them reading slowly; each must see every event after its resume point exactly once,
/// in order.
#[test]
fn hand_over_from_replay_to_live_has_no_gap_and_no_duplicate() {
    let server = Server::start_with(&[("history", "max_events = 10000")]);
    let mut p = server.producer();
    let early: Vec<u64> = (0..300)
        .map(|i| p.publish("race", &format!("early-{i}-{}", "x".repeat(200))))
        .collect();
    let addr = server.addr;
    let publisher = std::thread::spawn(move || {
        let mut ids = Vec::new();
        for i in 0..1500 {
            ids.push(p.publish("race", &format!("live-{i}")));
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        ids.push(p.publish("race", "END"));
        ids
    });
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let resume_from = early[(i * 3) % early.len()];
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis((i as u64 * 7) % 300));
                let mut c = Client::connect(addr);
                c.send(&format!("GET /events?topic=race HTTP/1.1\r\nHost: t\r\nLast-Event-ID: {resume_from}\r\n\r\n"));
                c.read_head();
                c.read_line();
                let mut got = Vec::new();
                loop {
                    let block = c.read_event();
                    got.push(event_id(&block).expect("id"));
                    if event_data(&block) == "END" {
                        break;
                    }
                    if i % 4 == 0 && got.len() % 50 == 0 {
                        std::thread::sleep(Duration::from_millis(20)); // a slow reader
                    }
                }
                (resume_from, got)
            })
        })
        .collect();
    let live = publisher.join().unwrap();
    let all: Vec<u64> = early.iter().chain(live.iter()).copied().collect();
    for client in clients {
        let (resume_from, got) = client.join().unwrap();
        let expected: Vec<u64> = all.iter().copied().filter(|&id| id > resume_from).collect();
        assert_eq!(
            got.len(),
            expected.len(),
            "client resuming from {resume_from}"
        );
        assert_eq!(got, expected, "client resuming from {resume_from}");
    }
}

/// An event the replay has not sent yet is evicted: the stream is closed (never a gap).
#[test]
fn eviction_of_an_unsent_replay_event_closes_the_stream() {
    let server = Server::start_with(&[("history", "max_events = 60")]);
    let mut p = server.producer();
    let big = "y".repeat(60_000);
    let first = p.publish("ev", "first");
    let ids: Vec<u64> = (0..59).map(|_| p.publish("ev", &big)).collect();
    let sock = {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(&server.addr.into()).unwrap();
        std::net::TcpStream::from(s)
    };
    let mut c = Client::from_stream(sock);
    c.send(&format!(
        "GET /events?topic=ev HTTP/1.1\r\nHost: t\r\nLast-Event-ID: {first}\r\n\r\n"
    ));
    std::thread::sleep(Duration::from_millis(300));
    // Replace the whole history while the client is not reading.
    for _ in 0..60 {
        p.publish("ev", &big);
    }
    c.read_head();
    c.read_line();
    let rest = c
        .read_to_close(Duration::from_secs(20))
        .expect("server closes the stream");
    let text = String::from_utf8(rest).unwrap();
    let got: Vec<u64> = text.split("\n\n").filter_map(event_id).collect();
    assert!(
        !got.is_empty() && got.len() < ids.len(),
        "a prefix, then closed: got {}",
        got.len()
    );
    assert_eq!(
        got,
        ids[..got.len()],
        "what arrived is gap-free from the resume point"
    );
}
