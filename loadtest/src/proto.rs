//! What the coordinator and its worker processes say to each other: one JSON object per
//! line, the worker's configuration on its stdin first, then commands on stdin and
//! reports on stdout. A worker whose stdin closes exits (its coordinator is gone).

use crate::hist::Buckets;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// ssehub: publish over its Unix socket (newline JSON, pipelined).
    Ssehub,
    /// nginx with the nchan module: publish by HTTP POST to its publisher location.
    Nchan,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Ssehub => "ssehub",
            Target::Nchan => "nchan",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Hold streams, count keepalives.
    Idle,
    /// Receive every event; check order and completeness; record latency. Slow readers
    /// are a share of the streams that stop reading.
    Fanout,
    /// Connect, read some events, disconnect, resume with `Last-Event-ID`, repeat.
    Churn,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnConfig {
    /// Events read on one connection before disconnecting: uniform in [min, max].
    pub min_events: u32,
    pub max_events: u32,
    /// Pause before reconnecting: uniform in [0, max_delay_ms].
    pub max_delay_ms: u64,
    /// Share of disconnects that reset the connection (RST) instead of closing it (FIN).
    pub rst_share: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub worker: usize,
    pub mode: Mode,
    pub target: Target,
    pub addr: SocketAddr,
    /// Request target of a stream, e.g. `/events?topic=t`.
    pub path: String,
    pub streams: usize,
    pub sources: Vec<IpAddr>,
    /// Events each stream must receive (fanout, churn).
    pub events: u64,
    /// How many of this worker's streams stop reading after the response head.
    pub slow: usize,
    /// `SO_RCVBUF` of the slow streams (small, so the server sees them stall soon).
    pub slow_rcvbuf: usize,
    pub churn: Option<ChurnConfig>,
    pub connect_timeout_ms: u64,
    /// Hard deadline, `CLOCK_MONOTONIC` ns: past it the worker exits non-zero.
    pub deadline_ns: u64,
    pub seed: u64,
    /// TLS streams: the CA (or self-signed certificate) to trust, PEM.
    #[serde(default)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// TLS 1.2 only (default: TLS 1.3 only).
    #[serde(default)]
    pub tls12: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToWorker {
    /// Every event is published: finish within `grace_ms` and report.
    Finish { grace_ms: u64 },
    /// Report now (idle).
    Report,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FromWorker {
    Ready(Ready),
    Result(Box<WorkerResult>),
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Ready {
    pub open: usize,
    pub failed: usize,
    pub connect_ms: u64,
    pub first_error: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ChurnCounts {
    /// Connection attempts (first connections included).
    pub connects: u64,
    /// Attempts answered `200` with a stream.
    pub streams_opened: u64,
    /// Connects that sent `Last-Event-ID`.
    pub resumes: u64,
    /// `event: reset` received.
    pub resets: u64,
    pub fin_closes: u64,
    pub rst_closes: u64,
    /// Streams the server ended.
    pub server_closes: u64,
    pub connect_errors: u64,
    /// Answers other than 200: `[[status, count], ...]`.
    pub statuses: Vec<(u16, u64)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub streams: usize,
    pub open_at_end: usize,
    /// Streams that ended before they were meant to (fanout, idle).
    pub closed_early: usize,
    /// Streams that received every event.
    pub complete: usize,
    /// Distinct events received by the reading streams.
    pub deliveries: u64,
    pub missing: u64,
    pub duplicates: u64,
    /// Gaps right after an `event: reset` (the server said it could not replay them).
    pub missing_after_reset: u64,
    /// Events whose data was not a load-test payload.
    pub foreign: u64,
    pub keepalives: u64,
    /// Publish-to-receipt latency (µs), from the time written / the time scheduled.
    pub latency_sent: Buckets,
    pub latency_sched: Buckets,
    /// Per sequence number: when the last reading stream of this worker had it (ns).
    pub last_recv_ns: Vec<u64>,
    pub slow_streams: usize,
    /// Slow streams the server disconnected (end of stream seen once they read again).
    pub slow_cut: usize,
    /// Slow streams still open with every event once they read again (not disconnected).
    pub slow_kept: usize,
    pub slow_deliveries: u64,
    pub churn: ChurnCounts,
    /// CPU seconds this worker used between ready and result.
    pub cpu_s: f64,
    pub errors: Vec<String>,
}
