//! The basic promise: subscribe, publish, receive.
mod common;
use common::*;

#[test]
fn subscribe_publish_receive() {
    let server = Server::start();
    let mut client = server.subscribe("topic=news");
    let mut producer = server.producer();
    let id = producer.publish("news", "hello");
    assert_eq!(client.read_event(), format!("id: {id}\ndata: hello\n\n"));
}
