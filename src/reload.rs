//! Configuration reload (protocol 3.3, 5): where the configuration comes from (a file plus the
//! command-line overrides, re-applied on every load), which keys differ between two
//! configurations, which of them can change in a running hub, and the `ssehub reload`
//! client. Pure apart from reading the file; never touches the event loop's sockets.

use crate::config::Config;
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Command-line flags that override the file (they keep overriding it after a reload).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub log_level: Option<String>,
}

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// None: built-in defaults (a reload then has nothing to read).
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
}

impl ConfigSource {
    /// Reads the file (or the defaults) and applies the overrides.
    pub fn load(&self) -> Result<Config, String> {
        let mut config = match &self.path {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let o = &self.overrides;
        if let Some(listen) = o.listen {
            config.http.listen = listen;
        }
        if let Some(socket) = &o.socket {
            config.ingest.socket = socket.clone();
        }
        if let Some(dir) = &o.data_dir {
            config.history.data_dir = dir.clone();
        }
        if let Some(level) = &o.log_level {
            config.log.level = level.clone();
        }
        crate::logger::parse_level(&config.log.level).map_err(|e| format!("log.level: {e}"))?;
        crate::logger::parse_format(&config.log.format).map_err(|e| format!("log.format: {e}"))?;
        Ok(config)
    }
}

/// One configuration key: its name, whether a running hub can take a new value, and its
/// value in a form that compares equal exactly when the values are equal.
struct Key {
    name: &'static str,
    reloadable: bool,
    value: fn(&Config) -> String,
}

macro_rules! key {
    ($name:literal, $reloadable:expr, $($field:ident).+) => {
        Key {
            name: $name,
            reloadable: $reloadable,
            value: |c: &Config| format!("{:?}", c.$($field).+),
        }
    };
}

const RELOAD: bool = true;
const RESTART: bool = false;

/// Every key of protocol 5. Reloadable (protocol 3.3): caps, CORS, auth keys and private patterns,
/// TLS certificates, keepalive/retry/timeouts, log level — plus the per-request limits,
/// which are read afresh for every request or line. The rest (addresses, the socket file,
/// history and its log) needs a restart.
const KEYS: &[Key] = &[
    key!("http.listen", RESTART, http.listen),
    key!("http.admin_listen", RESTART, http.admin_listen),
    key!("http.max_connections", RELOAD, http.max_connections),
    key!("http.max_per_ip", RELOAD, http.max_per_ip),
    key!("http.trusted_proxies", RELOAD, http.trusted_proxies),
    key!("http.overload_as_retry", RELOAD, http.overload_as_retry),
    key!("http.request_timeout", RELOAD, http.request_timeout),
    key!("http.max_header_bytes", RELOAD, http.max_header_bytes),
    key!("http.reuse_port", RESTART, http.reuse_port),
    key!("ingest.socket", RESTART, ingest.socket),
    key!("ingest.mode", RESTART, ingest.mode),
    key!("ingest.group", RESTART, ingest.group),
    key!("ingest.allowed_uids", RELOAD, ingest.allowed_uids),
    key!("ingest.max_event_bytes", RELOAD, ingest.max_event_bytes),
    key!("ingest.max_producers", RELOAD, ingest.max_producers),
    key!("streams.keepalive", RELOAD, streams.keepalive),
    key!("streams.retry_base", RELOAD, streams.retry_base),
    key!("streams.retry_jitter", RELOAD, streams.retry_jitter),
    key!("streams.shutdown_spread", RELOAD, streams.shutdown_spread),
    key!("streams.drain_timeout", RELOAD, streams.drain_timeout),
    key!("streams.max_topics", RELOAD, streams.max_topics),
    key!(
        "streams.max_pending_bytes",
        RELOAD,
        streams.max_pending_bytes
    ),
    key!("streams.write_timeout", RELOAD, streams.write_timeout),
    // Set on sockets accepted after the reload; open streams keep theirs.
    key!("streams.send_buffer", RELOAD, streams.send_buffer),
    key!("history.max_events", RESTART, history.max_events),
    key!("history.max_age", RESTART, history.max_age),
    key!("history.max_bytes", RESTART, history.max_bytes),
    key!("history.data_dir", RESTART, history.data_dir),
    key!("history.durability", RESTART, history.durability),
    key!("history.max_log_bytes", RESTART, history.max_log_bytes),
    key!(
        "history.max_stream_events",
        RESTART,
        history.max_stream_events
    ),
    key!("auth.secret", RELOAD, auth.secret),
    key!("auth.public_key", RELOAD, auth.public_key),
    key!("auth.private", RELOAD, auth.private),
    key!("auth.cookie", RELOAD, auth.cookie),
    key!("auth.leeway", RELOAD, auth.leeway),
    key!("auth.audience", RELOAD, auth.audience),
    key!("auth.issuer", RELOAD, auth.issuer),
    key!("cors.allowed_origins", RELOAD, cors.allowed_origins),
    key!("cors.allow_credentials", RELOAD, cors.allow_credentials),
    key!("log.level", RELOAD, log.level),
    key!("log.format", RELOAD, log.format),
    key!("publish.max_body_bytes", RELOAD, publish.max_body_bytes),
    key!("publish.admin_open", RELOAD, publish.admin_open),
    key!("cluster.redis", RESTART, cluster.redis),
    key!("cluster.key_prefix", RESTART, cluster.key_prefix),
    key!("cluster.min_replicas", RESTART, cluster.min_replicas),
    key!("cluster.replica_timeout", RESTART, cluster.replica_timeout),
    key!("cluster.connect_timeout", RESTART, cluster.connect_timeout),
    key!("cluster.catch_up", RESTART, cluster.catch_up),
    key!("cluster.read_from", RESTART, cluster.read_from),
    key!("cluster.read_linger", RESTART, cluster.read_linger),
    key!("cluster.write_linger", RESTART, cluster.write_linger),
];

/// What a reload found: keys whose value differs, split by whether they took effect.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub changed: Vec<&'static str>,
    pub needs_restart: Vec<&'static str>,
}

