//! Operations side of the event loop: systemd notifications and the watchdog, `/metrics`
//! and the admin listener, configuration reload. A child of `event_loop` (so it may use
//! the server's fields) that keeps the loop's own file about the data path. Nothing here
//! blocks: notifications are non-blocking datagrams; a reload reads one small file.

use super::{Due, Server, recheck};
use crate::auth::Auth;
use crate::config::Config;
use crate::conn::tls;
use crate::conn::{ConnState, flags};
use crate::due::OpsTimer;
use crate::metrics::{self, Snapshot};
use crate::notify::Notifier;
use crate::reload::{self, ConfigSource, Diff};
use crate::sse;
use crate::timer::Millis;
use log::{debug, error, info, warn};
use mio::Token;
use mio::net::TcpListener;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The admin listener (`http.admin_listen`): `/metrics` and `/healthz` only.
pub(super) const ADMIN_LISTENER: Token = Token(usize::MAX - 4);
/// How often `STATUS=` is refreshed (sent only when it changed).
const STATUS_EVERY_MS: Millis = 2_000;
/// Latency quantiles cover one to two of these windows.
const LATENCY_WINDOW_MS: Millis = 60_000;
/// Admin connections allowed beyond `max_connections` (the descriptor reserve covers them),
/// so metrics stay readable when the public side is full.
const ADMIN_EXTRA: usize = 16;

/// Operations state of the server.
pub(super) struct Ops {
    notifier: Option<Notifier>,
    /// Half of `WATCHDOG_USEC`: how often `WATCHDOG=1` is sent.
    watchdog: Option<Millis>,
    /// Where the configuration was read from, for reloads (None: no reload possible).
    source: Option<ConfigSource>,
    /// A reload answered but not applied yet: the configuration to continue with, and a
    /// TLS configuration built from certificate files that changed.
    pending: Option<(Config, Diff, Option<Arc<rustls::ServerConfig>>)>,
    /// The bytes of the certificate and key files in force (TLS on), so that a reload
    /// can tell renewed files at the same paths from unchanged ones.
    tls_files: Option<Vec<u8>>,
    /// The bytes of the `auth.public_key` file in force, so that a key rotated in place
    /// (same path) counts as a changed `auth.public_key` and open streams are re-checked.
    auth_key_file: Option<Vec<u8>>,
    pub(super) admin: Option<TcpListener>,
    /// An admin listener was configured (it is closed during the drain).
    pub(super) admin_configured: bool,
    /// The ingest socket file is ours to remove at exit (false when systemd passed it in).
    pub(super) owns_ingest_file: bool,
    reloads_ok: u64,
    reloads_failed: u64,
    start_unix_s: f64,
}

