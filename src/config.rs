//! Typed configuration: the TOML keys of protocol 5 with their defaults, durations written as
//! strings ("500ms", "15s", "1h"). Owns parsing and validation only; never opens sockets.

use serde::{Deserialize, Deserializer};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: Http,
    pub tls: Option<Tls>,
    pub ingest: Ingest,
    pub streams: Streams,
    pub history: History,
    pub auth: Auth,
    pub cors: Cors,
    pub log: Log,
    pub cluster: Cluster,
    pub publish: Publish,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http {
    pub listen: SocketAddr,
    /// Empty: /metrics and /healthz are served on `listen`.
    pub admin_listen: String,
    /// 0: derived from RLIMIT_NOFILE, keeping a reserve.
    pub max_connections: usize,
    /// 0: no per-IP cap.
    pub max_per_ip: usize,
    pub trusted_proxies: Vec<IpAddr>,
    pub overload_as_retry: bool,
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    pub max_header_bytes: usize,
    /// `SO_REUSEPORT` on `listen`: several processes share the port (cluster mode, one
    /// process per core).
    pub reuse_port: bool,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: String::new(),
            max_connections: 0,
            max_per_ip: 0,
            trusted_proxies: Vec::new(),
            overload_as_retry: false,
            request_timeout: Duration::from_secs(10),
            max_header_bytes: 8192,
            reuse_port: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ingest {
    pub socket: PathBuf,
    /// File mode of the socket, octal string ("0660").
    #[serde(deserialize_with = "octal_mode")]
    pub mode: u32,
    pub group: String,
    pub allowed_uids: Vec<u32>,
    pub max_event_bytes: usize,
    /// Producers connected at once; 0: derived from RLIMIT_NOFILE (1/16 of it, 1..=256).
    pub max_producers: usize,
}

impl Default for Ingest {
    fn default() -> Self {
        Ingest {
            socket: PathBuf::from("./ssehub.sock"),
            mode: 0o660,
            group: String::new(),
            allowed_uids: Vec::new(),
            max_event_bytes: 65536,
            max_producers: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Streams {
    #[serde(deserialize_with = "duration")]
    pub keepalive: Duration,
    #[serde(deserialize_with = "duration")]
    pub retry_base: Duration,
    #[serde(deserialize_with = "duration")]
    pub retry_jitter: Duration,
    #[serde(deserialize_with = "duration")]
    pub shutdown_spread: Duration,
    #[serde(deserialize_with = "duration")]
    pub drain_timeout: Duration,
    pub max_topics: usize,
    pub max_pending_bytes: usize,
    #[serde(deserialize_with = "duration")]
    pub write_timeout: Duration,
    /// `SO_SNDBUF` of each accepted HTTP socket, in bytes (Linux doubles it); 0: the
    /// kernel's default and autotuning. Bounds what the kernel holds for a stalled stream.
    pub send_buffer: usize,
}

/// `streams.send_buffer` by default: chosen by measurement
/// (bench-results/2026-11-29-stalled-reader.md).
pub const DEFAULT_SEND_BUFFER: usize = 128 * 1024;

/// Above this `streams.send_buffer` is refused (the kernel takes an `int` and doubles it).
pub const MAX_SEND_BUFFER: usize = 1 << 30;

impl Default for Streams {
    fn default() -> Self {
        Streams {
            keepalive: Duration::from_secs(15),
            retry_base: Duration::from_secs(3),
            retry_jitter: Duration::from_secs(2),
            shutdown_spread: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            max_topics: 32,
            max_pending_bytes: 256 * 1024,
            write_timeout: Duration::from_secs(30),
            send_buffer: DEFAULT_SEND_BUFFER,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Os,
    Fsync,
}

impl Durability {
    /// The configuration's spelling (`"os"`, `"fsync"`), for log lines.
    pub fn name(self) -> &'static str {
        match self {
            Durability::Os => "os",
            Durability::Fsync => "fsync",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct History {
    pub max_events: usize,
    #[serde(deserialize_with = "duration")]
    pub max_age: Duration,
    pub max_bytes: usize,
    /// Empty: memory only.
    pub data_dir: PathBuf,
    pub durability: Durability,
    pub max_log_bytes: u64,
    /// Cluster mode: `MAXLEN ~` of the Redis stream (0: only `max_age` bounds it).
    pub max_stream_events: u64,
}

impl Default for History {
    fn default() -> Self {
        History {
            max_events: 1000,
            max_age: Duration::from_secs(3600),
            max_bytes: 256 * 1024 * 1024,
            data_dir: PathBuf::new(),
            durability: Durability::Os,
            max_log_bytes: 0,
            max_stream_events: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    pub secret: String,
    pub public_key: String,
    pub private: Vec<String>,
    pub cookie: String,
    #[serde(deserialize_with = "duration")]
    pub leeway: Duration,
    /// When not empty, a token's `aud` (a string, or an array) must hold this value.
    pub audience: String,
    /// When not empty, a token's `iss` must be this value.
    pub issuer: String,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            secret: String::new(),
            public_key: String::new(),
            private: Vec::new(),
            cookie: "ssehub_token".into(),
            leeway: Duration::from_secs(30),
            audience: String::new(),
            issuer: String::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cors {
    pub allowed_origins: Vec<String>,
    pub allow_credentials: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    pub level: String,
    /// `"text"` or `"json"` (one object per line).
    pub format: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// `[publish]` (protocol 3.4): `POST /publish` over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Publish {
    /// Largest request body (after chunked decoding); a larger one is `413`.
    pub max_body_bytes: usize,
    /// The admin listener takes publishes without a token (a trusted network).
    pub admin_open: bool,
}

impl Default for Publish {
    fn default() -> Self {
        Publish {
            max_body_bytes: 1024 * 1024,
            admin_open: false,
        }
    }
}

/// `[cluster]` (protocol 7): several processes share one event stream in Redis. Changing any
/// of it needs a restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// `redis://host:port/db`, `rediss://…` or `redis+unix:///path`; empty: single node.
    pub redis: String,
    pub key_prefix: String,
    /// Replicas that must hold an event (`WAIT`) before its `ok`; 0: no `WAIT`.
    pub min_replicas: u32,
    #[serde(deserialize_with = "duration")]
    pub replica_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// How long a resume from an id above this node's last id waits for the reader.
    #[serde(deserialize_with = "duration")]
    pub catch_up: Duration,
    /// Replicas to read the stream from (the nearest first); writes go to `redis`, and
    /// reads fall back to it when no replica is in sync.
    pub read_from: Vec<String>,
    /// After a read that carried entries, wait this long before the next (0 to 1 ms).
    #[serde(deserialize_with = "duration")]
    pub read_linger: Duration,
    /// The writer waits this long after a publish for more to join its call (0 to 1 ms).
    #[serde(deserialize_with = "duration")]
    pub write_linger: Duration,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            redis: String::new(),
            key_prefix: "ssehub".into(),
            min_replicas: 0,
            replica_timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(2),
            catch_up: Duration::from_secs(1),
            read_from: Vec::new(),
            read_linger: Duration::ZERO,
            write_linger: Duration::ZERO,
        }
    }
}

impl Cluster {
    pub fn enabled(&self) -> bool {
        !self.redis.is_empty()
    }
}

/// The largest `publish.max_body_bytes`: a body is held whole until it is published.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

impl Config {
    /// Reads and validates a TOML file; the error names the file and the problem.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Cross-field checks that serde cannot express.
    pub fn validate(&self) -> Result<(), String> {
        let s = &self.streams;
        if s.keepalive.is_zero() {
            return Err("streams.keepalive must be above 0".into());
        }
        if s.max_topics == 0 {
            return Err("streams.max_topics must be at least 1".into());
        }
        if s.max_pending_bytes == 0 {
            return Err("streams.max_pending_bytes must be above 0".into());
        }
        if s.send_buffer > MAX_SEND_BUFFER {
            return Err(format!(
                "streams.send_buffer must be 0 (the kernel's default) or at most {MAX_SEND_BUFFER}"
            ));
        }
        if self.http.max_header_bytes < 256 {
            return Err("http.max_header_bytes must be at least 256".into());
        }
        if self.publish.max_body_bytes == 0 || self.publish.max_body_bytes > MAX_BODY_BYTES {
            return Err(format!(
                "publish.max_body_bytes must be 1 to {MAX_BODY_BYTES} (64 MiB)"
            ));
        }
        if self.ingest.max_event_bytes == 0 {
            return Err("ingest.max_event_bytes must be above 0".into());
        }
        if self.history.max_events == 0 {
            return Err("history.max_events must be at least 1".into());
        }
        if self.ingest.socket.as_os_str().is_empty() {
            return Err("ingest.socket must name a path".into());
        }
        let c = &self.cluster;
        if c.enabled() {
            if !self.history.data_dir.as_os_str().is_empty() {
                return Err(
                    "history.data_dir cannot be used with cluster.redis: in cluster \
                     mode Redis is the event log (one durable store, not two)"
                        .into(),
                );
            }
            let is_redis_url = |url: &str| {
                let scheme = url.split("://").next().unwrap_or_default();
                url.contains("://") && matches!(scheme, "redis" | "rediss" | "redis+unix" | "unix")
            };
            for (key, url) in std::iter::once(("cluster.redis", &c.redis))
                .chain(c.read_from.iter().map(|u| ("cluster.read_from", u)))
            {
                if !is_redis_url(url) {
                    return Err(format!(
                        "{key} {url:?} must be a redis://host:port/db, rediss://… or \
                         redis+unix:///path URL"
                    ));
                }
            }
            for (key, linger) in [
                ("cluster.read_linger", c.read_linger),
                ("cluster.write_linger", c.write_linger),
            ] {
                if linger > Duration::from_millis(1) {
                    return Err(format!("{key} must be at most 1ms (e.g. \"500us\")"));
                }
            }
            if c.key_prefix.is_empty() || c.key_prefix.contains(['{', '}', ' ']) {
                return Err(
                    "cluster.key_prefix must be non-empty, without braces or spaces".into(),
                );
            }
            if c.connect_timeout.is_zero() {
                return Err("cluster.connect_timeout must be above 0".into());
            }
        }
        Ok(())
    }
}

/// Parses "500us", "250ms", "15s", "2m", "1h", "1d" (one unit, whole numbers).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {text:?} needs a unit (us, ms, s, m, h, d)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("duration {text:?} must start with a whole number"))?;
    let us_per_unit = match unit {
        "us" => 1,
        "ms" => 1000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => {
            return Err(format!(
                "duration {text:?}: unknown unit {unit:?} (us, ms, s, m, h, d)"
            ));
        }
    };
    n.checked_mul(us_per_unit)
        .map(Duration::from_micros)
        .ok_or_else(|| format!("duration {text:?} is too long"))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn octal_mode<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let text = String::deserialize(d)?;
    match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(serde::de::Error::custom(format!(
            "mode {text:?} must be an octal file mode like \"0660\""
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.http.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.ingest.socket, PathBuf::from("./ssehub.sock"));
        assert_eq!(c.ingest.mode, 0o660);
        assert_eq!(c.streams.keepalive, Duration::from_secs(15));
        assert_eq!(c.streams.max_pending_bytes, 262144);
        assert_eq!(c.streams.send_buffer, DEFAULT_SEND_BUFFER);
        assert_eq!(c.history.max_events, 1000);
        assert_eq!(c.history.durability, Durability::Os);
        assert!(c.tls.is_none());
    }

    #[test]
    fn reads_every_section() {
        let c = Config::parse(
            r#"
            [http]
            listen = "127.0.0.1:0"
            request_timeout = "500ms"
            [ingest]
            socket = "/tmp/x.sock"
            mode = "0600"
            [streams]
            keepalive = "2s"
            write_timeout = "1m"
            [history]
            max_age = "1h"
            durability = "fsync"
            [tls]
            cert = "c.pem"
            key = "k.pem"
            "#,
        )
        .unwrap();
        assert_eq!(c.http.request_timeout, Duration::from_millis(500));
        assert_eq!(c.ingest.mode, 0o600);
        assert_eq!(c.streams.keepalive, Duration::from_secs(2));
        assert_eq!(c.streams.write_timeout, Duration::from_secs(60));
        assert_eq!(c.history.durability, Durability::Fsync);
        assert_eq!(c.tls.unwrap().cert, PathBuf::from("c.pem"));
    }

    #[test]
    fn refuses_typos_and_bad_values() {
        assert!(Config::parse("[streams]\nkeepalve = \"1s\"").is_err());
        assert!(Config::parse("[streams]\nkeepalive = \"1\"").is_err());
        assert!(Config::parse("[streams]\nkeepalive = \"0s\"").is_err());
        assert!(Config::parse("[ingest]\nmode = \"0999\"").is_err());
        assert!(Config::parse("[history]\ndurability = \"maybe\"").is_err());
        assert!(Config::parse("[streams]\nsend_buffer = -1").is_err());
        let huge = Config::parse("[streams]\nsend_buffer = 2147483648").unwrap_err();
        assert!(huge.contains("streams.send_buffer must be 0"), "{huge}");
        assert_eq!(
            Config::parse("[streams]\nsend_buffer = 0")
                .unwrap()
                .streams
                .send_buffer,
            0
        );
    }

    #[test]
    fn cluster_reads_from_replicas_with_an_optional_linger() {
        let c = Config::parse(
            "[cluster]\nredis = \"redis://p:6379/0\"\n\
             read_from = [\"redis://r1:6379/0\", \"rediss://r2/\"]\nread_linger = \"500us\"\n\
             write_linger = \"1ms\"",
        )
        .unwrap();
        assert_eq!(c.cluster.write_linger, Duration::from_millis(1));
        assert_eq!(c.cluster.read_from, ["redis://r1:6379/0", "rediss://r2/"]);
        assert_eq!(c.cluster.read_linger, Duration::from_micros(500));
        assert_eq!(
            Config::parse("").unwrap().cluster.read_linger,
            Duration::ZERO
        );
        let bad = Config::parse("[cluster]\nredis = \"redis://p/\"\nread_from = [\"r1:6379\"]")
            .unwrap_err();
        assert!(
            bad.contains("cluster.read_from \"r1:6379\" must be"),
            "{bad}"
        );
        let long =
            Config::parse("[cluster]\nredis = \"redis://p/\"\nread_linger = \"2ms\"").unwrap_err();
        assert!(long.contains("read_linger must be at most 1ms"), "{long}");
        let long = Config::parse("[cluster]\nredis = \"redis://p/\"\nwrite_linger = \"1001us\"")
            .unwrap_err();
        assert!(long.contains("write_linger must be at most 1ms"), "{long}");
    }

    #[test]
    fn cluster_section() {
        let c = Config::parse("").unwrap();
        assert!(!c.cluster.enabled());
        assert_eq!(c.cluster.key_prefix, "ssehub");
        assert_eq!(c.cluster.catch_up, Duration::from_secs(1));
        assert!(!c.http.reuse_port);
        let c = Config::parse(
            "[cluster]\nredis = \"redis://127.0.0.1:6379/0\"\nmin_replicas = 1\n\
             replica_timeout = \"250ms\"\n[http]\nreuse_port = true\n\
             [history]\nmax_stream_events = 5000",
        )
        .unwrap();
        assert!(c.cluster.enabled());
        assert_eq!(c.cluster.min_replicas, 1);
        assert_eq!(c.cluster.replica_timeout, Duration::from_millis(250));
        assert_eq!(c.history.max_stream_events, 5000);
        assert!(c.http.reuse_port);
        let both = Config::parse(
            "[cluster]\nredis = \"redis+unix:///tmp/r.sock\"\n[history]\ndata_dir = \"/x\"",
        );
        assert!(
            both.unwrap_err()
                .contains("history.data_dir cannot be used")
        );
        let bad = Config::parse("[cluster]\nredis = \"localhost:6379\"");
        assert!(bad.unwrap_err().contains("must be a redis://"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }
}
