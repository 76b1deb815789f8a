//! Final events (protocol 2.4): a topic marked final ends its streams, refuses further
//! publishes while the mark is kept, answers `204` to a client that has seen the end, and
//! gives a fresh client the history and then the end (job-progress streams).
mod common;
use common::*;
use std::time::Duration;

fn publish_final(p: &mut Producer, topic: &str, data: &str) -> u64 {
    p.publish_json(&format!(
        "{{\"topic\":\"{topic}\",\"event\":\"done\",\"data\":\"{data}\",\"final\":true}}"
    ))
}

#[test]
fn a_single_topic_stream_ends_right_after_the_final_event() {
    let server = Server::start();
    let mut p = server.producer();
    let mut c = server.subscribe("topic=job:1");
    let progress = p.publish("job:1", "50");
    let done = publish_final(&mut p, "job:1", "100");
    assert_eq!(event_id(&c.read_event()), Some(progress));
    assert_eq!(
        c.read_event(),
        format!("id: {done}\nevent: done\ndata: 100\n\n")
    );
    assert_eq!(
        c.read_to_close(Duration::from_secs(5)),
        Some(Vec::new()),
        "closed, nothing more"
    );
}

#[test]
fn publishing_to_a_final_topic_is_refused() {
    let server = Server::start();
    let mut p = server.producer();
    publish_final(&mut p, "job:2", "100");
    let answer = p.request("{\"topic\":\"job:2\",\"data\":\"late\"}");
    let reason = parse_error_answer(&answer).expect("an error answer");
    assert!(reason.contains("final"), "{reason}");
    let answer = p.request("{\"topics\":[\"job:3\",\"job:2\"],\"data\":\"late\"}");
    assert!(
        parse_error_answer(&answer).is_some(),
        "any final topic refuses the event"
    );
    p.publish("job:3", "still open");
}

#[test]
fn resuming_at_or_after_the_final_event_gets_204() {
    let server = Server::start();
    let mut p = server.producer();
    let first = p.publish("job:4", "10");
    let done = publish_final(&mut p, "job:4", "100");
    let (mut c, head) = server.request_stream("topic=job:4", &format!("Last-Event-ID: {done}\r\n"));
    assert!(head.starts_with("HTTP/1.1 204 No Content\r\n"), "{head}");
    drop(c.read_for(Duration::from_millis(50)));
    // Resuming before the end replays up to it, then the stream ends.
    let mut c = server.resume("topic=job:4", &first.to_string());
    assert_eq!(event_id(&c.read_event()), Some(done));
    assert!(c.read_to_close(Duration::from_secs(5)).is_some());
}

#[test]
fn a_fresh_request_gets_the_history_then_the_end() {
    let server = Server::start();
    let mut p = server.producer();
    let ids = [
        p.publish("job:5", "10"),
        p.publish("job:5", "60"),
        publish_final(&mut p, "job:5", "100"),
    ];
    let mut c = server.subscribe("topic=job:5");
    let got: Vec<Option<u64>> = (0..3).map(|_| event_id(&c.read_event())).collect();
    assert_eq!(got, ids.map(Some));
    assert_eq!(c.read_to_close(Duration::from_secs(5)), Some(Vec::new()));
}

#[test]
fn a_multi_topic_stream_ends_once_all_its_topics_are_final() {
    let server = Server::start();
    let mut p = server.producer();
    let mut c = server.subscribe("topic=x&topic=y");
    let x_done = publish_final(&mut p, "x", "done");
    assert_eq!(event_id(&c.read_event()), Some(x_done));
    assert!(
        c.read_for(Duration::from_millis(300)).is_empty(),
        "still open for y"
    );
    let y_event = p.publish("y", "more");
    assert_eq!(event_id(&c.read_event()), Some(y_event));
    let y_done = publish_final(&mut p, "y", "done");
    assert_eq!(event_id(&c.read_event()), Some(y_done));
    assert!(
        c.read_to_close(Duration::from_secs(5)).is_some(),
        "ended after the last final"
    );
    // Both topics final and both seen: 204.
    let (_c, head) =
        server.request_stream("topic=x&topic=y", &format!("Last-Event-ID: {y_done}\r\n"));
    assert!(head.starts_with("HTTP/1.1 204"), "{head}");
}

#[test]
fn the_final_mark_expires_with_history_max_age() {
    let server = Server::start_with(&[("history", "max_age = \"1s\"")]);
    let mut p = server.producer();
    publish_final(&mut p, "job:6", "100");
    assert!(parse_error_answer(&p.request("{\"topic\":\"job:6\",\"data\":\"x\"}")).is_some());
    let ok = wait_for(Duration::from_secs(5), || {
        parse_ok(&p.request("{\"topic\":\"job:6\",\"data\":\"again\"}")).is_some()
    });
    assert!(ok, "publishing works again once the mark has expired");
}
