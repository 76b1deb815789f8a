//! `/metrics` read the way Prometheus reads it: the text parsed by the official Python
//! client's parser (`prometheus_client`), never by a parser of our own, so a format mistake
//! the hub makes fails the test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
