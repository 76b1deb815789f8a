//! `plot`: SVG charts of the load tools' results, written next to their markdown.
//!
//! - `plot compare FILE.json` (`loadtest/compare.sh`'s JSON): deliveries per server
//!   CPU-second per workload for floor, ssehub and nginx+nchan (`-deliveries-per-cpu`),
//!   latency p50/p99/p99.9/max per workload (`-latency`), and memory per idle stream when
//!   the file has idle runs (`-idle-memory`).
//! - `plot tls FILE...` (`loadtest/tls_compare.sh`'s JSON lines; a compare JSON may be
//!   added for plain-HTTP idle runs): memory per idle stream, plain and TLS
//!   (`-idle-memory`), and fan-out deliveries per server CPU-second, plain and TLS
//!   (`-fanout`).
//! - `plot cluster FILE.jsonl` (`loadtest/cluster.sh`'s runs): per workload, node and
//!   Redis CPU per event, publish answer p99 and delivery p99 by configuration (`single`,
//!   `N=1`, `N=2` or any other label: whatever follows the workload's name), one series
//!   per `session` when the lines carry one (`-<workload>`).
//!
//! Every input is either one JSON document with a `runs` array (compare) or JSON lines,
//! one run each. Every bar is the median of its cell's runs, and the subtitle says of how
//! many. A run without the figure a chart needs is left out with a warning on stderr; a
//! chart without any figure is not written, and a command that writes no chart exits 1.

use crate::report::median;
use plotters::coord::Shift;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand, Debug)]
enum What {
    /// compare.sh JSON: deliveries per server CPU-second, latency percentiles, idle memory.
    Compare(Opts),
    /// tls_compare.sh JSON lines (and compare JSON for plain idle runs): idle memory
    /// per stream and fan-out deliveries per CPU-second, plain and TLS.
    Tls(Opts),
    /// cluster.sh JSON lines: node and Redis CPU per event, answer and delivery p99, by
    /// configuration.
    Cluster(Opts),
}

#[derive(clap::Args, Debug)]
struct Opts {
    /// Results: a JSON document with `runs`, or JSON lines (one run each).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Where the SVG files go (default: the first file's folder).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// File names are PREFIX-<chart>.svg (default: the first file's name without
    /// its extension).
    #[arg(long)]
    prefix: Option<String>,
    /// The git revision measured, for the titles (a compare JSON names its own).
    #[arg(long)]
    revision: Option<String>,
    /// `ssehub-loadtest machine` output, for the titles (a compare JSON holds its own).
    #[arg(long)]
    machine: Option<PathBuf>,
}