/// The keys that differ between `old` and `new`. TLS: new certificate or key files are
/// reloadable; turning TLS on or off changes what the listener speaks and needs a restart.
pub fn diff(old: &Config, new: &Config) -> Diff {
    let mut d = Diff::default();
    for k in KEYS {
        if (k.value)(old) != (k.value)(new) {
            match k.reloadable {
                true => d.changed.push(k.name),
                false => d.needs_restart.push(k.name),
            }
        }
    }
    match (&old.tls, &new.tls) {
        (None, None) => {}
        (Some(a), Some(b)) => {
            if a.cert != b.cert {
                d.changed.push("tls.cert");
            }
            if a.key != b.key {
                d.changed.push("tls.key");
            }
        }
        _ => d.needs_restart.push("tls"),
    }
    d
}

/// The configuration a running hub continues with: `old` with every reloadable value
/// taken from `new`; what needs a restart keeps its old value until then, so the running
/// configuration always describes what is really in force.
pub fn merge(old: &Config, new: &Config) -> Config {
    let mut c = old.clone();
    c.http.max_connections = new.http.max_connections;
    c.http.max_per_ip = new.http.max_per_ip;
    c.http.trusted_proxies = new.http.trusted_proxies.clone();
    c.http.overload_as_retry = new.http.overload_as_retry;
    c.http.request_timeout = new.http.request_timeout;
    c.http.max_header_bytes = new.http.max_header_bytes;
    c.ingest.allowed_uids = new.ingest.allowed_uids.clone();
    c.ingest.max_event_bytes = new.ingest.max_event_bytes;
    c.ingest.max_producers = new.ingest.max_producers;
    c.streams = new.streams.clone();
    c.auth = new.auth.clone();
    c.cors = new.cors.clone();
    c.log = new.log.clone();
    if let (Some(tls), Some(new_tls)) = (&mut c.tls, &new.tls) {
        *tls = new_tls.clone();
    }
    c
}

/// The answer line to `{"admin":"reload"}` (without its newline).
pub fn answer(diff: &Diff) -> String {
    let list = |keys: &[&str]| {
        let quoted: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
        quoted.join(",")
    };
    format!(
        "{{\"ok\":true,\"changed\":[{}],\"needs_restart\":[{}]}}",
        list(&diff.changed),
        list(&diff.needs_restart)
    )
}