impl Ops {
    pub(super) fn new(admin: Option<TcpListener>, owns_ingest_file: bool) -> Ops {
        Ops {
            notifier: None,
            watchdog: None,
            source: None,
            pending: None,
            tls_files: None,
            auth_key_file: None,
            admin_configured: admin.is_some(),
            admin,
            owns_ingest_file,
            reloads_ok: 0,
            reloads_failed: 0,
            start_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }

    /// `{"admin":"reload"}` from a producer: reads the configuration again and answers at
    /// once with what differs; the loop applies it (`apply_reload`) before it handles any
    /// line after the reload (`read_producer`). Err is the reason for an
    /// `{"ok":false,...}` answer.
    pub(super) fn request_reload(&mut self, running: &Config) -> Result<String, String> {
        let Some(source) = &self.source else {
            return Err("cannot reload: no configuration source".into());
        };
        let Some(path) = &source.path else {
            self.reloads_failed += 1;
            return Err("cannot reload: started without --config".into());
        };
        let new = match source.load() {
            Ok(c) => c,
            Err(e) => {
                self.reloads_failed += 1;
                error!("reload failed, configuration unchanged: {e}");
                return Err(format!("reload failed: {e}"));
            }
        };
        // Keys and patterns are checked (and a public key file read) before saying ok.
        if let Err(e) = crate::auth::Auth::from_config(&new.auth) {
            self.reloads_failed += 1;
            error!("reload failed, configuration unchanged: {e}");
            return Err(format!("reload failed: {e}"));
        }
        // Two reloads in one read: the second compares with what the first will apply.
        let base = self.pending.as_ref().map_or(running, |(c, _, _)| c);
        let mut diff = reload::diff(base, &new);
        let merged = reload::merge(base, &new);
        // TLS stays on: certificate files renewed in place count as changed too.
        let mut tls_config = self.pending.as_ref().and_then(|(_, _, t)| t.clone());
        if let (Some(_), Some(t)) = (&base.tls, &new.tls) {
            let files = match tls_file_bytes(&t.cert, &t.key) {
                Ok(f) => f,
                Err(e) => {
                    self.reloads_failed += 1;
                    error!("reload failed, configuration unchanged: {e}");
                    return Err(format!("reload failed: {e}"));
                }
            };
            if self.tls_files.as_ref() != Some(&files) {
                match tls::server_config(&t.cert, &t.key) {
                    Ok(c) => tls_config = Some(c),
                    Err(e) => {
                        self.reloads_failed += 1;
                        error!("reload failed, configuration unchanged: {e}");
                        return Err(format!("reload failed: {e}"));
                    }
                }
                for key in ["tls.cert", "tls.key"] {
                    if !diff.changed.contains(&key) {
                        diff.changed.push(key);
                    }
                }
                self.tls_files = Some(files);
            }
        }
        // The public key file too: a key rotated at the same path is a key change.
        let key_file = match new.auth.public_key.as_str() {
            "" => None,
            path => match std::fs::read(path) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    self.reloads_failed += 1;
                    error!("reload failed, configuration unchanged: auth.public_key {path}: {e}");
                    return Err(format!("reload failed: auth.public_key {path}: {e}"));
                }
            },
        };
        if key_file.is_some()
            && key_file != self.auth_key_file
            && !diff.changed.contains(&"auth.public_key")
        {
            diff.changed.push("auth.public_key");
        }
        self.auth_key_file = key_file;
        debug!(
            "reload requested file={} changed={:?} needs_restart={:?}",
            path.display(),
            diff.changed,
            diff.needs_restart
        );
        let answer = reload::answer(&diff);
        // What is applied is everything since the running configuration: a second reload
        // in the same turn must not drop the first one's changed keys (its new auth keys
        // would never be loaded, nor open streams re-checked).
        if let Some((_, first, _)) = self.pending.take() {
            for (all, more) in [
                (&mut diff.changed, first.changed),
                (&mut diff.needs_restart, first.needs_restart),
            ] {
                for key in more {
                    if !all.contains(&key) {
                        all.push(key);
                    }
                }
            }
        }
        self.pending = Some((merged, diff, tls_config));
        self.reloads_ok += 1;
        Ok(answer)
    }
}

/// Binds `http.admin_listen` (or takes the socket systemd passed for it).
pub(super) fn admin_listener(
    config: &Config,
    passed: Option<std::net::TcpListener>,
) -> io::Result<Option<TcpListener>> {
    if let Some(l) = passed {
        return Ok(Some(TcpListener::from_std(l)));
    }
    if config.http.admin_listen.is_empty() {
        return Ok(None);
    }
    let addr = config.http.admin_listen.parse().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("http.admin_listen {:?}: {e}", config.http.admin_listen),
        )
    })?;
    super::accept::bind_http(addr, false)
        .map(Some)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("http.admin_listen {}: {e}", config.http.admin_listen),
            )
        })
}

impl Server {
    /// Talk to systemd: `notifier` from `NOTIFY_SOCKET`, `watchdog` from `WATCHDOG_USEC`.
    pub fn set_systemd(&mut self, notifier: Option<Notifier>, watchdog: Option<Duration>) {
        self.ops.notifier = notifier;
        self.ops.watchdog = watchdog.map(|d| (d.as_millis() as Millis).max(1));
    }

    /// Where `{"admin":"reload"}` reads the configuration from.
    pub fn set_config_source(&mut self, source: ConfigSource) {
        self.ops.source = Some(source);
        if let Some(t) = &self.config.tls {
            self.ops.tls_files = tls_file_bytes(&t.cert, &t.key).ok();
        }
        if !self.config.auth.public_key.is_empty() {
            self.ops.auth_key_file = std::fs::read(&self.config.auth.public_key).ok();
        }
    }