pub fn run(a: Args) -> i32 {
    let (kind, o) = match a.what {
        What::Compare(o) => (Kind::Compare, o),
        What::Tls(o) => (Kind::Tls, o),
        What::Cluster(o) => (Kind::Cluster, o),
    };
    match plot(kind, &o) {
        Ok(paths) => {
            for p in paths {
                eprintln!("plot: wrote {}", p.display());
            }
            0
        }
        Err(e) => {
            eprintln!("ssehub-loadtest plot: {e}");
            1
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Compare,
    Tls,
    Cluster,
}

fn plot(kind: Kind, o: &Opts) -> Result<Vec<PathBuf>, String> {
    let mut input = Input::default();
    for f in &o.files {
        input.add(f)?;
    }
    if let Some(r) = &o.revision {
        input.revision = Some(r.clone());
    }
    if let Some(m) = &o.machine {
        let text = std::fs::read_to_string(m).map_err(|e| format!("{}: {e}", m.display()))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", m.display()))?;
        input.machine = describe_machine(&v);
    }
    let figures = charts(kind, &input)?;
    let first = &o.files[0];
    let dir = match &o.out_dir {
        Some(d) => d.clone(),
        None => first
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
    };
    let prefix = match &o.prefix {
        Some(p) => p.clone(),
        None => first
            .file_stem()
            .map_or_else(|| "plot".into(), |s| s.to_string_lossy().into_owned()),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for (name, fig) in figures {
        let svg = render(&fig)?;
        let path = dir.join(format!("{prefix}-{name}.svg"));
        std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// The charts of one command, each (file name suffix, figure); an error when none has data.
fn charts(kind: Kind, input: &Input) -> Result<Vec<(String, Figure)>, String> {
    if input.runs.is_empty() {
        return Err(format!(
            "{}: no runs in the input",
            input.sources.join(", ")
        ));
    }
    let mut out = Vec::new();
    match kind {
        Kind::Compare => {
            out.extend(deliveries_chart(input).map(|f| ("deliveries-per-cpu".to_string(), f)));
            out.extend(latency_chart(input).map(|f| ("latency".to_string(), f)));
            out.extend(memory_chart(input).map(|f| ("idle-memory".to_string(), f)));
        }
        Kind::Tls => {
            out.extend(memory_chart(input).map(|f| ("idle-memory".to_string(), f)));
            out.extend(tls_fanout_chart(input).map(|f| ("fanout".to_string(), f)));
        }
        Kind::Cluster => out.extend(cluster_charts(input)),
    }
    if out.is_empty() {
        let what = match kind {
            Kind::Compare => "fan-out, latency or idle figures",
            Kind::Tls => "idle memory or fan-out figures",
            Kind::Cluster => "cluster fan-out runs",
        };
        return Err(format!(
            "{}: nothing to plot (no {what} among {} runs)",
            input.sources.join(", "),
            input.runs.len()
        ));
    }
    Ok(out)
}

// ---- input ---------------------------------------------------------------------------

/// The runs of one or more files and what they say about themselves.
#[derive(Default)]
struct Input {
    runs: Vec<Value>,
    revision: Option<String>,
    machine: Option<String>,
    date: Option<String>,
    sources: Vec<String>,
}

impl Input {
    fn add(&mut self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        self.add_text(&path.display().to_string(), &text)
    }

    fn add_text(&mut self, name: &str, text: &str) -> Result<(), String> {
        let short = Path::new(name)
            .file_name()
            .map_or_else(|| name.to_string(), |s| s.to_string_lossy().into_owned());
        self.sources.push(short);
        let before = self.runs.len();
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(doc)) if doc.contains_key("runs") => {
                let Some(runs) = doc.get("runs").and_then(Value::as_array) else {
                    return Err(format!("{name}: `runs` is not an array"));
                };
                self.runs
                    .extend(runs.iter().filter(|r| r.is_object()).cloned());
                let s = |k: &str| doc.get(k).and_then(Value::as_str).map(str::to_string);
                if let Some(r) = s("git_revision").filter(|r| !r.is_empty()) {
                    self.revision.get_or_insert(r);
                }
                if let Some(d) = s("date").filter(|d| !d.is_empty()) {
                    self.date.get_or_insert(d);
                }
                if let Some(m) = doc.get("machine").and_then(describe_machine) {
                    self.machine.get_or_insert(m);
                }
            }
            Ok(Value::Array(runs)) => self.runs.extend(runs.into_iter().filter(Value::is_object)),
            Ok(v @ Value::Object(_)) => self.runs.push(v),
            _ => {
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    match serde_json::from_str::<Value>(line) {
                        Ok(v @ Value::Object(_)) => self.runs.push(v),
                        _ => warn(format!("{name}:{}: not a JSON object, skipped", i + 1)),
                    }
                }
            }
        }
        if self.runs.len() == before {
            return Err(format!("{name}: no runs in it"));
        }
        Ok(())
    }

    /// "git REV · MACHINE · DATE · from FILES" (what is known).
    fn provenance(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &self.revision {
            parts.push(format!("git {r}"));
        }
        parts.extend(self.machine.clone());
        if self.sources.len() == 1 {
            parts.extend(self.date.clone());
        }
        parts.push(format!("from {}", self.sources.join(", ")));
        parts.join(" · ")
    }
}

fn describe_machine(m: &Value) -> Option<String> {
    let cpu = m.get("cpu_model").and_then(Value::as_str);
    let cores = m.get("cores").and_then(Value::as_u64);
    match (cpu, cores) {
        (Some(c), Some(n)) => Some(format!("{c}, {n} cores")),
        (Some(c), None) => Some(c.to_string()),
        (None, Some(n)) => Some(format!("{n} cores")),
        (None, None) => None,
    }
}

fn warn(msg: String) {
    eprintln!("plot: warning: {msg}");
}

fn num(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer).and_then(Value::as_f64)
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// "run 3 (fan1k on ssehub)" for warnings.
fn which(i: usize, r: &Value) -> String {
    let label = text(r, "label").unwrap_or("?");
    let target = text(r, "target").unwrap_or("?");
    format!("run {} ({label} on {target})", i + 1)
}

/// A target's name as the charts show it.
fn server_name(s: &str) -> String {
    match s {
        "nchan" => "nginx+nchan".into(),
        other => other.into(),
    }
}

/// The workload a compare run belongs to: its label up to the colon ("fan1k").
fn workload(r: &Value) -> String {
    match text(r, "label") {
        Some(l) => l.split(':').next().unwrap_or(l).trim().to_string(),
        None => text(r, "scenario").unwrap_or("?").to_string(),
    }
}

/// tls_compare labels runs "idle-tls|SERVER"; elsewhere the target names the server.
fn server(r: &Value) -> String {
    match text(r, "label").and_then(|l| l.split_once('|')) {
        Some((_, s)) if !s.is_empty() => server_name(s),
        _ => server_name(text(r, "target").unwrap_or("?")),
    }
}

/// "plain", "TLS 1.3" or "TLS 1.2", from the load's command line (or its label).
fn transport(r: &Value) -> &'static str {
    let cmd = text(r, "command").unwrap_or("");
    let label = text(r, "label").unwrap_or("");
    if cmd.contains("--tls12") {
        "TLS 1.2"
    } else if cmd.contains("--tls-ca") || label.contains("-tls") {
        "TLS 1.3"
    } else {
        "plain"
    }
}

// ---- tables of medians ---------------------------------------------------------------

/// Values by (group, series), both in order of first appearance unless ordered later.
#[derive(Default)]
struct Cells {
    groups: Vec<String>,
    series: Vec<String>,
    values: BTreeMap<(String, String), Vec<f64>>,
}

impl Cells {
    fn add(&mut self, group: &str, series: &str, v: f64) {
        if !self.groups.iter().any(|g| g == group) {
            self.groups.push(group.to_string());
        }
        if !self.series.iter().any(|s| s == series) {
            self.series.push(series.to_string());
        }
        self.values
            .entry((group.to_string(), series.to_string()))
            .or_default()
            .push(v);
    }

    fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Puts the series named in `first` first, in that order.
    fn order_series(&mut self, first: &[&str]) {
        let rank = |s: &String| first.iter().position(|f| f == s).unwrap_or(first.len());
        self.series.sort_by_key(rank);
    }

    /// (fewest, most) runs behind one bar.
    fn runs(&self) -> (usize, usize) {
        let n = self.values.values().map(Vec::len);
        (n.clone().min().unwrap_or(0), n.max().unwrap_or(0))
    }

    fn bars(&self, title: &str, y_desc: &str, scale: Scale) -> Bars {
        let values = self
            .series
            .iter()
            .map(|s| {
                self.groups
                    .iter()
                    .map(|g| {
                        self.values
                            .get(&(g.clone(), s.clone()))
                            .and_then(|v| median(v))
                    })
                    .collect()
            })
            .collect();
        Bars {
            title: title.to_string(),
            y_desc: y_desc.to_string(),
            groups: self.groups.clone(),
            series: self.series.clone(),
            values,
            scale,
        }
    }
}

/// "median of 3 runs" / "median of 1–3 runs".
fn runs_note((lo, hi): (usize, usize)) -> String {
    match (lo, hi) {
        (1, 1) => "one run each".into(),
        (a, b) if a == b => format!("median of {a} runs"),
        (a, b) => format!("median of {a}–{b} runs"),
    }
}

fn runs_note_all(cells: &[&Cells]) -> String {
    let lo = cells.iter().map(|c| c.runs().0).filter(|&n| n > 0).min();
    let hi = cells.iter().map(|c| c.runs().1).max();
    runs_note((lo.unwrap_or(0), hi.unwrap_or(0)))
}

const TARGET_ORDER: &[&str] = &["floor", "ssehub", "nginx+nchan"];

/// Compare: deliveries per server CPU-second, workloads × targets.
fn deliveries_chart(input: &Input) -> Option<Figure> {
    let mut cells = Cells::default();
    let mut labels: Vec<String> = Vec::new();
    for (i, r) in input.runs.iter().enumerate() {
        let scenario = text(r, "scenario").unwrap_or("");
        if !matches!(scenario, "fanout" | "slow" | "floor") {
            continue;
        }
        let Some(v) = num(r, "/deliveries_per_cpu_s") else {
            warn(format!(
                "{}: no deliveries_per_cpu_s, left out",
                which(i, r)
            ));
            continue;
        };
        cells.add(
            &workload(r),
            &server_name(text(r, "target").unwrap_or("?")),
            v,
        );
        if let Some(l) = text(r, "label")
            && !labels.iter().any(|x| x == l)
        {
            labels.push(l.to_string());
        }
    }
    if cells.is_empty() {
        warn("no run with deliveries per server CPU-second: no deliveries chart".into());
        return None;
    }
    cells.order_series(TARGET_ORDER);
    let mut notes = vec![
        "Deliveries: events received by all subscribers / server utime+stime (all its processes) during the run.".to_string(),
        "floor: the same workload from a minimal in-process writer, one plain write() per delivery (what the machine allows).".to_string(),
    ];
    notes.extend(labels.iter().filter(|l| l.contains(':')).cloned());
    Some(Figure {
        title: "Deliveries per server CPU-second by workload (higher is better)".into(),
        subtitle: format!("{} · {}", runs_note(cells.runs()), input.provenance()),
        notes,
        cols: 1,
        panels: vec![cells.bars("", "deliveries / server CPU-s", Scale::Linear)],
    })
}

const PERCENTILES: &[(&str, &str)] = &[
    ("p50", "/latency_us/p50"),
    ("p99", "/latency_us/p99"),
    ("p99.9", "/latency_us/p999"),
    ("max", "/latency_us/max"),
];

/// Compare: latency percentiles, one panel per workload (percentiles × targets).
fn latency_chart(input: &Input) -> Option<Figure> {
    let mut panels: Vec<(String, Cells, bool)> = Vec::new();
    for (i, r) in input.runs.iter().enumerate() {
        let scenario = text(r, "scenario").unwrap_or("");
        if !matches!(scenario, "fanout" | "slow" | "floor") {
            continue;
        }
        let w = workload(r);
        let target = server_name(text(r, "target").unwrap_or("?"));
        let k = match panels.iter().position(|(n, _, _)| *n == w) {
            Some(k) => k,
            None => {
                panels.push((w, Cells::default(), false));
                panels.len() - 1
            }
        };
        let mut any = false;
        for (name, p) in PERCENTILES {
            match num(r, p) {
                Some(us) => {
                    panels[k].1.add(name, &target, us / 1000.0);
                    any = true;
                }
                None => warn(format!("{}: no {p}, left out", which(i, r))),
            }
        }
        if any && r.get("saturated").and_then(Value::as_bool) == Some(true) {
            panels[k].2 = true;
        }
    }
    panels.retain(|(_, c, _)| !c.is_empty());
    if panels.is_empty() {
        warn("no run with latency percentiles: no latency chart".into());
        return None;
    }
    let note = runs_note_all(&panels.iter().map(|(_, c, _)| c).collect::<Vec<_>>());
    let mut notes = vec![
        "Publish-to-receipt latency over all deliveries (CLOCK_MONOTONIC stamp in each payload); log scale.".to_string(),
    ];
    if panels.iter().any(|(_, _, s)| *s) {
        notes.push("(saturated): the server could not keep the offered rate in some run; quote its rate, not its latency.".into());
    }
    let bars = panels
        .into_iter()
        .map(|(w, mut c, saturated)| {
            c.order_series(TARGET_ORDER);
            let title = if saturated {
                format!("{w} (saturated)")
            } else {
                w
            };
            c.bars(&title, "latency (ms)", Scale::Log)
        })
        .collect::<Vec<_>>();
    Some(Figure {
        title: "Delivery latency percentiles by workload (lower is better)".into(),
        subtitle: format!("{note} · {}", input.provenance()),
        notes,
        cols: if bars.len() > 1 { 2 } else { 1 },
        panels: bars,
    })
}

/// Idle runs: server private bytes and kernel slab bytes per stream, servers × transports.
fn memory_chart(input: &Input) -> Option<Figure> {
    let mut private = Cells::default();
    let mut kernel = Cells::default();
    let mut streams: Vec<u64> = Vec::new();
    for (i, r) in input.runs.iter().enumerate() {
        if text(r, "scenario") != Some("idle") {
            continue;
        }
        let (s, t) = (server(r), transport(r));
        match num(r, "/server_private_bytes_per_stream") {
            Some(v) => private.add(&s, t, v),
            None => warn(format!(
                "{}: no server_private_bytes_per_stream, left out",
                which(i, r)
            )),
        }
        match num(r, "/kernel_slab_bytes_per_stream_one_side") {
            Some(v) => kernel.add(&s, t, v),
            None => warn(format!(
                "{}: no kernel_slab_bytes_per_stream_one_side, left out",
                which(i, r)
            )),
        }
        if let Some(n) = r.get("streams_open").and_then(Value::as_u64)
            && !streams.contains(&n)
        {
            streams.push(n);
        }
    }
    if private.is_empty() && kernel.is_empty() {
        warn("no idle run with memory figures: no memory chart".into());
        return None;
    }
    let order = ["plain", "TLS 1.3", "TLS 1.2"];
    private.order_series(&order);
    kernel.order_series(&order);
    streams.sort_unstable();
    let held = match streams.as_slice() {
        [] => String::new(),
        [n] => format!("{n} idle streams held; "),
        [a, .., b] => format!("{a}–{b} idle streams held; "),
    };
    let mut panels = Vec::new();
    if !private.is_empty() {
        panels.push(private.bars(
            "Server private memory per stream",
            "bytes / stream",
            Scale::Auto,
        ));
    }
    if !kernel.is_empty() {
        panels.push(kernel.bars(
            "Kernel slab per socket (one side)",
            "bytes / socket",
            Scale::Auto,
        ));
    }
    Some(Figure {
        title: "Memory per idle stream, plain HTTP and TLS (lower is better)".into(),
        subtitle: format!(
            "{} · {}",
            runs_note_all(&[&private, &kernel]),
            input.provenance()
        ),
        notes: vec![
            format!("{held}private: Private_Clean + Private_Dirty of /proc/PID/smaps_rollup over all server processes, minus the same before, / streams."),
            "Kernel: Slab delta of /proc/meminfo / streams / 2 (loopback holds both ends). A log scale when the bars span more than 20×.".into(),
        ],
        cols: 2,
        panels,
    })
}

/// tls_compare: fan-out deliveries per server CPU-second, servers × transports.
fn tls_fanout_chart(input: &Input) -> Option<Figure> {
    let mut cells = Cells::default();
    let mut other = 0;
    let mut shapes: Vec<String> = Vec::new();
    for (i, r) in input.runs.iter().enumerate() {
        if !matches!(text(r, "scenario"), Some("fanout" | "slow")) {
            continue;
        }
        // tls_compare labels its runs "fanout-tls|SERVER"; a compare file's fan-outs are
        // other workloads.
        if !text(r, "label").is_some_and(|l| l.contains('|')) {
            other += 1;
            continue;
        }
        if let (Some(n), Some(m), Some(rate)) =
            (num(r, "/subscribers"), num(r, "/events"), num(r, "/rate"))
        {
            let shape = format!("{n} subscribers × {m} events at {rate}/s");
            if !shapes.contains(&shape) {
                shapes.push(shape);
            }
        }
        match num(r, "/deliveries_per_cpu_s") {
            Some(v) => cells.add(&server(r), transport(r), v),
            None => warn(format!(
                "{}: no deliveries_per_cpu_s, left out",
                which(i, r)
            )),
        }
    }
    if other > 0 {
        eprintln!(
            "plot: {other} fan-out runs not labelled by tls_compare.sh (fanout-…|SERVER) left out of the fan-out chart"
        );
    }
    if cells.is_empty() {
        warn("no tls_compare fan-out run: no fan-out chart".into());
        return None;
    }
    cells.order_series(&["plain", "TLS 1.3", "TLS 1.2"]);
    Some(Figure {
        title: "Fan-out deliveries per server CPU-second, plain HTTP and TLS (higher is better)"
            .into(),
        subtitle: format!("{} · {}", runs_note(cells.runs()), input.provenance()),
        notes: vec![format!(
            "Fan-out: {}. Deliveries: events received by all subscribers / server utime+stime during the run.",
            shapes.join("; ")
        )],
        cols: 1,
        panels: vec![cells.bars("", "deliveries / server CPU-s", Scale::Linear)],
    })
}

/// The runs of one cluster workload at one rate.
type RateRuns<'a> = (f64, Vec<&'a Value>);

