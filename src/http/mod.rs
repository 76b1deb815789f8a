//! HTTP/1.1 as pure functions: request heads in (`request`), canned answers out (`response`).

pub mod cors;
pub mod request;
pub mod response;