    /// The admin listener's address, when there is one.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.ops.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The loop is about to serve: tell systemd, start the periodic timers.
    pub(super) fn ops_ready(&mut self) {
        self.stats.latency.set_origin(self.started);
        self.stats
            .latency
            .set_horizon(self.config.streams.write_timeout);
        let status = self.status_line();
        if let Some(n) = &mut self.ops.notifier {
            n.ready(&status);
            self.wheel
                .insert(self.now + STATUS_EVERY_MS, Due::Ops(OpsTimer::Status));
        }
        if self.ops.notifier.is_some()
            && let Some(every) = self.ops.watchdog
        {
            if let Some(n) = &self.ops.notifier {
                n.watchdog();
            }
            self.wheel
                .insert(self.now + every, Due::Ops(OpsTimer::Watchdog));
        }
        self.wheel.insert(
            self.now + LATENCY_WINDOW_MS,
            Due::Ops(OpsTimer::RotateLatency),
        );
    }

    pub(super) fn ops_timer(&mut self, timer: OpsTimer) {
        match timer {
            OpsTimer::Watchdog => {
                // Sent from the loop itself: a stuck loop stops sending and systemd restarts it.
                if let (Some(n), Some(every)) = (&self.ops.notifier, self.ops.watchdog) {
                    n.watchdog();
                    self.wheel
                        .insert(self.now + every, Due::Ops(OpsTimer::Watchdog));
                }
            }
            OpsTimer::Status => {
                if self.draining_until.is_none() {
                    let status = self.status_line();
                    if let Some(n) = &mut self.ops.notifier {
                        n.status(&status);
                    }
                    self.wheel
                        .insert(self.now + STATUS_EVERY_MS, Due::Ops(OpsTimer::Status));
                }
            }
            OpsTimer::RotateLatency => {
                self.stats.latency.rotate();
                self.wheel.insert(
                    self.now + LATENCY_WINDOW_MS,
                    Due::Ops(OpsTimer::RotateLatency),
                );
            }
        }
    }

    /// The drain begins: `STOPPING=1`; the admin listener closes with the others.
    pub(super) fn ops_stopping(&mut self) {
        let status = format!("stopping: draining {} streams", self.streams_open());
        if let Some(n) = &mut self.ops.notifier {
            n.stopping(&status);
        }
        // The admin listener stays open through the drain: `/readyz` answers `503
        // draining` (a balancer's health check sees why), `/metrics` goes on, and every
        // answer closes its connection (`route::Ctx::draining`).
    }

    fn streams_open(&self) -> usize {
        self.streams
            .iter()
            .filter(|(_, c)| c.is_streaming())
            .count()
    }

    fn status_line(&self) -> String {
        let redis = match self.commit.link() {
            None => "",
            Some(link) if link.is_up() => "redis up; ",
            Some(_) => "redis DOWN (publishes refused, streams kept open); ",
        };
        format!(
            "{redis}{} streams, {} connections, {} producers; {} events published, {} delivered",
            self.streams_open(),
            self.streams.len(),
            self.producers.len(),
            self.stats.events_published,
            self.stats.deliveries,
        )
    }

    /// Cluster mode: Redis came up or went down; `STATUS=` says so at once.
    pub(super) fn ops_status_changed(&mut self) {
        if self.draining_until.is_none() {
            let status = self.status_line();
            if let Some(n) = &mut self.ops.notifier {
                n.status(&status);
            }
        }
    }

    // ---- reload ------------------------------------------------------------------------

    /// Applies a reload just answered (the lines after it wait: `read_producer`): the new
    /// values take effect for everything that happens from now on; streams stay open,
    /// except those that a changed auth or CORS policy no longer allows
    /// (`recheck_streams`), which get no event published after the reload.
    /// SIGHUP: the reload `{"admin":"reload"}` does, its answer logged. Without a
    /// configuration file there is nothing to reload: said, and the hub keeps running.
    pub(super) fn reload_on_signal(&mut self) {
        if self.draining_until.is_some() {
            return info!("SIGHUP while stopping: no reload");
        }
        match self.ops.request_reload(&self.config) {
            Ok(answer) => {
                info!("reload (SIGHUP): {answer}");
                self.apply_reload();
            }
            Err(reason) => warn!("reload (SIGHUP): {reason}"),
        }
    }