/// One figure per cluster workload ("rate", "fanout", ...; split by rate when a workload
/// ran at several): four panels, configurations × sessions.
fn cluster_charts(input: &Input) -> Vec<(String, Figure)> {
    let mut skipped_other = 0;
    // workload name -> (rate -> runs)
    let mut by_workload: Vec<(String, Vec<RateRuns>)> = Vec::new();
    for (i, r) in input.runs.iter().enumerate() {
        if text(r, "scenario") != Some("fanout") {
            skipped_other += 1;
            continue;
        }
        let Some(label) = text(r, "label") else {
            warn(format!("{}: no label, left out", which(i, r)));
            continue;
        };
        if r.get("cluster").is_none_or(Value::is_null) {
            warn(format!("{}: no `cluster` figures, left out", which(i, r)));
            continue;
        }
        let w = label.split_whitespace().next().unwrap_or(label).to_string();
        let rate = num(r, "/rate").unwrap_or(0.0);
        let k = match by_workload.iter().position(|(n, _)| *n == w) {
            Some(k) => k,
            None => {
                by_workload.push((w, Vec::new()));
                by_workload.len() - 1
            }
        };
        let rates = &mut by_workload[k].1;
        match rates.iter().position(|(x, _)| *x == rate) {
            Some(j) => rates[j].1.push(r),
            None => rates.push((rate, vec![r])),
        }
    }
    if skipped_other > 0 {
        eprintln!(
            "plot: {skipped_other} lines that are not cluster fan-out runs (e.g. redis-alone) not plotted"
        );
    }
    let mut out = Vec::new();
    for (w, rates) in by_workload {
        let split = rates.len() > 1;
        for (rate, runs) in rates {
            let name = if split {
                format!("{w}-{rate}")
            } else {
                w.clone()
            };
            if let Some(fig) = cluster_figure(input, &w, rate, &runs) {
                out.push((slug(&name), fig));
            }
        }
    }
    out
}

