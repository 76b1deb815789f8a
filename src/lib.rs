//! ssehub: a Server-Sent Events hub on one `mio` thread.
//!
//! ```text
//!  producers ──unix socket──▶ ingest (lines) ──▶ hub: id, encode once, history
//!                                                     │ shared frame (Rc)
//!  subscribers ◀──writev── out queues ◀── fanout ◀────┘
//!      │  ▲
//!      ▼  │ accept → read head → http::request → route → subscribe (pubsub)
//!  event_loop: poll(timeout = timer wheel) → dispatch → timers → flush → reap
//! ```
//!
//! Invariants:
//! - one thread does all network I/O; nothing blocks it;
//! - an event is encoded once; every subscriber queue holds the same `Rc` bytes;
//! - an idle stream owns no buffers (`conn::Conn` is pinned by a size test);
//! - every keepalive and timeout is one entry in the timer wheel per connection;
//! - a slow subscriber is cut off at `streams.max_pending_bytes` or `streams.write_timeout`
//!   and never delays the others.
//!
//! Modules: `config` (TOML keys), `event_loop` (the loop), `conn` (per-connection state and
//! out queue), `http` (request parsing, the routing decision, canned answers), `pubsub`
//! (topics and subscribers), `fanout` (frames into queues), `sse` (wire format), `history`
//! (ids, retention), `hub` (the publish path), `ingest` (Unix-socket producers), `timer`
//! (the wheel), `publish` (the command-line producer), `logger`, `rlimit`. Operations:
//! `metrics` (Prometheus text), `notify` (systemd `sd_notify`), `listen_fds` (socket
//! activation), `reload` (configuration source, diff, `ssehub reload`); their loop glue is
//! `event_loop::ops`.

pub mod auth;
pub mod config;
pub mod conn;
pub mod event_loop;
pub mod fanout;
pub mod history;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod limits;
pub mod listen_fds;
pub mod log;
pub mod logger;
pub mod metrics;
pub mod notify;
pub mod publish;
pub mod pubsub;
pub mod reload;
pub mod rlimit;
pub mod sse;
pub mod timer;
pub mod topic_name;