    pub(super) fn apply_reload(&mut self) {
        let Some((config, diff, tls_config)) = self.ops.pending.take() else {
            return;
        };
        if let Some(tls_config) = tls_config {
            // New connections handshake with the new certificate; open ones keep theirs.
            self.tls_config = Some(tls_config);
        }
        let old_keepalive = self.config.streams.keepalive;
        self.config = config;
        self.stats
            .latency
            .set_horizon(self.config.streams.write_timeout);
        if diff
            .changed
            .iter()
            .any(|k| matches!(*k, "http.max_connections" | "ingest.max_producers"))
        {
            (self.max_connections, self.max_producers) =
                super::accept::descriptor_caps(&self.config);
        }
        if diff.changed.contains(&"log.level") {
            set_log_level(&self.config.log.level);
        }
        if diff.changed.contains(&"log.format") {
            crate::logger::set_format(&self.config.log.format);
        }
        let mut old_auth = None;
        if diff.changed.iter().any(|k| k.starts_with("auth.")) {
            // Checked when the reload was answered; a key file that vanished since keeps
            // the old policy (and says so).
            match crate::auth::Auth::from_config(&self.config.auth) {
                Ok(auth) => old_auth = Some(std::mem::replace(&mut self.auth, auth)),
                Err(e) => error!("reload: auth keeps its previous keys: {e}"),
            }
        }
        let cors_changed = diff.changed.iter().any(|k| k.starts_with("cors."));
        if cors_changed {
            let c = &self.config.cors;
            self.cors = crate::http::cors::Cors::new(&c.allowed_origins, c.allow_credentials);
        }
        if old_auth.is_some() || cors_changed {
            let key_changed = old_auth.is_some() && recheck::key_changed(&diff.changed);
            self.recheck_streams(old_auth.as_ref(), key_changed);
        }
        let http = &self.config.http;
        self.per_client
            .reconfigure(http.max_per_ip, &http.trusted_proxies);
        if self.config.streams.keepalive < old_keepalive {
            let keepalive = self.config.streams.keepalive.as_millis() as Millis;
            self.streams
                .pull_keepalives_forward(keepalive, &mut self.wheel, self.now);
        }
        info!(
            "config reloaded changed={:?} needs_restart={:?} max_connections={}",
            diff.changed, diff.needs_restart, self.max_connections
        );
        if !diff.needs_restart.is_empty() {
            warn!(
                "config keys need a restart to take effect: {:?}",
                diff.needs_restart
            );
        }
        let status = self.status_line();
        if let Some(n) = &mut self.ops.notifier {
            n.status(&format!("reloaded; {status}"));
        }
    }

    /// Re-checks every open stream against the policy now in force (`old_auth`: the one
    /// replaced, None when auth did not change): ends those no longer allowed with a fresh
    /// jittered `retry:` (so a client with a new token comes back), moves token deadlines
    /// by a changed `auth.leeway`, and logs one line when any stream was ended.
    fn recheck_streams(&mut self, old_auth: Option<&Auth>, key_changed: bool) {
        let change = recheck::Change {
            old_auth: old_auth.unwrap_or(&self.auth),
            new_auth: &self.auth,
            new_cors: &self.cors,
            key_changed,
        };
        let mut decided = Vec::new();
        for (key, conn) in self.streams.iter() {
            let ConnState::Streaming { topics } = &conn.state else {
                continue;
            };
            if conn.has(flags::CLOSING | flags::CLOSE_AFTER_FLUSH) {
                continue; // already ending
            }
            let kept = recheck::Kept {
                topics: topics.iter().map(|&t| self.hub.topic_name(t)),
                token_deadline: self.streams.token_deadline(key),
                origin: self.streams.origin_hash(key),
            };
            match recheck::recheck(&change, kept, self.now) {
                recheck::Outcome::Keep => {}
                outcome => decided.push((key, outcome)),
            }
        }
        let (mut origin, mut token_key, mut now_private, mut expired) = (0, 0, 0, 0);
        let base = self.config.streams.retry_base.as_millis() as u64;
        let jitter = self.config.streams.retry_jitter.as_millis() as u64;
        for (key, outcome) in decided {
            match outcome {
                recheck::Outcome::Keep => {}
                recheck::Outcome::NewDeadline(deadline) => {
                    self.streams.set_token_deadline(key, deadline);
                    // A later deadline is seen when the current timer fires.
                    self.streams
                        .arm_no_later_than(key, deadline, &mut self.wheel);
                }
                recheck::Outcome::Expired => {
                    expired += 1;
                    self.streams.close(key);
                }
                recheck::Outcome::End(rule) => {
                    match rule {
                        recheck::Rule::Origin => origin += 1,
                        recheck::Rule::TokenKey => token_key += 1,
                        recheck::Rule::NowPrivate => now_private += 1,
                    }
                    let retry = sse::retry(base + self.rng.below(jitter + 1));
                    self.streams.end_stream_with(key, retry, self.now);
                }
            }
        }
        if origin + token_key + now_private + expired > 0 {
            info!(
                "reload ended streams no longer allowed: origin_refused={origin} \
                 token_key_changed={token_key} topic_now_private={now_private} \
                 token_expired={expired}"
            );
        }
    }

