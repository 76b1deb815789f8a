//! `GET /topics/NAME` (protocol 5): what this node knows of a topic — streams subscribed,
//! events retained, its last id, whether it is final — to loopback clients (or on the admin
//! listener), and `404` for a topic the hub does not know.
mod common;
use common::*;
use std::time::Duration;

/// `GET /topics/NAME`: status and body.
fn topic(s: &Server, name: &str) -> (u16, String) {
    let mut c = Client::connect(s.addr);
    c.send(&format!(
        "GET /topics/{name} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    ));
    let (status, head, body) = c.read_response();
    if status == 200 {
        assert!(head.contains("Content-Type: application/json"), "{head}");
    }
    (status, body)
}

#[test]
fn a_topic_reports_its_streams_history_and_last_id() {
    let s = Server::start();
    assert_eq!(topic(&s, "news").0, 404, "unknown before anyone used it");
    let first = s.subscribe("topic=news");
    let mut second = s.subscribe("topic=news&topic=other");
    let mut p = s.producer();
    let ids: Vec<u64> = (0..3)
        .map(|i| p.publish("news", &format!("e{i}")))
        .collect();
    let _ = second.read_event();
    assert_eq!(
        topic(&s, "news"),
        (
            200,
            format!(
                "{{\"topic\":\"news\",\"subscribers\":2,\"retained\":3,\"last_id\":\"{}\",\"final\":false}}\n",
                ids[2]
            )
        )
    );
    assert_eq!(
        topic(&s, "other").1,
        "{\"topic\":\"other\",\"subscribers\":1,\"retained\":0,\"last_id\":null,\"final\":false}\n"
    );
    // A stream leaves: the count follows.
    drop(first);
    assert!(wait_for(Duration::from_secs(5), || {
        topic(&s, "news").1.contains("\"subscribers\":1,")
    }));
    // Percent-encoded names, and names that are no topic names.
    p.publish("a/b", "x");
    assert_eq!(topic(&s, "a%2Fb").0, 200);
    assert_eq!(topic(&s, "a%20b").0, 400);
    // A final event.
    p.publish_json(r#"{"topic":"news","data":"bye","final":true}"#);
    assert!(topic(&s, "news").1.contains("\"final\":true"));
}
