//! ssehub: a Server-Sent Events hub on one `mio` thread.
//!
//! ```text
//!  producers ─unix socket─▶ ingest (lines) ─▶ hub.accept: final marks, id, encode once
//!  publishers ─POST /publish (http::body)─┘        │
//!                                commit seam: memory now | log batch → durable
//!                                                  │ committed: history (hub)
//!  subscribers ◀─writev─ out queues ◀─ stream table: fan-out ◀─┘
//!      │ ▲
//!      ▼ │ accept → read head → http::request → route → stream table: start/replay
//!  event_loop, each turn: poll (timeout = timer wheel) → dispatch → timers → commit
//!                         → flush → reap
//! ```
//!
//! Invariants:
//! - one thread does all network I/O; nothing blocks it on a socket;
//! - the clock is read once per turn and passed down (`now`, `wall_us`);
//! - an event is encoded once; every subscriber queue holds the same `Rc` bytes;
//! - an event reaches streams and its producer's `ok` only once committed;
//! - an idle stream owns no buffers (`conn::Conn` is pinned at 64 bytes by a test);
//! - every keepalive and timeout is one entry in the timer wheel per connection;
//! - a slow subscriber is cut off at `streams.max_pending_bytes` or `streams.write_timeout`
//!   and never delays the others; history stays within `history.max_bytes`.
//!
//! `protocol N` in comments refers to section N of `docs/protocol.md`.
//!
//! Modules — the data path: `event_loop` (the turn; `accept`, `requests`, `producers`,
//! `http_publish`, `cluster`, `ops` and `recheck` are its parts), `due` (what each timer
//! is for), `conn` (per-connection state, out queue, TLS, and `conn::table`, the stream
//! table), `http` (request parsing, routing, request bodies and `POST /publish`'s rules,
//! CORS, canned answers), `auth` (tokens), `limits` (per-client caps), `ingest`
//! (producers' lines), `hub` (the publish path: accept, resume plans), `commit` (where
//! events become committed), `log` (the on-disk log), `cluster` (Redis Streams: the writer
//! and reader threads), `history` (ids, retention), `pubsub` (topics and subscribers),
//! `fanout` (a frame into one queue), `sse` (wire format), `timer` (the wheel),
//! `topic_name`. Operations: `config`, `reload`, `metrics` (and the loop's counters),
//! `notify` (systemd), `listen_fds` (socket activation), `logger`, `rlimit`, `rng`,
//! `publish` (the command-line producer), `heap`.

pub mod auth;
pub mod cluster;
pub mod commit;
pub mod config;
pub mod conn;
pub mod due;
pub mod event_loop;
pub mod fanout;
pub mod heap;
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
pub mod rng;
pub mod sse;
pub mod timer;
pub mod topic_name;