    // ---- admin listener and /metrics ---------------------------------------------------

    pub(super) fn accept_admin(&mut self) {
        loop {
            let Some(listener) = &self.ops.admin else {
                return;
            };
            let mut sock = match listener.accept() {
                Ok((sock, _)) => sock,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("admin accept failed: {e}");
                    return;
                }
            };
            self.stats.accepted += 1;
            if self.streams.len() >= self.max_connections + ADMIN_EXTRA {
                continue;
            }
            super::accept::tune_stream_socket(&sock, &self.config.streams);
            if !self.register_next(&mut sock) {
                continue;
            }
            let deadline = self.now + self.request_timeout();
            self.streams
                .insert(sock, self.now, flags::ADMIN, deadline, &mut self.wheel);
        }
    }

    /// The `/metrics` body.
    pub(super) fn render_metrics(&self) -> String {
        let mut s = Snapshot {
            producers: self.producers.len() as u64,
            topics: self.hub.topic_count() as u64,
            max_connections: self.max_connections as u64,
            accepted: self.stats.accepted,
            streams_opened: self.stats.streams_opened,
            events_published: self.stats.events_published,
            events_delivered: self.stats.deliveries,
            events_replayed: self.stats.events_replayed,
            bytes_written: self.stats.bytes_written,
            writes: self.stats.writes,
            slow_disconnects: self.stats.slow_disconnects,
            ingest_errors: self.stats.ingest_errors,
            history_events: self.hub.retained_events() as u64,
            history_bytes: self.hub.retained_bytes() as u64,
            subscribed_topic_bytes: self.hub.subscribed_topic_bytes() as u64,
            reloads_ok: self.ops.reloads_ok,
            reloads_failed: self.ops.reloads_failed,
            start_time_unix_s: self.ops.start_unix_s,
            redis: self
                .commit
                .link()
                .map(|l| (l.is_up(), l.errors_total(), l.reads_from_replica())),
            heap_trims: self.stats.heap_trims,
            heap_trim_ns: self.stats.heap_trim_ns,
            publishes: self.stats.publishes.clone(),
            ..Snapshot::default()
        };
        for (_, conn) in self.streams.iter() {
            match conn.state {
                ConnState::Streaming { .. } => s.conns_streaming += 1,
                ConnState::Lingering => s.conns_lingering += 1,
                ConnState::Reading { .. } => s.conns_reading += 1,
                ConnState::Publishing(_) => s.conns_publishing += 1,
            }
        }
        metrics::render(&s, &self.stats.rejected, &self.stats.latency)
    }
}

/// The certificate and key files' bytes, to notice renewed files at unchanged paths.
fn tls_file_bytes(cert: &Path, key: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = std::fs::read(cert).map_err(|e| format!("tls.cert {}: {e}", cert.display()))?;
    bytes.extend(std::fs::read(key).map_err(|e| format!("tls.key {}: {e}", key.display()))?);
    Ok(bytes)
}

/// The configured level, unless `RUST_LOG` (which wins, as at start) names one.
fn set_log_level(level: &str) {
    if std::env::var("RUST_LOG")
        .ok()
        .is_some_and(|v| crate::logger::parse_level(&v).is_ok())
    {
        return;
    }
    if let Ok(level) = crate::logger::parse_level(level) {
        log::set_max_level(level);
    }
}
