//! `churn`: N clients on one topic while M events are published at R/s. Each client reads
//! a random number of events, disconnects (a share by RST, the rest by FIN), waits a random
//! pause, and reconnects with `Last-Event-ID` of the last event it saw, as EventSource does.
//! Every client must end with every event exactly once, across all its reconnects:
//! missing and duplicate counts must be 0. `event: reset` (the server could not replay)
//! is counted, and the gap right after it is counted apart.
//!
//! The server's descriptors and memory are read before and after (all clients gone), so a
//! leak per connection shows. `--duration D` runs the memory soak of `soak.rs` instead.

use crate::coord::{Fleet, Watch};
use crate::proto::{ChurnConfig, ChurnCounts, Mode, ToWorker, WorkerResult};
use crate::publisher::{self, Plan};
use crate::run::{Common, Provenance, parse_duration, round1, topic};
use crate::sys;
use serde::Serialize;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, alias = "streams", default_value_t = 200)]
    pub clients: usize,
    #[arg(long, default_value_t = 200)]
    pub events: u64,
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    #[arg(long)]
    pub topic: Option<String>,
    /// Events read per connection: uniform in [min-events, max-events].
    #[arg(long, default_value_t = 1)]
    pub min_events: u32,
    #[arg(long, default_value_t = 20)]
    pub max_events: u32,
    /// Pause before reconnecting: uniform in [0, max-delay].
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub max_delay: Duration,
    /// Share of disconnects done by RST (SO_LINGER 0) instead of FIN.
    #[arg(long, default_value_t = 0.1)]
    pub rst_share: f64,
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub settle: Duration,
    /// Time allowed after the last event for every client to catch up.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub grace: Duration,
    /// A memory soak instead (see `soak.rs`): churn for this long, clients on `--topics`
    /// topics each reading for a random time in [min-read, max-read], `--rate` events/s
    /// round-robin over the topics; `--events` and `--min/max-events` do not apply.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Topics of a soak (clients spread evenly).
    #[arg(long, default_value_t = 10)]
    pub topics: usize,
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub min_read: Duration,
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub max_read: Duration,
    /// Soak samples before this (from the first publish) are not in the slope: let
    /// history fill (its max_age) and then some.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Time between samples of the server's anonymous memory (soak).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub sample_every: Duration,
    /// Sampling goes on this long after every client left (soak): does memory come back?
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub tail: Duration,
    /// A soak fails when the fitted change over the window exceeds this (percent).
    #[arg(long, default_value_t = 2.0)]
    pub max_drift_pct: f64,
}

#[derive(Serialize)]
struct Report {
    scenario: &'static str,
    target: &'static str,
    label: Option<String>,
    ok: bool,
    problems: Vec<String>,
    clients: usize,
    events: u64,
    rate: f64,
    size: usize,
    complete_clients: usize,
    deliveries: u64,
    missing: u64,
    duplicates: u64,
    missing_after_reset: u64,
    foreign_events: u64,
    counts: ChurnCounts,
    connects_per_s: f64,
    server_cpu_s: f64,
    server_cpu_ms_per_connect: f64,
    server_private_kib_before: u64,
    server_private_kib_after: u64,
    server_fds_before: u64,
    server_fds_after_close: u64,
    publish: publisher::Outcome,
    workers: usize,
    client_cpu_s: f64,
    wall_s: f64,
    #[serde(flatten)]
    provenance: Provenance,
}

