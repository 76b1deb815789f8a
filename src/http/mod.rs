//! HTTP/1.1 as pure functions: request heads in (`request`), a routing decision
//! (`route`), canned answers out (`response`).

pub mod cors;
pub mod request;
pub mod response;
pub mod route;
