//! protocol 2 and 2.2: one stream, several topics: events of every requested topic in publish
//! order, an event published to several of them exactly once, nothing from other topics,
//! duplicate topic parameters merged, percent-encoded names decoded.
mod common;
use common::*;
use std::time::Duration;

fn publish_to(p: &mut Producer, topics: &[&str], data: &str) -> u64 {
    let list: Vec<String> = topics.iter().map(|t| json_str(t)).collect();
    p.publish_json(&format!(
        "{{\"topics\":[{}],\"data\":{}}}",
        list.join(","),
        json_str(data)
    ))
}

fn expect(c: &mut Client, id: u64, data: &str) {
    assert_eq!(c.read_event(), format!("id: {id}\ndata: {data}\n\n"));
}

/// Nothing more arrives on `c` for a while.
fn expect_silence(c: &mut Client) {
    let extra = c.read_for(Duration::from_millis(300));
    assert!(
        extra.is_empty(),
        "unexpected bytes: {:?}",
        String::from_utf8_lossy(&extra)
    );
}

#[test]
fn two_topics_interleave_in_publish_order() {
    let server = Server::start();
    let mut c = server.subscribe("topic=a&topic=b");
    let mut p = server.producer();
    let plan = ["a", "b", "b", "a", "b", "a", "a", "b", "a", "b"];
    let sent: Vec<(u64, String)> = plan
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let data = format!("{t}{i}");
            (p.publish(t, &data), data)
        })
        .collect();
    for (id, data) in &sent {
        expect(&mut c, *id, data);
    }
    expect_silence(&mut c);
}

#[test]
fn event_on_both_topics_arrives_exactly_once() {
    let server = Server::start();
    let mut both = server.subscribe("topic=a&topic=b");
    let mut reversed = server.subscribe("topic=b&topic=a");
    let mut only_a = server.subscribe("topic=a");
    let mut only_b = server.subscribe("topic=b");
    let mut p = server.producer();
    let shared = publish_to(&mut p, &["a", "b"], "shared");
    let shared_rev = publish_to(&mut p, &["b", "a"], "shared-rev");
    let marker_a = p.publish("a", "marker-a");
    let marker_b = p.publish("b", "marker-b");
    for c in [&mut both, &mut reversed] {
        expect(c, shared, "shared");
        expect(c, shared_rev, "shared-rev");
        expect(c, marker_a, "marker-a");
        expect(c, marker_b, "marker-b");
    }
    for (c, marker) in [
        (&mut only_a, (marker_a, "marker-a")),
        (&mut only_b, (marker_b, "marker-b")),
    ] {
        expect(c, shared, "shared");
        expect(c, shared_rev, "shared-rev");
        expect(c, marker.0, marker.1);
    }
    for c in [&mut both, &mut reversed, &mut only_a, &mut only_b] {
        expect_silence(c);
    }
}

#[test]
fn stream_gets_nothing_from_other_topics() {
    let server = Server::start();
    let mut a = server.subscribe("topic=a");
    let mut p = server.producer();
    for i in 0..5 {
        p.publish("b", &format!("b{i}"));
        p.publish("a:b", &format!("prefix{i}"));
        p.publish("A", &format!("case{i}"));
    }
    publish_to(&mut p, &["b", "c"], "bc");
    let id = p.publish("a", "mine");
    expect(&mut a, id, "mine");
    expect_silence(&mut a);
}

#[test]
fn duplicated_topic_parameter_is_one_subscription() {
    let server = Server::start();
    let mut c = server.subscribe("topic=a&topic=a&topic=a");
    let mut mixed = server.subscribe("topic=a&topic=b&topic=a&topic=%61");
    let mut p = server.producer();
    let first = p.publish("a", "once");
    let second = p.publish("a", "twice?");
    for c in [&mut c, &mut mixed] {
        expect(c, first, "once");
        expect(c, second, "twice?");
        expect_silence(c);
    }
    // Unsubscribing happens once too: closing the duplicated stream leaves others intact.
    drop(c);
    let third = p.publish("a", "after");
    expect(&mut mixed, third, "after");
}

#[test]
fn percent_encoded_topic_names_are_decoded() {
    let server = Server::start();
    let mut upper = server.subscribe("topic=notifications%3A42");
    let mut lower = server.subscribe("topic=notifications%3a42");
    let mut plain = server.subscribe("topic=notifications:42");
    let mut many = server.subscribe("topic=activity%3Auser%3A7&topic=a%2Fb%40c");
    let mut p = server.producer();
    let id = p.publish("notifications:42", "hi");
    for c in [&mut upper, &mut lower, &mut plain] {
        expect(c, id, "hi");
    }
    let id1 = p.publish("activity:user:7", "seven");
    let id2 = p.publish("a/b@c", "slash-at");
    expect(&mut many, id1, "seven");
    expect(&mut many, id2, "slash-at");
    // The encoded spelling is not a topic of its own.
    let mut p2 = server.producer();
    let answer = p2.request(r#"{"topic":"notifications%3A42","data":"x"}"#);
    assert!(answer.starts_with("{\"ok\":false"), "{answer}");
    expect_silence(&mut upper);
}

#[test]
fn unknown_query_parameters_are_ignored() {
    let server = Server::start();
    let mut c = server.subscribe("foo=bar&topic=a&x&lang=en%20GB");
    let id = server.producer().publish("a", "ok");
    expect(&mut c, id, "ok");
}
