//! Fixtures of the operations tests: the real binary started with a config file and
//! whatever environment or inherited descriptors a test needs (as systemd would start it),
//! and a real Prometheus text-format parser (the official Python client's) for `/metrics`.
#![allow(dead_code)]

use crate::common::BIN;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running hub started by `Hub::start`; killed on drop unless it exited.
pub struct Hub {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Hub {
    /// Starts `ssehub serve --config CONFIG` after `setup` has adjusted the command (env,
    /// `pre_exec`, a wrapper), and waits for its `listening` line.
    pub fn start(config: &Path, setup: impl FnOnce(&mut Command)) -> Hub {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--log-level")
            .arg("debug");
        setup(&mut cmd);
        Hub::spawn(cmd)
    }

    pub fn spawn(mut cmd: Command) -> Hub {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn ssehub");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening http=").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(a) => a.parse().expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                panic!("hub did not start: {:?}", log.lock().unwrap());
            }
        };
        Hub { child, addr, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid() as libc::pid_t, sig) }, 0);
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config file in `dir` with the ingest socket at `dir/ingest.sock`, a free port and
/// `extra` (whole TOML sections, e.g. "[streams]\nkeepalive = \"1s\"\n").
pub fn write_config(dir: &Path, http_extra: &str, extra: &str) -> PathBuf {
    let path = dir.join("ssehub.toml");
    let socket = dir.join("ingest.sock");
    std::fs::write(
        &path,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n{http_extra}\n[ingest]\nsocket = {:?}\n{extra}",
            socket.display().to_string()
        ),
    )
    .expect("write config");
    path
}

// ---- the Prometheus text-format parser ----------------------------------------------------

/// One parsed sample: its name (with `_total`, `_sum`, ... as written), labels and value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// A parsed metric family: name (as the parser reports it), type, help and samples.
#[derive(Debug, Clone)]
pub struct Family {
    pub name: String,
    pub kind: String,
    pub help: String,
    pub samples: Vec<Sample>,
}

/// Parses `text` with `prometheus_client.parser.text_string_to_metric_families`, the
/// official Python client's parser (it raises on malformed input, which fails the test).
pub fn parse_prometheus(text: &str) -> Vec<Family> {
    let python = prometheus_python();
    let script = r#"
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "help": f.documentation,
                "samples": [{"name": s.name, "labels": s.labels,
                             "value": None if math.isnan(s.value) else s.value}
                            for s in f.samples]})
print(json.dumps(out))
"#;
    let mut child = Command::new(&python)
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the Prometheus parser");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("parser output");
    v.as_array()
        .unwrap()
        .iter()
        .map(|f| Family {
            name: f["name"].as_str().unwrap().to_string(),
            kind: f["type"].as_str().unwrap().to_string(),
            help: f["help"].as_str().unwrap_or("").to_string(),
            samples: f["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| Sample {
                    name: s["name"].as_str().unwrap().to_string(),
                    labels: s["labels"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect(),
                    value: s["value"].as_f64().unwrap_or(f64::NAN),
                })
                .collect(),
        })
        .collect()
}

/// The value of sample `name` with exactly `labels`; panics when absent.
pub fn value(families: &[Family], name: &str, labels: &[(&str, &str)]) -> f64 {
    families
        .iter()
        .flat_map(|f| f.samples.iter())
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
        .value
}

/// A Python with `prometheus_client`: `SSEHUB_PROM_PYTHON` (set by .ci/run), else a venv
/// under the target directory, made on first use (from PyPI, pinned).
fn prometheus_python() -> PathBuf {
    if let Some(p) = std::env::var_os("SSEHUB_PROM_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("prom-venv");
    let python = venv.join("bin/python");
    let works = |p: &Path| {
        Command::new(p)
            .args(["-c", "import prometheus_client.parser"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works(&python) {
        return python;
    }
    // Several test binaries may get here at once: one makes the venv, the others wait.
    let lock = venv.with_extension("lock");
    let deadline = Instant::now() + Duration::from_secs(300);
    while std::fs::create_dir(&lock).is_err() {
        assert!(Instant::now() < deadline, "waited too long for {lock:?}");
        std::thread::sleep(Duration::from_millis(200));
        if works(&python) {
            return python;
        }
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "prometheus-client==0.26.0"])
            .status()
            .is_ok_and(|s| s.success());
    let _ = std::fs::remove_dir(&lock);
    assert!(
        made && works(&python),
        "could not set up Python with prometheus_client in {venv:?}; set SSEHUB_PROM_PYTHON"
    );
    python
}
