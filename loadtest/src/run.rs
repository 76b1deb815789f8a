//! What every scenario shares: the target and placement flags, loopback checks, the worker
//! layout, the server sampler, and the provenance written next to each result.

use crate::coord;
use crate::proto::{Mode, Target, WorkerConfig};
use crate::sys::{self, ServerSample};
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// `500ms`, `12s`, `2.5s`, `1m`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (use 500ms, 12s, 1m)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("not a duration: {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Server under test.
    #[arg(long, value_enum, default_value = "ssehub")]
    pub target: Target,
    /// The server's HTTP address (loopback only).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// ssehub's ingest socket (publisher, `--target ssehub`).
    #[arg(long, default_value = "./ssehub.sock")]
    pub socket: PathBuf,
    /// Request target of a stream, the topic appended.
    #[arg(long, default_value = "/events?topic=")]
    pub sub_path: String,
    /// nchan's publisher location, the topic appended (`--target nchan`).
    #[arg(long, default_value = "/pub?topic=")]
    pub pub_path: String,
    /// The server's pid (nginx: the master; its children are counted too).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Source addresses (127.0.0.0/8), shared out among the workers; default: four
    /// addresses per worker, 127.1.W.1-4.
    #[arg(long, value_delimiter = ',')]
    pub sources: Vec<IpAddr>,
    /// Worker processes (0: as many as the descriptor limit needs).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Streams per worker (default: this process's descriptor limit less 64).
    #[arg(long)]
    pub max_per_worker: Option<usize>,
    /// Time allowed to open every stream.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Hard limit for the whole run (default: derived from the scenario); past it the
    /// run stops and exits 3.
    #[arg(long, value_parser = parse_duration)]
    pub deadline: Option<Duration>,
    /// Free text copied into the result (e.g. the comparison's run name).
    #[arg(long)]
    pub label: Option<String>,
    /// Streams over TLS (server name `localhost`), trusting this CA or self-signed
    /// certificate (PEM); TLS 1.3 unless `--tls12`.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// With `--tls-ca`: TLS 1.2 instead of 1.3.
    #[arg(long)]
    pub tls12: bool,
    /// nchan's publisher address when it differs from `--addr` (e.g. plain HTTP next to a
    /// TLS listener).
    #[arg(long)]
    pub pub_addr: Option<SocketAddr>,
}

impl Common {
    /// Loopback targets and sources only (protocol 6).
    pub fn check(&self) -> Result<(), String> {
        if !self.addr.ip().is_loopback() || self.sources.iter().any(|s| !s.is_loopback()) {
            return Err("loopback targets and sources only".into());
        }
        if self.pub_addr.is_some_and(|a| !a.ip().is_loopback()) {
            return Err("loopback targets and sources only".into());
        }
        if self.target == Target::Nchan && self.pub_path.is_empty() {
            return Err("--target nchan needs --pub-path".into());
        }
        Ok(())
    }

    /// Worker configurations for `streams` streams in `mode`, `slow` of them slow.
    pub fn layout(
        &self,
        mode: Mode,
        streams: usize,
        slow: usize,
        topic: &str,
    ) -> Vec<WorkerConfig> {
        let max = self.max_per_worker.unwrap_or_else(sys::streams_per_process);
        let split = coord::split(streams, max, self.workers);
        let n = split.len();
        let seed = sys::mono_ns();
        let mut slow_left = slow;
        split
            .iter()
            .enumerate()
            .map(|(w, &k)| {
                let my_slow = if w + 1 == n {
                    slow_left
                } else {
                    (slow * k).div_ceil(streams.max(1)).min(slow_left)
                };
                slow_left -= my_slow;
                WorkerConfig {
                    worker: w,
                    mode,
                    target: self.target,
                    addr: self.addr,
                    path: format!("{}{}", self.sub_path, topic),
                    streams: k,
                    sources: coord::sources(w, n, &self.sources),
                    events: 0,
                    slow: my_slow,
                    slow_rcvbuf: 4096,
                    churn: None,
                    connect_timeout_ms: self.connect_timeout.as_millis() as u64,
                    deadline_ns: 0,
                    seed: seed ^ ((w as u64 + 1) * 0x9E37_79B9_7F4A_7C15),
                    tls_ca: self.tls_ca.clone(),
                    tls12: self.tls12,
                }
            })
            .collect()
    }

    pub fn sample(&self) -> ServerSample {
        self.server_pid.map(sys::server_sample).unwrap_or_default()
    }
}

/// Samples the server's memory and descriptors every `every` until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<(f64, u64, u64)>>>,
}

impl Sampler {
    pub fn start(pid: Option<u32>, every: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = pid.map(|pid| {
            std::thread::spawn(move || {
                let t0 = sys::mono_ns();
                let mut series = Vec::new();
                while !s.load(Ordering::Relaxed) {
                    let x = sys::server_sample(pid);
                    let t = (sys::mono_ns() - t0) as f64 / 1e9;
                    series.push(((t * 10.0).round() / 10.0, x.private_kib, x.fds));
                    let until = sys::mono_ns() + every.as_nanos() as u64;
                    while !s.load(Ordering::Relaxed) && sys::mono_ns() < until {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                series
            })
        });
        Sampler { stop, handle }
    }

    /// Stops sampling; returns `(seconds, private KiB, descriptors)` per sample.
    pub fn finish(mut self) -> Vec<(f64, u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

/// Where a result came from: the command line, when, and the load average around it.
#[derive(Debug, Serialize, Default)]
pub struct Provenance {
    pub command: String,
    pub unix_time: u64,
    pub load_avg_start: String,
    pub load_avg_end: String,
}

impl Provenance {
    pub fn start() -> Provenance {
        Provenance {
            command: command_line(),
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            load_avg_start: sys::load_avg(),
            load_avg_end: String::new(),
        }
    }

    pub fn end(&mut self) {
        self.load_avg_end = sys::load_avg();
    }
}

/// This process's command line, quoted where a shell would need it.
pub fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A topic of this run's own unless one was given (runs on one server do not mix).
pub fn topic(given: &Option<String>, scenario: &str) -> String {
    given
        .clone()
        .unwrap_or_else(|| format!("{scenario}-{}", std::process::id()))
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("12s").unwrap(), Duration::from_secs(12));
        assert_eq!(parse_duration("2.5").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
