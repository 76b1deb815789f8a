//! `report`: turns the JSON lines of a comparison (every scenario run, each tagged with a
//! `--label` naming its workload) into a dated markdown table and a JSON file: per workload
//! and target the median of the runs, every run's value and load average, and the ratio
//! ssehub/nchan per metric.

use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// JSON lines written by the scenarios (one per run).
    #[arg(long)]
    pub runs: PathBuf,
    /// `ssehub-loadtest machine` output taken at the start of the session.
    #[arg(long)]
    pub machine: PathBuf,
    /// Text file with the exact command lines (servers and load), quoted verbatim.
    #[arg(long)]
    pub commands: Option<PathBuf>,
    #[arg(long, default_value = "")]
    pub git_revision: String,
    #[arg(long, default_value = "")]
    pub date: String,
    /// Free text placed under the title (how the numbers were taken, caveats).
    #[arg(long)]
    pub notes: Option<PathBuf>,
    #[arg(long)]
    pub out_md: PathBuf,
    #[arg(long)]
    pub out_json: PathBuf,
}

/// (column name, JSON pointer, unit note, whether lower is better)
type Metric = (&'static str, &'static str, &'static str, bool);

fn metrics(scenario: &str) -> &'static [Metric] {
    match scenario {
        "idle" => &[
            (
                "server private bytes / stream",
                "/server_private_bytes_per_stream",
                "B",
                true,
            ),
            (
                "kernel slab bytes / socket (one side)",
                "/kernel_slab_bytes_per_stream_one_side",
                "B",
                true,
            ),
            ("streams open", "/streams_open", "", false),
            ("keepalives seen", "/keepalives_seen", "", false),
        ],
        "fanout" | "slow" => &[
            (
                "deliveries / server CPU-s",
                "/deliveries_per_cpu_s",
                "",
                false,
            ),
            (
                "sustained deliveries / s",
                "/sustained_deliveries_per_s",
                "",
                false,
            ),
            (
                "deliveries / s (whole run)",
                "/achieved_deliveries_per_s",
                "",
                false,
            ),
            (
                "deliveries / write call",
                "/deliveries_per_write",
                "",
                false,
            ),
            ("publish answer p50", "/publish/answer/p50", "µs", true),
            ("publish answer p99", "/publish/answer/p99", "µs", true),
            ("producer events / s", "/publish/events_per_s", "", false),
            ("latency p50", "/latency_us/p50", "µs", true),
            ("latency p90", "/latency_us/p90", "µs", true),
            ("latency p99", "/latency_us/p99", "µs", true),
            ("latency p99.9", "/latency_us/p999", "µs", true),
            ("latency max", "/latency_us/max", "µs", true),
            (
                "latency p99 from schedule",
                "/latency_sched_us/p99",
                "µs",
                true,
            ),
            ("last subscriber p50", "/last_subscriber_us/p50", "µs", true),
            ("last subscriber p99", "/last_subscriber_us/p99", "µs", true),
            ("last subscriber max", "/last_subscriber_us/max", "µs", true),
            ("server CPU", "/server_cpu_s", "s", true),
            (
                "server private peak",
                "/server_private_kib_peak",
                "KiB",
                true,
            ),
            ("slow subscribers cut", "/slow/slow_cut", "", false),
            ("missing", "/missing", "", true),
            ("duplicates", "/duplicates", "", true),
            ("client CPU", "/client_cpu_s", "s", true),
        ],
        "churn" => &[
            ("connects / s", "/connects_per_s", "", false),
            (
                "server CPU ms / connect",
                "/server_cpu_ms_per_connect",
                "ms",
                true,
            ),
            ("connects", "/counts/connects", "", false),
            ("resumes", "/counts/resumes", "", false),
            ("resets", "/counts/resets", "", true),
            ("missing", "/missing", "", true),
            ("duplicates", "/duplicates", "", true),
            ("complete clients", "/complete_clients", "", false),
            (
                "server descriptors after",
                "/server_fds_after_close",
                "",
                true,
            ),
        ],
        _ => &[],
    }
}