/// The churn scenario (`--duration` absent; with it, `main` runs `soak::run` instead).
pub fn run(a: Args) -> i32 {
    if let Err(e) = a.common.check() {
        eprintln!("ssehub-loadtest: {e}");
        return 2;
    }
    if a.events == 0 || a.rate <= 0.0 || a.clients == 0 || a.max_events < a.min_events {
        eprintln!("ssehub-loadtest: bad churn parameters");
        return 2;
    }
    let mut prov = Provenance::start();
    let total = a.common.deadline.unwrap_or(
        a.common.connect_timeout
            + a.settle
            + Duration::from_secs_f64(a.events as f64 / a.rate)
            + a.grace
            + Duration::from_secs(30),
    );
    let deadline = sys::mono_ns() + total.as_nanos() as u64;
    let watch = Watch::start(deadline, total.as_secs_f64());
    let topic = topic(&a.topic, "churn");
    let mut configs = a.common.layout(Mode::Churn, a.clients, 0, &topic);
    for c in &mut configs {
        c.events = a.events;
        c.deadline_ns = deadline;
        c.churn = Some(ChurnConfig {
            min_events: a.min_events,
            max_events: a.max_events,
            max_delay_ms: a.max_delay.as_millis() as u64,
            rst_share: a.rst_share,
        });
    }
    let before = a.common.sample();
    watch.stage("opening streams");
    let mut fleet = match Fleet::spawn(&configs, &watch) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ssehub-loadtest: cannot start workers: {e}");
            return 1;
        }
    };
    let ready = match fleet.wait_ready() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ssehub-loadtest: {e}");
            return 1;
        }
    };
    let open: usize = ready.iter().map(|r| r.open).sum();
    eprintln!("ready clients={open}");
    let mut problems = Vec::new();
    if open < a.clients {
        problems.push(format!("only {open} of {} clients connected", a.clients));
    }
    std::thread::sleep(a.settle);
    watch.stage("publishing while clients churn");
    let plan = Plan {
        target: a.common.target,
        socket: a.common.socket.clone(),
        addr: a.common.addr,
        pub_path: a.common.pub_path.clone(),
        topic,
        events: a.events,
        rate: a.rate,
        size: a.size,
        start_ns: sys::mono_ns() + 50_000_000,
        closed_loop: false,
        realtime: false,
    };
    let cpu0 = a.common.sample();
    let self_cpu0 = sys::self_cpu_s();
    let outcome = match publisher::run(&plan) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ssehub-loadtest: {e}");
            return 1;
        }
    };
    if outcome.ok < a.events {
        problems.push(format!(
            "publisher: {} of {} events accepted ({})",
            outcome.ok,
            a.events,
            outcome.first_error.clone().unwrap_or_default()
        ));
    }
    watch.stage("letting every client catch up");
    fleet.send_all(&ToWorker::Finish {
        grace_ms: a.grace.as_millis() as u64,
    });
    let results = match fleet.wait_results() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ssehub-loadtest: {e}");
            return 1;
        }
    };
    let end_ns = sys::mono_ns();
    let cpu1 = a.common.sample();
    let self_cpu = sys::self_cpu_s() - self_cpu0;
    watch.stage("closing");
    fleet.finish();
    std::thread::sleep(Duration::from_millis(2500));
    let after = a.common.sample();
    prov.end();

    let sum = |f: fn(&WorkerResult) -> u64| results.iter().map(f).sum::<u64>();
    let mut counts = ChurnCounts::default();
    for r in &results {
        let c = &r.churn;
        counts.connects += c.connects;
        counts.streams_opened += c.streams_opened;
        counts.resumes += c.resumes;
        counts.resets += c.resets;
        counts.fin_closes += c.fin_closes;
        counts.rst_closes += c.rst_closes;
        counts.server_closes += c.server_closes;
        counts.connect_errors += c.connect_errors;
        for &(s, n) in &c.statuses {
            match counts.statuses.iter_mut().find(|(x, _)| *x == s) {
                Some((_, m)) => *m += n,
                None => counts.statuses.push((s, n)),
            }
        }
    }
    let missing = sum(|r| r.missing);
    let duplicates = sum(|r| r.duplicates);
    let complete: usize = results.iter().map(|r| r.complete).sum();
    let foreign = sum(|r| r.foreign);
    if missing > 0 || duplicates > 0 {
        problems.push(format!("missing {missing}, duplicated {duplicates}"));
    }
    if complete < a.clients {
        problems.push(format!(
            "{} clients did not get every event",
            a.clients - complete
        ));
    }
    if foreign > 0 {
        problems.push(format!("{foreign} events that are not load-test payloads"));
    }
    if after.fds > before.fds + 2 && a.common.server_pid.is_some() {
        problems.push(format!(
            "server holds {} descriptors after every client left ({} before)",
            after.fds, before.fds
        ));
    }
    for r in &results {
        for e in r.errors.iter().take(3) {
            eprintln!("worker error: {e}");
        }
    }
    let wall = end_ns.saturating_sub(plan.start_ns) as f64 / 1e9;
    let cpu = cpu1.cpu_s - cpu0.cpu_s;
    let report = Report {
        scenario: "churn",
        target: a.common.target.name(),
        label: a.common.label.clone(),
        ok: problems.is_empty(),
        problems,
        clients: a.clients,
        events: a.events,
        rate: a.rate,
        size: a.size,
        complete_clients: complete,
        deliveries: sum(|r| r.deliveries),
        missing,
        duplicates,
        missing_after_reset: sum(|r| r.missing_after_reset),
        foreign_events: foreign,
        connects_per_s: if wall > 0.0 {
            round1(counts.connects as f64 / wall)
        } else {
            0.0
        },
        server_cpu_ms_per_connect: if counts.connects > 0 {
            (cpu * 1000.0 / counts.connects as f64 * 1000.0).round() / 1000.0
        } else {
            0.0
        },
        counts,
        server_cpu_s: (cpu * 100.0).round() / 100.0,
        server_private_kib_before: before.private_kib,
        server_private_kib_after: after.private_kib,
        server_fds_before: before.fds,
        server_fds_after_close: after.fds,
        publish: outcome,
        workers: configs.len(),
        client_cpu_s: round1(results.iter().map(|r| r.cpu_s).sum::<f64>() + self_cpu),
        wall_s: round1(wall),
        provenance: prov,
    };
    println!("{}", serde_json::to_string(&report).expect("report"));
    eprintln!(
        "churn {}: clients={} complete={} connects={} resumes={} resets={} missing={} dup={} \
         after-reset={} connects/s={:.0}",
        report.target,
        report.clients,
        report.complete_clients,
        report.counts.connects,
        report.counts.resumes,
        report.counts.resets,
        report.missing,
        report.duplicates,
        report.missing_after_reset,
        report.connects_per_s,
    );
    for p in &report.problems {
        eprintln!("problem: {p}");
    }
    if report.ok { 0 } else { 1 }
}