fn cluster_figure(input: &Input, w: &str, rate: f64, runs: &[&Value]) -> Option<Figure> {
    let sessions = runs.iter().any(|r| r.get("session").is_some());
    let mut node = Cells::default();
    let mut redis = Cells::default();
    let mut answer = Cells::default();
    let mut delivery = Cells::default();
    let mut subscribers: Vec<u64> = Vec::new();
    // Every panel lists every configuration and series (single mode has no Redis bar).
    let mut all = Cells::default();
    for (i, r) in runs.iter().enumerate() {
        let label = text(r, "label").unwrap_or("");
        let rest = label.split_once(' ').map_or(label, |(_, rest)| rest).trim();
        let config = rest.strip_prefix("cluster ").unwrap_or(rest);
        let series = if sessions {
            r.get("session")
                .map(|s| s.as_str().map_or_else(|| s.to_string(), str::to_string))
                .unwrap_or_else(|| "(no session)".into())
        } else {
            "median".to_string()
        };
        all.add(config, &series, 0.0);
        let what = format!("{w} run {} ({label})", i + 1);
        match num(r, "/cluster/total/cpu_us_per_event") {
            Some(v) => node.add(config, &series, v),
            None => warn(format!(
                "{what}: no cluster.total.cpu_us_per_event, left out"
            )),
        }
        let has_redis = r.pointer("/cluster/redis").is_some_and(|v| !v.is_null());
        match num(r, "/cluster/redis/cpu_us_per_event_net")
            .or_else(|| num(r, "/cluster/redis/cpu_us_per_event"))
        {
            Some(v) => redis.add(config, &series, v),
            // Single mode has no Redis: nothing to say.
            None if !has_redis => {}
            None => warn(format!(
                "{what}: no cluster.redis.cpu_us_per_event, left out"
            )),
        }
        match num(r, "/publish/answer/p99") {
            Some(v) => answer.add(config, &series, v / 1000.0),
            None => warn(format!("{what}: no publish.answer.p99, left out")),
        }
        match num(r, "/cluster/total/latency_p99_us_worst_node")
            .or_else(|| num(r, "/latency_us/p99"))
        {
            Some(v) => delivery.add(config, &series, v / 1000.0),
            None => warn(format!("{what}: no delivery p99, left out")),
        }
        if let Some(n) = r.get("subscribers").and_then(Value::as_u64)
            && !subscribers.contains(&n)
        {
            subscribers.push(n);
        }
    }
    for c in [&mut node, &mut redis, &mut answer, &mut delivery] {
        c.groups = all.groups.clone();
        c.series = all.series.clone();
    }
    if node.is_empty() && redis.is_empty() && answer.is_empty() && delivery.is_empty() {
        warn(format!("{w}: no figures, no chart"));
        return None;
    }
    let subs = match subscribers.as_slice() {
        [n] => format!("{n} subscribers, "),
        _ => String::new(),
    };
    let mut panels = Vec::new();
    for (c, title, y, scale) in [
        (
            &node,
            "Node CPU per event (all nodes)",
            "CPU µs / event",
            Scale::Auto,
        ),
        (
            &redis,
            "Redis CPU per event (net of idle)",
            "CPU µs / event",
            Scale::Auto,
        ),
        (&answer, "Publish answer p99", "ms", Scale::Auto),
        (&delivery, "Delivery p99 (worst node)", "ms", Scale::Auto),
    ] {
        if !c.is_empty() {
            panels.push(c.bars(title, y, scale));
        }
    }
    let mut notes = vec![
        "Configurations: the run label after the workload (single: one node, no cluster mode; N=k: k nodes in cluster mode sharing one Redis stream).".to_string(),
        "Nodes and Redis share core 0, the load is on core 1; CPU per event = process utime+stime / events published. A log scale when bars span more than 20×.".to_string(),
    ];
    if sessions {
        notes.push(
            "One series per `session` field of the lines (each a separate set of runs).".into(),
        );
    }
    Some(Figure {
        title: format!(
            "Cluster mode, {w} workload ({subs}{} events/s): cost per event and p99 by configuration",
            fmt_num(rate)
        ),
        subtitle: format!(
            "{} · {}",
            runs_note_all(&[&node, &redis, &answer, &delivery]),
            input.provenance()
        ),
        notes,
        cols: 2,
        panels,
    })
}

fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

// ---- drawing -------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scale {
    Linear,
    Log,
    /// Log when every value is positive and the largest is over 20× the smallest.
    Auto,
}

/// One panel of grouped bars: `values[series][group]`.
struct Bars {
    title: String,
    y_desc: String,
    groups: Vec<String>,
    series: Vec<String>,
    values: Vec<Vec<Option<f64>>>,
    scale: Scale,
}

struct Figure {
    title: String,
    subtitle: String,
    notes: Vec<String>,
    cols: usize,
    panels: Vec<Bars>,
}

const WIDTH: u32 = 1000;
const HEAD: u32 = 62;
const NOTE_LINE: u32 = 15;

const PALETTE: &[RGBColor] = &[
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// Fixed colours for the servers and transports (the same in every chart).
fn fixed_color(name: &str) -> Option<RGBColor> {
    Some(match name {
        "ssehub" => PALETTE[0],
        "nginx+nchan" => PALETTE[1],
        "plain" => PALETTE[2],
        "TLS 1.3" => PALETTE[3],
        "TLS 1.2" => PALETTE[4],
        "floor" => RGBColor(0x7f, 0x7f, 0x7f),
        "ssehub-before" => RGBColor(0x9e, 0xc5, 0xe8),
        _ => return None,
    })
}

/// Each series' colour: its fixed one, or the palette's next after the servers'.
fn series_colors(series: &[String]) -> Vec<RGBColor> {
    let mut next = 0;
    series
        .iter()
        .map(|s| {
            fixed_color(s).unwrap_or_else(|| {
                next += 1;
                PALETTE[(next + 1) % PALETTE.len()]
            })
        })
        .collect()
}

fn render(fig: &Figure) -> Result<String, String> {
    let err = |e: DrawingAreaErrorKind<std::io::Error>| format!("drawing: {e}");
    let cols = fig.cols.clamp(1, fig.panels.len().max(1));
    let rows = fig.panels.len().div_ceil(cols).max(1);
    let panel_h: u32 = if fig.panels.len() == 1 { 460 } else { 340 };
    let notes_h = 10 + NOTE_LINE * fig.notes.len() as u32;
    let height = HEAD + rows as u32 * panel_h + notes_h;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let center = Pos::new(HPos::Center, VPos::Top);
        root.draw(&Text::new(
            fig.title.clone(),
            (WIDTH as i32 / 2, 10),
            ("sans-serif", 19).into_font().color(&BLACK).pos(center),
        ))
        .map_err(err)?;
        root.draw(&Text::new(
            fig.subtitle.clone(),
            (WIDTH as i32 / 2, 36),
            ("sans-serif", 12)
                .into_font()
                .color(&RGBColor(0x44, 0x44, 0x44))
                .pos(center),
        ))
        .map_err(err)?;
        let (_, rest) = root.split_vertically(HEAD);
        let (body, foot) = rest.split_vertically(rows as u32 * panel_h);
        let areas = body.split_evenly((rows, cols));
        for (area, panel) in areas.iter().zip(&fig.panels) {
            draw_panel(area, panel)?;
        }
        for (i, line) in fig.notes.iter().enumerate() {
            foot.draw(&Text::new(
                line.clone(),
                (12, 4 + (i as u32 * NOTE_LINE) as i32),
                ("sans-serif", 11)
                    .into_font()
                    .color(&RGBColor(0x33, 0x33, 0x33)),
            ))
            .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn draw_panel(area: &DrawingArea<SVGBackend, Shift>, p: &Bars) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<std::io::Error>| format!("drawing: {e}");
    let all: Vec<f64> = p.values.iter().flatten().flatten().copied().collect();
    let positive: Vec<f64> = all.iter().copied().filter(|v| *v > 0.0).collect();
    let (min_pos, max) = (
        positive.iter().copied().fold(f64::INFINITY, f64::min),
        all.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let log = match p.scale {
        Scale::Linear => false,
        Scale::Log => !positive.is_empty(),
        Scale::Auto => !positive.is_empty() && positive.len() == all.len() && max / min_pos > 20.0,
    };
    let n = p.groups.len().max(1) as f64;
    let area = head(area, p)?;
    let mut builder = ChartBuilder::on(&area);
    builder
        .margin(8)
        .margin_right(18)
        .x_label_area_size(34)
        .y_label_area_size(70);
    if log {
        if positive.len() < all.len() {
            warn(format!(
                "{}: {} values ≤ 0 cannot be shown on a log scale, left out",
                p.title,
                all.len() - positive.len()
            ));
        }
        let lo = 10f64.powf(min_pos.log10().floor());
        // Room above the tallest bar for its label.
        let hi = max * 2.5;
        let chart = builder
            .build_cartesian_2d(0.0..n, (lo..hi).log_scale())
            .map_err(err)?;
        draw_bars(chart, p, lo, true)
    } else {
        let min = all.iter().copied().fold(0.0, f64::min);
        let hi = if max > 0.0 { max * 1.1 } else { 1.0 };
        let lo = if min < 0.0 { min * 1.15 } else { 0.0 };
        let chart = builder.build_cartesian_2d(0.0..n, lo..hi).map_err(err)?;
        draw_bars(chart, p, 0.0, false)
    }
}

fn draw_bars<'a, 'b: 'a, Y>(
    mut chart: ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, Y>>,
    p: &Bars,
    base: f64,
    log: bool,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let err = |e: DrawingAreaErrorKind<std::io::Error>| format!("drawing: {e}");
    let y_lo = chart.y_range().start;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .y_desc(p.y_desc.as_str())
        .y_label_formatter(&|v| fmt_num(*v))
        .axis_desc_style(("sans-serif", 13))
        .label_style(("sans-serif", 11))
        .y_max_light_lines(1)
        .light_line_style(RGBColor(0xf2, 0xf2, 0xf2))
        .draw()
        .map_err(err)?;
    // Group names under the axis.
    chart
        .draw_series(p.groups.iter().enumerate().map(|(i, g)| {
            EmptyElement::at((i as f64 + 0.5, y_lo))
                + Text::new(
                    g.clone(),
                    (0, 6),
                    ("sans-serif", 12)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Top)),
                )
        }))
        .map_err(err)?;
    let colors = series_colors(&p.series);
    let k = p.series.len().max(1) as f64;
    let width = 0.8 / k;
    for (s, (&c, values)) in colors.iter().zip(&p.values).enumerate() {
        let bars: Vec<(f64, f64)> = values
            .iter()
            .enumerate()
            .filter_map(|(g, v)| v.map(|v| (g as f64 + 0.1 + width * s as f64, v)))
            .filter(|&(_, v)| !log || v > 0.0)
            .collect();
        chart
            .draw_series(bars.iter().map(|&(x, v)| {
                let (top, bottom) = if v >= base { (v, base) } else { (base, v) };
                Rectangle::new([(x, top), (x + width * 0.92, bottom)], c.filled())
            }))
            .map_err(err)?;
        chart
            .draw_series(bars.iter().map(|&(x, v)| {
                EmptyElement::at((x + width * 0.46, v))
                    + Text::new(
                        fmt_num(v),
                        (0, -3),
                        ("sans-serif", 10)
                            .into_font()
                            .color(&RGBColor(0x33, 0x33, 0x33))
                            .pos(Pos::new(HPos::Center, VPos::Bottom)),
                    )
            }))
            .map_err(err)?;
    }
    Ok(())
}