#[derive(Serialize)]
struct Row {
    workload: String,
    scenario: String,
    metric: String,
    unit: String,
    ssehub: Option<f64>,
    nchan: Option<f64>,
    ratio_ssehub_over_nchan: Option<f64>,
    ssehub_runs: Vec<f64>,
    nchan_runs: Vec<f64>,
    /// The same workload from `floor` (one plain write per delivery), where it was run.
    floor: Option<f64>,
    ratio_ssehub_over_floor: Option<f64>,
    floor_runs: Vec<f64>,
}

pub(crate) fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if !n.is_multiple_of(2) {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn fmt(x: f64) -> String {
    if x.abs() >= 1000.0 || x.fract() == 0.0 {
        let r = x.round() as i64;
        let s = r.abs().to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if r < 0 { format!("-{out}") } else { out }
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

pub fn run(a: Args) -> i32 {
    match render(&a) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ssehub-loadtest report: {e}");
            1
        }
    }
}

fn render(a: &Args) -> Result<(), String> {
    let read =
        |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let runs: Vec<Value> = read(&a.runs)?
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).map_err(|e| format!("bad result line: {e}")))
        .collect::<Result<_, _>>()?;
    let machine: Value = serde_json::from_str(&read(&a.machine)?).map_err(|e| e.to_string())?;
    let commands = a.commands.as_ref().map(read).transpose()?;
    let notes = a.notes.as_ref().map(read).transpose()?;

    // workload label -> target -> runs, in order of first appearance.
    let mut order: Vec<String> = Vec::new();
    let mut groups: BTreeMap<String, BTreeMap<String, Vec<&Value>>> = BTreeMap::new();
    for r in &runs {
        let label = r["label"]
            .as_str()
            .or(r["scenario"].as_str())
            .unwrap_or("?")
            .to_string();
        let target = r["target"].as_str().unwrap_or("?").to_string();
        if !order.contains(&label) {
            order.push(label.clone());
        }
        groups
            .entry(label)
            .or_default()
            .entry(target)
            .or_default()
            .push(r);
    }
    let mut rows = Vec::new();
    for label in &order {
        let g = &groups[label];
        // The servers' scenario names the metrics (a floor run stands beside a fanout).
        let scenario = g
            .values()
            .flatten()
            .filter_map(|r| r["scenario"].as_str())
            .find(|s| *s != "floor")
            .unwrap_or("fanout")
            .to_string();
        for &(name, ptr, unit, _) in metrics(&scenario) {
            let vals = |t: &str| -> Vec<f64> {
                g.get(t)
                    .map(|rs| rs.iter().filter_map(|r| r.pointer(ptr)?.as_f64()).collect())
                    .unwrap_or_default()
            };
            let s = vals("ssehub");
            let n = vals("nchan");
            let f = vals("floor");
            if s.is_empty() && n.is_empty() {
                continue;
            }
            let (ms, mn, mf) = (median(&s), median(&n), median(&f));
            let ratio_of = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(x), Some(y)) if y != 0.0 => Some((x / y * 1000.0).round() / 1000.0),
                _ => None,
            };
            let ratio = ratio_of(ms, mn);
            rows.push(Row {
                workload: label.clone(),
                scenario: scenario.clone(),
                metric: name.into(),
                unit: unit.into(),
                ssehub: ms,
                nchan: mn,
                ratio_ssehub_over_nchan: ratio,
                ssehub_runs: s,
                nchan_runs: n,
                floor: mf,
                ratio_ssehub_over_floor: ratio_of(ms, mf),
                floor_runs: f,
            });
        }
    }

    let mut md = String::new();
    md.push_str(&format!(
        "# ssehub vs nginx+nchan, side by side ({})\n\n",
        a.date
    ));
    if let Some(n) = &notes {
        md.push_str(n.trim_end());
        md.push_str("\n\n");
    }
    md.push_str("## Machine and revision\n\n");
    md.push_str(&format!(
        "- Git revision: `{}`\n- Cores: {}; CPU: {}; kernel {}; memory {} GiB\n- `RLIMIT_NOFILE`: soft {}, hard {}\n- Load average at the start of the session: {}\n\n",
        a.git_revision,
        machine["cores"],
        machine["cpu_model"].as_str().unwrap_or(""),
        machine["kernel"].as_str().unwrap_or(""),
        machine["memory_gib"],
        machine["nofile_soft"],
        machine["nofile_hard"],
        machine["load_avg"].as_str().unwrap_or(""),
    ));
    md.push_str("## Results (median of the runs)\n\n");
    let mut last_label = String::new();
    let mut with_floor = false;
    for r in &rows {
        if r.workload != last_label {
            last_label = r.workload.clone();
            with_floor = rows
                .iter()
                .any(|x| x.workload == r.workload && x.floor.is_some());
            md.push_str(&format!(
                "\n### {}\n\n| metric | ssehub | nchan | ssehub/nchan | ssehub runs | nchan runs |{}\n|---|---:|---:|---:|---|---|{}\n",
                r.workload,
                if with_floor { " floor | ssehub/floor | floor runs |" } else { "" },
                if with_floor { "---:|---:|---|" } else { "" },
            ));
        }
        let cell = |v: Option<f64>| v.map_or("–".to_string(), fmt);
        let list = |v: &[f64]| v.iter().map(|x| fmt(*x)).collect::<Vec<_>>().join(", ");
        let unit = if r.unit.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.unit)
        };
        let ratio = |v: Option<f64>| v.map_or("–".into(), |x| format!("{x:.3}"));
        md.push_str(&format!(
            "| {}{} | {} | {} | {} | {} | {} |",
            r.metric,
            unit,
            cell(r.ssehub),
            cell(r.nchan),
            ratio(r.ratio_ssehub_over_nchan),
            list(&r.ssehub_runs),
            list(&r.nchan_runs),
        ));
        if with_floor {
            md.push_str(&format!(
                " {} | {} | {} |",
                cell(r.floor),
                ratio(r.ratio_ssehub_over_floor),
                list(&r.floor_runs)
            ));
        }
        md.push('\n');
    }
    md.push_str("\n## Every run\n\n| workload | target | ok | load average start → end | command |\n|---|---|---|---|---|\n");
    for r in &runs {
        md.push_str(&format!(
            "| {} | {} | {} | {} → {} | `{}` |\n",
            r["label"].as_str().unwrap_or(""),
            r["target"].as_str().unwrap_or(""),
            r["ok"].as_bool().map_or_else(
                || (r["streams_open"] == r["streams_requested"]).to_string(),
                |b| b.to_string()
            ),
            r["load_avg_start"].as_str().unwrap_or(""),
            r["load_avg_end"].as_str().unwrap_or(""),
            r["command"].as_str().unwrap_or("").replace('|', "\\|"),
        ));
        if let Some(p) = r["problems"].as_array().filter(|p| !p.is_empty()) {
            md.push_str(&format!(
                "| | | problems: {} | | |\n",
                p.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
                    .replace('|', "\\|")
            ));
        }
    }
    if let Some(c) = &commands {
        md.push_str("\n## Exact commands and server configurations\n\n```\n");
        md.push_str(c.trim_end());
        md.push_str("\n```\n");
    }
    std::fs::write(&a.out_md, md).map_err(|e| format!("{}: {e}", a.out_md.display()))?;

    let json = serde_json::json!({
        "date": a.date,
        "git_revision": a.git_revision,
        "machine": machine,
        "commands": commands,
        "notes": notes,
        "summary": rows,
        "runs": runs,
    });
    std::fs::write(
        &a.out_json,
        serde_json::to_string_pretty(&json).expect("json"),
    )
    .map_err(|e| format!("{}: {e}", a.out_json.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_numbers() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(fmt(187_000.4), "187,000");
        assert_eq!(fmt(142.3), "142.3");
        assert_eq!(fmt(1.234), "1.23");
        assert_eq!(fmt(0.0), "0");
    }
}
