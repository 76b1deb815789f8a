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

/// `GET /topics`: name order, `prefix`, pages of `limit` continued with `after=<next>`.
#[test]
fn topics_are_listed_in_name_order_a_page_at_a_time() {
    let s = Server::start();
    let mut p = s.producer();
    for name in ["b/2", "a", "b/1", "c", "b/3"] {
        p.publish(name, "x");
    }
    let _held = s.subscribe("topic=b/2");
    let list = |query: &str| {
        let mut c = Client::connect(s.addr);
        c.send(&format!(
            "GET /topics{query} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ));
        c.read_response()
    };
    let (status, _, body) = list("");
    assert_eq!(status, 200);
    let names: Vec<&str> = body
        .split("\"topic\":\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert_eq!(names, ["a", "b/1", "b/2", "b/3", "c"]);
    assert!(body.ends_with("],\"next\":null}\n"), "{body}");
    assert!(
        body.contains("{\"topic\":\"b/2\",\"subscribers\":1,\"retained\":1,"),
        "{body}"
    );
    // Two at a time under b/.
    let (_, _, first) = list("?prefix=b%2F&limit=2");
    assert!(first.contains("\"b/1\"") && first.contains("\"b/2\"") && !first.contains("\"b/3\""));
    assert!(first.ends_with("\"next\":\"b/2\"}\n"), "{first}");
    let (_, _, second) = list("?prefix=b%2F&limit=2&after=b%2F2");
    assert!(
        second.starts_with("{\"topics\":[{\"topic\":\"b/3\""),
        "{second}"
    );
    assert!(second.ends_with("],\"next\":null}\n"), "{second}");
    assert_eq!(list("?limit=5000").0, 400);
}
