//! HTTP/1.1 as pure functions: request heads in (`request`), request bodies (`body`), a
//! routing decision (`route`), canned answers out (`response`).

pub mod body;
pub mod cors;
pub mod publish;
pub mod request;
pub mod response;
pub mod route;
