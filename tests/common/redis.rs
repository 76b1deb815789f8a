//! Real Redis for the cluster tests: `redis-server` (the Debian package) started on a free
//! loopback port with persistence off and stopped by pid; `redis-cli` for commands; a TCP
//! forwarder between the nodes and Redis that a test can retarget (failover), cut, refuse
//! or make swallow replies (a lost answer). Nothing is mocked: the nodes talk RESP to a
//! real server through real sockets.
#![allow(dead_code)]

use super::{Client, Server, wait_for};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A `redis-server` child on 127.0.0.1:`port`; killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
    /// Its working directory: a replica writes the RDB of its full sync there, and any
    /// Redis loads `dump.rdb` from it at start; never the test's own directory.
    dir: tempfile::TempDir,
    /// Extra environment of the `redis-server` process (e.g. `LD_PRELOAD` of a clock shim).
    env: Vec<(String, String)>,
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Redis {
    /// Starts an empty Redis (no RDB, no AOF) with `extra` config arguments
    /// (`["--replicaof", "127.0.0.1", "6379"]`).
    pub fn start(extra: &[&str]) -> Redis {
        Redis::start_with_env(extra, &[])
    }

    /// `start` with extra environment variables for the `redis-server` process (kept for
    /// `restart`), e.g. `[("LD_PRELOAD", shim), ("SHIM_OFFSET_US", "-30000000")]`.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Redis {
        let mut r = Redis {
            port: free_port(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir: tempfile::tempdir().expect("temp dir"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        r.restart();
        r
    }

    /// Starts (again) on the same port: an empty Redis, as after a restart without
    /// persistence.
    pub fn restart(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.dir.path().join("dump.rdb"));
        let child = Command::new("redis-server")
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            // Small stream nodes, so that `MAXLEN ~` and `MINID ~` trims take effect
            // after a few entries instead of a hundred.
            .args(["--stream-node-max-entries", "4"])
            // A replica's first sync starts at once, not after the default 5 s.
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--loglevel", "warning"])
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        self.child = Some(child);
        assert!(
            wait_for(Duration::from_secs(10), || self.cli(&["PING"]) == "PONG"),
            "redis-server on port {} did not answer PING",
            self.port
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL: gone at once, nothing saved.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Runs one command with `redis-cli`; its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Number of entries in the stream of key prefix `prefix`.
    pub fn stream_len(&self, prefix: &str) -> u64 {
        self.cli(&["XLEN", &format!("{prefix}:{{ev}}")])
            .parse()
            .unwrap_or(0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a `Forwarder` does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Both directions forwarded.
    Pass,
    /// New connections are accepted and closed at once; open ones are cut.
    Refuse,
    /// Requests reach Redis; its replies are dropped (a lost answer).
    SwallowReplies,
}

/// A TCP forwarder 127.0.0.1:`port` → 127.0.0.1:`target`, on threads.
pub struct Forwarder {
    pub port: u16,
    target: Arc<AtomicU16>,
    mode: Arc<Mutex<Mode>>,
    /// Bumped by `cut`: pumps of older connections stop.
    generation: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    pub fn start(target: u16) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind forwarder");
        let port = listener.local_addr().expect("addr").port();
        let f = Forwarder {
            port,
            target: Arc::new(AtomicU16::new(target)),
            mode: Arc::new(Mutex::new(Mode::Pass)),
            generation: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (target, mode, generation, stop) = (
            f.target.clone(),
            f.mode.clone(),
            f.generation.clone(),
            f.stop.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if *mode.lock().unwrap() == Mode::Refuse {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let port = target.load(Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let gen_now = generation.load(Ordering::SeqCst);
                let pairs = [
                    (client.try_clone(), server.try_clone(), false),
                    (server.try_clone(), client.try_clone(), true),
                ];
                for (from, to, is_reply) in pairs {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let (mode, generation) = (mode.clone(), generation.clone());
                    std::thread::spawn(move || {
                        pump(from, to, is_reply, &mode, &generation, gen_now);
                    });
                }
            }
        });
        f
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
        if mode == Mode::Refuse {
            self.cut();
        }
    }

    /// Closes every open connection (the nodes see their connections drop).
    pub fn cut(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// New connections go to `port` from now on (a failover behind a fixed address).
    pub fn retarget(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    is_reply: bool,
    mode: &Mutex<Mode>,
    generation: &std::sync::atomic::AtomicU64,
    born: u64,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 16384];
    loop {
        if generation.load(Ordering::SeqCst) != born {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if is_reply && *mode.lock().unwrap() == Mode::SwallowReplies {
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Waits up to 15 s for a replica's link to its primary to be up (its first sync done).
pub fn wait_synced(replica: &Redis) {
    assert!(
        wait_for(Duration::from_secs(15), || replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")),
        "the replica did not sync: {}",
        replica.cli(&["INFO", "replication"])
    );
}

/// Starts a cluster node on Redis at `url` with `extra` config sections.
pub fn node(url: &str, extra: &[(&str, &str)]) -> Server {
    node_on(url, 0, extra)
}

/// Whether this run's nodes read from replicas: `SSEHUB_TEST_READERS=replicas`, which
/// `.ci/run` sets for a second run of the cluster suites, so that every case (the faults
/// included) is also checked with `cluster.read_from`.
pub fn readers_on_replicas() -> bool {
    std::env::var("SSEHUB_TEST_READERS").is_ok_and(|v| v == "replicas")
}

/// The replica nodes on `url` read from (`readers_on_replicas`): one per address, started
/// on first use (replicating through the same address, so a cut or a retarget of a
/// forwarder reaches it too) and kept while a node holds it.
fn reader_replica(url: &str) -> Option<Arc<Redis>> {
    static REPLICAS: Mutex<Vec<(String, std::sync::Weak<Redis>)>> = Mutex::new(Vec::new());
    if !readers_on_replicas() {
        return None;
    }
    let mut replicas = REPLICAS.lock().unwrap_or_else(|e| e.into_inner());
    replicas.retain(|(_, r)| r.strong_count() > 0);
    if let Some(r) = replicas
        .iter()
        .find(|(u, _)| u == url)
        .and_then(|(_, r)| r.upgrade())
    {
        return Some(r);
    }
    let port = url
        .strip_prefix("redis://127.0.0.1:")
        .and_then(|rest| rest.split('/').next())
        .expect("a redis://127.0.0.1:PORT/0 URL");
    let replica = Arc::new(Redis::start(&["--replicaof", "127.0.0.1", port]));
    // Usually in sync within milliseconds; a node also starts on a replica still syncing
    // (it reads from the primary meanwhile), so this only waits a little.
    wait_for(Duration::from_secs(3), || {
        replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
    });
    replicas.push((url.to_string(), Arc::downgrade(&replica)));
    Some(replica)
}

/// The `[cluster]` lines of a node on `url`: the URL, a short connect timeout, and with
/// `readers_on_replicas` a replica to read from.
fn cluster_section(url: &str) -> (String, Option<Arc<Redis>>) {
    let mut cluster = format!("redis = {url:?}\nconnect_timeout = \"500ms\"");
    let replica = reader_replica(url);
    if let Some(r) = &replica {
        cluster.push_str(&format!("\nread_from = [{:?}]", r.url()));
    }
    (cluster, replica)
}

/// `node`, listening on 127.0.0.1:`port` (0: a free port).
pub fn node_on(url: &str, port: u16, extra: &[(&str, &str)]) -> Server {
    let (cluster, replica) = cluster_section(url);
    let mut sections: Vec<(&str, &str)> = vec![("cluster", cluster.as_str())];
    sections.extend_from_slice(extra);
    let mut s = Server::start_with_command(&sections, |config| {
        let text = std::fs::read_to_string(config).expect("config");
        let text = text.replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        );
        std::fs::write(config, text).expect("config");
        super::serve_command(config)
    });
    let on_replica = replica.is_some();
    s.keep
        .extend(replica.map(|r| r as Arc<dyn std::any::Any + Send + Sync>));
    assert!(
        wait_for(Duration::from_secs(10), || redis_up(&s) == Some(true)),
        "node did not report ssehub_redis_up 1: {}",
        s.log_text()
    );
    if on_replica {
        assert!(
            wait_for(Duration::from_secs(10), || metric(
                &s,
                "ssehub_redis_reading_replica"
            ) == Some(1)),
            "node does not read from its replica: {}",
            s.log_text()
        );
    }
    s
}

/// `node`, but without waiting for `ssehub_redis_up 1` (a node started while Redis is
/// unreachable); waits only for it to listen.
pub fn node_unchecked(url: &str, extra: &[(&str, &str)]) -> Server {
    let (cluster, replica) = cluster_section(url);
    let mut sections: Vec<(&str, &str)> = vec![("cluster", cluster.as_str())];
    sections.extend_from_slice(extra);
    let mut s = Server::start_with(&sections);
    s.keep
        .extend(replica.map(|r| r as Arc<dyn std::any::Any + Send + Sync>));
    s
}

/// `ssehub_redis_up` of a node (None: not in its /metrics).
pub fn redis_up(s: &Server) -> Option<bool> {
    metric(s, "ssehub_redis_up").map(|v| v == 1)
}

/// A metric without labels from a node's `/metrics`.
pub fn metric(s: &Server, name: &str) -> Option<u64> {
    let mut c = Client::connect(s.addr);
    c.send("GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let (_, _, body) = c.read_response();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}