/// Draws a panel's title and its legend (a swatch and the name of each series, in rows
/// as wide as the panel) at its top; returns the area left for the chart.
fn head<'a>(
    area: &DrawingArea<SVGBackend<'a>, Shift>,
    p: &Bars,
) -> Result<DrawingArea<SVGBackend<'a>, Shift>, String> {
    let err = |e: DrawingAreaErrorKind<std::io::Error>| format!("drawing: {e}");
    let width = area.dim_in_pixel().0 as i32;
    let mut y = 4;
    if !p.title.is_empty() {
        area.draw(&Text::new(
            p.title.clone(),
            (width / 2, y),
            ("sans-serif", 15)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(err)?;
        y += 22;
    }
    // Greedy rows of (swatch 12 px, gap 5, name at ~6.5 px a character, gap 18).
    let item = |name: &String| 35 + (name.chars().count() as f64 * 6.5) as i32;
    let mut rows: Vec<Vec<usize>> = vec![Vec::new()];
    let mut used = 0;
    for (i, name) in p.series.iter().enumerate() {
        let w = item(name);
        if used + w > width - 80 && !rows.last().is_some_and(Vec::is_empty) {
            rows.push(Vec::new());
            used = 0;
        }
        used += w;
        rows.last_mut().expect("a row").push(i);
    }
    let colors = series_colors(&p.series);
    for row in &rows {
        let total: i32 = row.iter().map(|&i| item(&p.series[i])).sum();
        let mut x = 70 + (width - 70 - total).max(0) / 2;
        for &i in row {
            area.draw(&Rectangle::new(
                [(x, y + 2), (x + 12, y + 14)],
                colors[i].filled(),
            ))
            .map_err(err)?;
            area.draw(&Text::new(
                p.series[i].clone(),
                (x + 17, y + 2),
                ("sans-serif", 12).into_font().color(&BLACK),
            ))
            .map_err(err)?;
            x += item(&p.series[i]);
        }
        y += 18;
    }
    Ok(area.split_vertically(y + 2).1)
}

/// 202,020 → "202k", 6.8 → "6.8", 1,321 → "1,321".
fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6).replace(".0M", "M")
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1000.0 {
        let r = v.round() as i64;
        let s = r.abs().to_string();
        let (head, tail) = s.split_at(s.len() - 3);
        format!("{}{head},{tail}", if r < 0 { "-" } else { "" })
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.1e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SSEHUB: &str = "fill=\"#1F77B4\"";
    const NCHAN: &str = "fill=\"#FF7F0E\"";
    const FLOOR: &str = "fill=\"#7F7F7F\"";

    fn input(name: &str, text: &str) -> Result<Input, String> {
        let mut i = Input::default();
        i.add_text(name, text)?;
        Ok(i)
    }

    fn fanout(target: &str, label: &str, per_cpu: f64, p50_us: f64) -> Value {
        json!({
            "scenario": if target == "floor" { "floor" } else { "fanout" },
            "target": target, "label": label, "deliveries_per_cpu_s": per_cpu,
            "saturated": false,
            "latency_us": {"p50": p50_us, "p99": p50_us * 2.0, "p999": p50_us * 3.0, "max": p50_us * 4.0},
        })
    }

    fn compare_doc() -> String {
        let mut runs = Vec::new();
        for (w, f) in [
            ("fan1k: 1000 subscribers", 1.0),
            ("fan10k: 10000 subscribers", 0.5),
        ] {
            for run in 0..3 {
                let k = f64::from(run);
                runs.push(fanout("ssehub", w, f * (190_000.0 + 10_000.0 * k), 2000.0));
                runs.push(fanout("nchan", w, f * (50_000.0 + k), 9000.0));
                runs.push(fanout("floor", w, f * 180_000.0, 1500.0));
            }
        }
        // Not a fan-out: no deliveries figure expected, nothing drawn for it.
        runs.push(json!({"scenario": "churn", "target": "ssehub", "label": "churn: 2000 clients"}));
        json!({
            "git_revision": "abc1234", "date": "2026-12-08",
            "machine": {"cpu_model": "Test CPU", "cores": 2},
            "runs": runs,
        })
        .to_string()
    }

    #[test]
    fn compare_deliveries_chart_has_a_bar_per_workload_and_target() {
        let i = input("x-compare.json", &compare_doc()).unwrap();
        let charts = charts(Kind::Compare, &i).unwrap();
        let names: Vec<&str> = charts.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["deliveries-per-cpu", "latency"]);
        let svg = render(&charts[0].1).unwrap();
        assert!(svg.starts_with("<svg"));
        for s in [
            "floor",
            "ssehub",
            "nginx+nchan",
            "fan1k",
            "fan10k",
            "abc1234",
            "Test CPU, 2 cores",
        ] {
            assert!(svg.contains(s), "{s} missing");
        }
        assert!(svg.contains("median of 3 runs"));
        // Two workloads: two bars per target, plus its legend swatch.
        assert_eq!(svg.matches(SSEHUB).count(), 3);
        assert_eq!(svg.matches(NCHAN).count(), 3);
        assert_eq!(svg.matches(FLOOR).count(), 3);
        // The median of 190k, 200k, 210k is labelled on its bar.
        assert!(svg.contains("\n200k\n"), "{svg}");
    }

    #[test]
    fn compare_latency_chart_has_a_panel_per_workload() {
        let i = input("x.json", &compare_doc()).unwrap();
        let fig = latency_chart(&i).unwrap();
        assert_eq!(fig.panels.len(), 2);
        assert_eq!(fig.panels[0].groups, ["p50", "p99", "p99.9", "max"]);
        assert_eq!(fig.panels[0].series, ["floor", "ssehub", "nginx+nchan"]);
        // ssehub p50 is 2,000 µs = 2 ms.
        assert_eq!(fig.panels[0].values[1][0], Some(2.0));
        let svg = render(&fig).unwrap();
        // 2 panels × 4 percentiles, plus a legend swatch per panel.
        assert_eq!(svg.matches(SSEHUB).count(), 2 * 4 + 2);
    }

    #[test]
    fn tls_memory_chart_separates_plain_and_tls_versions() {
        let lines = [
            json!({"scenario": "idle", "target": "ssehub", "label": "idle-tls|ssehub", "command": "idle --tls-ca c.pem",
                   "server_private_bytes_per_stream": 1300.0, "kernel_slab_bytes_per_stream_one_side": 5000.0, "streams_open": 10000}),
            json!({"scenario": "idle", "target": "ssehub", "label": "idle-tls|ssehub", "command": "idle --tls-ca c.pem --tls12",
                   "server_private_bytes_per_stream": 400.0, "kernel_slab_bytes_per_stream_one_side": 5000.0, "streams_open": 10000}),
            json!({"scenario": "idle", "target": "nchan", "label": "idle-tls|nchan", "command": "idle --tls-ca c.pem",
                   "server_private_bytes_per_stream": 41000.0, "kernel_slab_bytes_per_stream_one_side": 4400.0, "streams_open": 10000}),
            json!({"scenario": "idle", "target": "ssehub", "label": "idle: 15000 streams", "command": "idle",
                   "server_private_bytes_per_stream": 120.0}),
            json!({"scenario": "fanout", "target": "ssehub", "label": "fanout-tls|ssehub", "command": "fanout --tls-ca c.pem",
                   "deliveries_per_cpu_s": 180000.0}),
            json!({"scenario": "fanout", "target": "ssehub", "label": "fanout-plain|ssehub", "command": "fanout",
                   "deliveries_per_cpu_s": 190000.0}),
            // A compare file's fan-out (another workload): not in the TLS fan-out chart.
            json!({"scenario": "fanout", "target": "ssehub", "label": "fan10k: 10000 subscribers", "command": "fanout",
                   "deliveries_per_cpu_s": 50000.0}),
        ];
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let i = input("t.jsonl", &text).unwrap();
        let charts = charts(Kind::Tls, &i).unwrap();
        assert_eq!(charts.len(), 2);
        let mem = &charts[0].1;
        assert_eq!(mem.panels[0].series, ["plain", "TLS 1.3", "TLS 1.2"]);
        assert_eq!(mem.panels[0].groups, ["ssehub", "nginx+nchan"]);
        // 120 to 41,000: a log scale is chosen; the kernel panel has no plain run.
        assert_eq!(mem.panels[1].series, ["TLS 1.3", "TLS 1.2"]);
        let svg = render(mem).unwrap();
        for s in ["plain", "TLS 1.3", "TLS 1.2", "nginx+nchan", "Kernel slab"] {
            assert!(svg.contains(s), "{s} missing");
        }
        let svg = render(&charts[1].1).unwrap();
        assert!(svg.contains("\n190k\n") && svg.contains("\n180k\n"));
        assert!(!svg.contains("\n50k\n"));
    }

    fn cluster_line(label: &str, session: Option<&str>, node_us: f64, redis: bool) -> String {
        let mut v = json!({
            "scenario": "fanout", "label": label, "rate": 2000.0, "subscribers": 20,
            "publish": {"answer": {"p99": 1500}},
            "latency_us": {"p99": 2500},
            "cluster": {
                "total": {"cpu_us_per_event": node_us, "latency_p99_us_worst_node": 3000},
                "redis": if redis { json!({"cpu_us_per_event_net": 20.0}) } else { Value::Null },
            },
        });
        if let Some(s) = session {
            v["session"] = json!(s);
        }
        v.to_string()
    }

    #[test]
    fn cluster_configurations_are_taken_from_the_labels_whatever_they_are() {
        let lines = [
            cluster_line("rate single", None, 30.0, false),
            cluster_line("rate cluster N=1", None, 40.0, true),
            cluster_line("rate cluster N=1", None, 50.0, true),
            cluster_line("rate cluster 2 replica", None, 60.0, true),
            r#"{"scenario":"redis-alone","label":"redis XREAD COUNT 1","ok":true}"#.to_string(),
            "not json at all".to_string(),
        ];
        let i = input("c.jsonl", &lines.join("\n")).unwrap();
        let charts = charts(Kind::Cluster, &i).unwrap();
        assert_eq!(charts.len(), 1);
        let (name, fig) = &charts[0];
        assert_eq!(name, "rate");
        assert_eq!(fig.panels.len(), 4);
        assert_eq!(fig.panels[0].groups, ["single", "N=1", "2 replica"]);
        assert_eq!(
            fig.panels[0].values[0],
            [Some(30.0), Some(45.0), Some(60.0)]
        );
        // Single mode has no Redis bar.
        assert_eq!(fig.panels[1].values[0], [None, Some(20.0), Some(20.0)]);
        let svg = render(fig).unwrap();
        assert!(svg.contains("2 replica") && svg.contains("Redis CPU per event"));
        // "median" is the one series: 3 + 2 + 3 + 3 bars and 4 legend swatches.
        let green = "fill=\"#2CA02C\"";
        assert_eq!(svg.matches(green).count(), 11 + 4);
    }

    #[test]
    fn cluster_sessions_become_series_and_rates_split_charts() {
        let mut lines = vec![
            cluster_line("rate single", Some("before"), 30.0, false),
            cluster_line("rate cluster N=1", Some("before"), 40.0, true),
            cluster_line("rate cluster N=1", Some("after"), 35.0, true),
        ];
        let mut fast: Value = serde_json::from_str(&lines[1]).unwrap();
        fast["rate"] = json!(20000.0);
        lines.push(fast.to_string());
        let i = input("c.jsonl", &lines.join("\n")).unwrap();
        let charts = charts(Kind::Cluster, &i).unwrap();
        let names: Vec<&str> = charts.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["rate-2000", "rate-20000"]);
        assert_eq!(charts[0].1.panels[0].series, ["before", "after"]);
        assert_eq!(charts[0].1.panels[0].values[1], [None, Some(35.0)]);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(input("e.jsonl", "").is_err());
        assert!(input("g.jsonl", "garbage\n{not json\n[1,2]\n").is_err());
        assert!(input("r.json", r#"{"runs": 3}"#).is_err());
        assert!(input("r.json", r#"{"runs": []}"#).is_err());
        // Runs without any figure (or with figures of the wrong type): nothing to plot.
        let odd = [
            r#"{"scenario":"fanout","target":"ssehub","deliveries_per_cpu_s":"many","latency_us":{"p50":"x"}}"#,
            r#"{"scenario":"idle","server_private_bytes_per_stream":null}"#,
            r#"{"scenario":"fanout","label":"rate cluster N=1","cluster":{"total":{}}}"#,
            r#"{"no":"scenario"}"#,
        ]
        .join("\n");
        let i = input("odd.jsonl", &odd).unwrap();
        for kind in [Kind::Compare, Kind::Tls, Kind::Cluster] {
            let e = charts(kind, &i).err().expect("an error");
            assert!(e.contains("nothing to plot"), "{e}");
        }
    }

    #[test]
    fn the_command_writes_its_files_and_fails_cleanly() {
        let dir = std::env::temp_dir().join(format!("ssehub-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("2026-01-01-compare.json");
        std::fs::write(&src, compare_doc()).unwrap();
        let opts = |files: Vec<PathBuf>| Opts {
            files,
            out_dir: None,
            prefix: None,
            revision: None,
            machine: None,
        };
        let written = plot(Kind::Compare, &opts(vec![src.clone()])).unwrap();
        assert_eq!(
            written,
            [
                dir.join("2026-01-01-compare-deliveries-per-cpu.svg"),
                dir.join("2026-01-01-compare-latency.svg")
            ]
        );
        assert!(
            std::fs::read_to_string(&written[0])
                .unwrap()
                .contains("</svg>")
        );
        let empty = dir.join("empty.jsonl");
        std::fs::write(&empty, "\n").unwrap();
        assert!(plot(Kind::Tls, &opts(vec![empty])).is_err());
        assert!(plot(Kind::Cluster, &opts(vec![dir.join("absent.jsonl")])).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn numbers_read_short() {
        assert_eq!(fmt_num(202_020.0), "202k");
        assert_eq!(fmt_num(1321.0), "1,321");
        assert_eq!(fmt_num(-1321.0), "-1,321");
        assert_eq!(fmt_num(6.83), "6.83");
        assert_eq!(fmt_num(29.85), "29.9");
        assert_eq!(fmt_num(1_650_000.0), "1.6M");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(slug("rate at 2000.0/s"), "rate-at-2000.0-s");
    }
}