/// `ssehub reload`: sends `{"admin":"reload"}` to the ingest socket and returns the answer
/// line. Retries connecting for `wait` (a hub that is just restarting).
pub fn request(socket: &Path, wait: Duration) -> io::Result<String> {
    let deadline = Instant::now() + wait;
    let mut sock = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot connect to {}: {e}", socket.display()),
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    sock.write_all(b"{\"admin\":\"reload\"}\n")?;
    sock.shutdown(std::net::Shutdown::Write)?;
    let mut line = String::new();
    BufReader::new(sock).read_line(&mut line)?;
    if !line.ends_with('\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the hub closed the connection without answering",
        ));
    }
    Ok(line.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    #[test]
    fn every_key_of_the_example_config_is_classified() {
        let example: toml::Table = include_str!("../systemd/ssehub.toml").parse().unwrap();
        let mut names = Vec::new();
        for (section, body) in &example {
            for key in body.as_table().expect("sections only").keys() {
                names.push(format!("{section}.{key}"));
            }
        }
        for name in &names {
            let known = KEYS.iter().any(|k| k.name == name) || name.starts_with("tls.");
            assert!(known, "{name} is not classified as reloadable or not");
        }
        for k in KEYS {
            assert!(
                names.iter().any(|n| n == k.name),
                "{} missing from systemd/ssehub.toml",
                k.name
            );
        }
    }

    /// docs/protocol.md section 5 has one table row per key, saying whether a reload
    /// applies it: the row must exist and agree with `KEYS`.
    #[test]
    fn every_key_is_documented_in_the_protocol_reference() {
        let doc = include_str!("../docs/protocol.md");
        for k in KEYS {
            let row = format!("| `{}` |", k.name);
            let line = doc.lines().find(|l| l.starts_with(&row));
            let line = line.unwrap_or_else(|| panic!("{} missing from docs/protocol.md", k.name));
            let reload = line.split(" | ").nth(2).unwrap_or_default();
            let documented = reload.starts_with("yes");
            assert_eq!(
                documented, k.reloadable,
                "{}: Reload column {reload:?}",
                k.name
            );
        }
    }

    #[test]
    fn reloadable_keys_are_changed_and_taken_over_by_merge() {
        let old = parse("");
        for (name, text) in [
            ("http.max_connections", "[http]\nmax_connections = 10"),
            ("http.max_header_bytes", "[http]\nmax_header_bytes = 4096"),
            ("http.request_timeout", "[http]\nrequest_timeout = \"2s\""),
            ("http.max_per_ip", "[http]\nmax_per_ip = 5"),
            ("streams.keepalive", "[streams]\nkeepalive = \"1s\""),
            ("streams.write_timeout", "[streams]\nwrite_timeout = \"1s\""),
            ("streams.send_buffer", "[streams]\nsend_buffer = 0"),
            ("ingest.max_event_bytes", "[ingest]\nmax_event_bytes = 100"),
            ("ingest.max_producers", "[ingest]\nmax_producers = 3"),
            ("auth.private", "[auth]\nprivate = [\"a:*\"]"),
            ("auth.audience", "[auth]\naudience = \"https://a\""),
            ("auth.issuer", "[auth]\nissuer = \"https://i\""),
            (
                "cors.allowed_origins",
                "[cors]\nallowed_origins = [\"https://x\"]",
            ),
            ("log.level", "[log]\nlevel = \"debug\""),
        ] {
            let new = parse(text);
            let d = diff(&old, &new);
            assert_eq!(d.changed, [name], "{text}");
            assert!(d.needs_restart.is_empty(), "{text}");
            assert_eq!(diff(&merge(&old, &new), &new), Diff::default(), "{text}");
        }
    }

    #[test]
    fn the_rest_needs_a_restart_and_keeps_its_old_value() {
        let old = parse("");
        let new = parse(
            "[http]\nlisten = \"127.0.0.1:9\"\nmax_connections = 3\n\
             [history]\nmax_events = 5\n[tls]\ncert = \"c\"\nkey = \"k\"",
        );
        let d = diff(&old, &new);
        assert_eq!(d.changed, ["http.max_connections"]);
        assert_eq!(
            d.needs_restart,
            ["http.listen", "history.max_events", "tls"]
        );
        let merged = merge(&old, &new);
        assert_eq!(merged.http.listen, old.http.listen);
        assert_eq!(merged.history.max_events, old.history.max_events);
        assert!(merged.tls.is_none());
        assert_eq!(merged.http.max_connections, 3);
    }

    #[test]
    fn new_certificate_paths_are_reloadable() {
        let old = parse("[tls]\ncert = \"a.pem\"\nkey = \"k.pem\"");
        let new = parse("[tls]\ncert = \"b.pem\"\nkey = \"k.pem\"");
        assert_eq!(diff(&old, &new).changed, ["tls.cert"]);
        assert_eq!(merge(&old, &new).tls.unwrap().cert, PathBuf::from("b.pem"));
    }

    #[test]
    fn answer_line() {
        let d = Diff {
            changed: vec!["streams.keepalive"],
            needs_restart: vec![],
        };
        assert_eq!(
            answer(&d),
            r#"{"ok":true,"changed":["streams.keepalive"],"needs_restart":[]}"#
        );
    }

    #[test]
    fn overrides_win_over_the_file_on_every_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[log]\nlevel = \"warn\"\n[http]\nmax_header_bytes = 1000",
        )
        .unwrap();
        let source = ConfigSource {
            path: Some(path),
            overrides: Overrides {
                log_level: Some("debug".into()),
                ..Overrides::default()
            },
        };
        let c = source.load().unwrap();
        assert_eq!(c.log.level, "debug");
        assert_eq!(c.http.max_header_bytes, 1000);
        let bad = ConfigSource {
            overrides: Overrides {
                log_level: Some("loud".into()),
                ..Overrides::default()
            },
            ..ConfigSource::default()
        };
        assert!(bad.load().is_err());
    }
}
