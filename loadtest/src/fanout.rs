//! `fanout` and `slow`: N subscribers on one topic, M events of S bytes published at R
//! events/s on an open-loop schedule.
//!
//! Reported: publish-to-receipt latency from the time the publisher wrote each event and
//! from the time the schedule meant it to (so a late publisher does not flatter the
//! server), the time until the last subscriber had each event, deliveries per second
//! (over the whole run, and the sustained rate from the last subscriber's pace over the
//! last three quarters of the events: below 95% of the offered rate the run is a
//! saturation run and the achieved rate is the figure to quote, not the latency; so is a
//! run where the server was busy more than 90% of the time),
//! deliveries per server CPU-second (`/proc/PID/stat` utime+stime) and per server write
//! call (ssehub: its `ssehub_writes_total`; nginx: `syscw` of `/proc/PID/io`), missing and duplicate counts (must be 0).
//!
//! Several nodes (cluster mode): `--node ADDR[@PID]`, repeated, replaces `--addr` and
//! `--server-pid`; the subscribers are split evenly over the nodes, the publisher still
//! writes to `--socket` (one node's ingest socket), and the result gains a `cluster` part
//! with each node's figures, the totals and, with `--redis-pid`, Redis's CPU per event
//! (see `cluster`). The top-level server figures are then summed over the nodes.
//!
//! `slow`: a share of the subscribers (small `SO_RCVBUF`) stop reading after the response
//! head. The others' latency is reported as above, the server's memory and descriptors are
//! sampled every second, and at the end the slow ones read again: each must find its
//! stream ended by the server (its limits cut it).

use crate::cluster::{self, ClusterPart, Node, RedisSamples, RunFacts};
use crate::coord::{Fleet, Watch};
use crate::hist::{Hist, Summary};
use crate::proto::{Mode, Target, ToWorker, WorkerResult};
use crate::publisher::{self, Plan};
use crate::run::{Common, Provenance, Sampler, parse_duration, round1, topic};
use crate::sys::{self, ServerSample};
use serde::Serialize;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Subscribers (streams).
    #[arg(long, alias = "streams", default_value_t = 200)]
    pub subscribers: usize,
    /// Events to publish.
    #[arg(long, default_value_t = 50)]
    pub events: u64,
    /// Payload bytes per event (at least the ~45 bytes of sequence and timestamps).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Events per second (open-loop schedule).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// The publisher waits for each event's answer before writing the next (its
    /// `events_per_s` then shows the rate it could keep).
    #[arg(long)]
    pub closed_loop: bool,
    /// Run the publisher's threads at real-time priority (`SCHED_FIFO`; needs
    /// CAP_SYS_NICE): its answer round trip then leaves out the wait for this core, which
    /// the workers reading deliveries keep busy.
    #[arg(long)]
    pub publisher_rt: bool,
    /// Topic (default: one of this run's own).
    #[arg(long)]
    pub topic: Option<String>,
    /// Share of subscribers that stop reading (default 0 for fanout, 0.1 for slow).
    #[arg(long)]
    pub slow_share: Option<f64>,
    /// SO_RCVBUF of a slow subscriber's socket.
    #[arg(long, default_value_t = 4096)]
    pub slow_rcvbuf: usize,
    /// Pause between the last stream opening and the first event.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Time allowed after the last event for every subscriber to have everything.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Whether every slow subscriber must have been disconnected by the server (a
    /// problem otherwise). Kernel socket buffers absorb megabytes per stream on loopback
    /// before a server sees backpressure, so a low byte rate may never reach the limits.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub expect_cut: bool,
    /// Server memory sampling interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub sample_every: Duration,
    /// A server node, `ADDR[@PID]` (repeat for several). Given, the nodes replace `--addr`
    /// and `--server-pid`: subscribers are split evenly over them, events are published
    /// to `--socket`, and the result reports each node.
    #[arg(long = "node", value_name = "ADDR[@PID]", value_parser = cluster::parse_node)]
    pub nodes: Vec<Node>,
    /// Redis's pid (cluster mode): its CPU time over the events and per event.
    #[arg(long)]
    pub redis_pid: Option<u32>,
    /// Redis's address (loopback, with `--redis-pid`): its `INFO commandstats` before and
    /// after the events split its CPU time into commands and the rest.
    #[arg(long)]
    pub redis_addr: Option<std::net::SocketAddr>,
}

#[derive(Serialize)]
struct SlowPart {
    slow_streams: usize,
    /// Slow streams the server disconnected (what its limits must do).
    slow_cut: usize,
    /// Slow streams still open with every event (not cut).
    slow_kept: usize,
    slow_deliveries: u64,
}

#[derive(Serialize)]
struct Report {
    scenario: &'static str,
    target: &'static str,
    label: Option<String>,
    ok: bool,
    problems: Vec<String>,
    subscribers: usize,
    reading_subscribers: usize,
    events: u64,
    size: usize,
    rate: f64,
    deliveries: u64,
    expected_deliveries: u64,
    missing: u64,
    duplicates: u64,
    closed_early: usize,
    foreign_events: u64,
    latency_us: Summary,
    latency_sched_us: Summary,
    last_subscriber_us: Summary,
    last_subscriber_sched_us: Summary,
    offered_deliveries_per_s: f64,
    achieved_deliveries_per_s: f64,
    sustained_deliveries_per_s: f64,
    saturated: bool,
    server_cpu_s: f64,
    /// Server CPU seconds per second of the run (1.0: one core fully busy).
    server_busy: f64,
    deliveries_per_cpu_s: f64,
    server_writes: u64,
    deliveries_per_write: f64,
    slow: Option<SlowPart>,
    server_private_kib_before: u64,
    server_private_kib_peak: u64,
    server_private_kib_end: u64,
    server_fds_before: u64,
    server_fds_peak: u64,
    server_fds_after_close: u64,
    memory_series: Vec<(f64, u64, u64)>,
    /// Per node, totals and Redis (only with `--node` or `--redis-pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterPart>,
    publish: publisher::Outcome,
    workers: usize,
    connect_ms: u64,
    client_cpu_s: f64,
    wall_s: f64,
    #[serde(flatten)]
    provenance: Provenance,
}

pub fn run(a: Args, slow_scenario: bool) -> i32 {
    if let Err(e) = a.common.check() {
        eprintln!("ssehub-loadtest: {e}");
        return 2;
    }
    if a.events == 0 || a.rate <= 0.0 || a.subscribers == 0 {
        eprintln!("ssehub-loadtest: --subscribers, --events and --rate must be positive");
        return 2;
    }
    if a.events > 10_000_000 {
        eprintln!("ssehub-loadtest: at most 10,000,000 events per run");
        return 2;
    }
    if !a.nodes.is_empty() && a.common.server_pid.is_some() {
        eprintln!("ssehub-loadtest: --node ADDR@PID replaces --server-pid");
        return 2;
    }
    if a.nodes.iter().any(|n| !n.addr.ip().is_loopback()) {
        eprintln!("ssehub-loadtest: loopback targets and sources only");
        return 2;
    }
    if a.redis_addr.is_some_and(|r| !r.ip().is_loopback()) {
        eprintln!("ssehub-loadtest: loopback targets and sources only");
        return 2;
    }
    if a.redis_addr.is_some() && a.redis_pid.is_none() {
        eprintln!("ssehub-loadtest: --redis-addr needs --redis-pid");
        return 2;
    }
    if a.subscribers < a.nodes.len() {
        eprintln!("ssehub-loadtest: fewer subscribers than nodes");
        return 2;
    }
    let per_node = !a.nodes.is_empty() || a.redis_pid.is_some();
    let nodes = if a.nodes.is_empty() {
        vec![Node {
            addr: a.common.addr,
            pid: a.common.server_pid,
        }]
    } else {
        a.nodes.clone()
    };
    let share = a
        .slow_share
        .unwrap_or(if slow_scenario { 0.1 } else { 0.0 })
        .clamp(0.0, 1.0);
    let slow = (a.subscribers as f64 * share).round() as usize;
    let mut prov = Provenance::start();
    let publish_s = a.events as f64 / a.rate;
    let total = a.common.deadline.unwrap_or(
        a.common.connect_timeout
            + a.settle
            + Duration::from_secs_f64(publish_s)
            + a.grace
            + Duration::from_secs(30),
    );
    let deadline = sys::mono_ns() + total.as_nanos() as u64;
    let watch = Watch::start(deadline, total.as_secs_f64());
    let topic = topic(&a.topic, if slow_scenario { "slow" } else { "fanout" });
    let (mut configs, node_of) =
        cluster::layout(&a.common, &nodes, Mode::Fanout, a.subscribers, slow, &topic);
    for c in &mut configs {
        c.events = a.events;
        c.slow_rcvbuf = a.slow_rcvbuf;
        c.deadline_ns = deadline;
    }
    let before = sample_all(&nodes);
    let samplers: Vec<Sampler> = nodes
        .iter()
        .map(|n| Sampler::start(n.pid, a.sample_every))
        .collect();
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
    let connect_ms = ready.iter().map(|r| r.connect_ms).max().unwrap_or(0);
    eprintln!("ready streams={open} after_ms={connect_ms}");
    let mut problems = Vec::new();
    if open < a.subscribers {
        let first = ready.iter().find_map(|r| r.first_error.clone());
        problems.push(format!(
            "only {open} of {} streams opened (first error: {})",
            a.subscribers,
            first.unwrap_or_else(|| "none".into())
        ));
    }
    let redis_cpu = |pid: u32| (sys::mono_ns(), cluster::cpu_s(pid));
    let redis_idle0 = a.redis_pid.map(redis_cpu);
    std::thread::sleep(a.settle);
    let redis_idle1 = a.redis_pid.map(redis_cpu);
    watch.stage("publishing");
    let plan = Plan {
        target: a.common.target,
        socket: a.common.socket.clone(),
        addr: a.common.pub_addr.unwrap_or(a.common.addr),
        pub_path: a.common.pub_path.clone(),
        topic: topic.clone(),
        events: a.events,
        rate: a.rate,
        size: a.size,
        start_ns: sys::mono_ns() + 50_000_000,
        closed_loop: a.closed_loop,
        realtime: a.publisher_rt,
    };
    let cpu0 = sample_all(&nodes);
    let ssehub_writes = |nodes: &[Node]| -> Option<u64> {
        (a.common.target == Target::Ssehub && nodes.len() == 1)
            .then(|| metric_value(nodes[0].addr, "ssehub_writes_total"))
            .flatten()
    };
    let writes0 = ssehub_writes(&nodes);
    let node_cpu0 = cluster::cpu_of(&nodes);
    let redis_run0 = a.redis_pid.map(redis_cpu);
    let stats = |when: &str| {
        a.redis_addr.and_then(|r| match cluster::commandstats(r) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("ssehub-loadtest: INFO commandstats {when}: {e}");
                None
            }
        })
    };
    let stats0 = stats("before");
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
    watch.stage("waiting for the last deliveries");
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
    let cpu1 = sample_all(&nodes);
    let writes1 = ssehub_writes(&nodes);
    let node_cpu1 = cluster::cpu_of(&nodes);
    let stats1 = stats("after");
    let redis_run1 = a.redis_pid.map(redis_cpu);
    let self_cpu = sys::self_cpu_s() - self_cpu0;
    let end_ns = sys::mono_ns();
    watch.stage("closing");
    fleet.finish();
    std::thread::sleep(Duration::from_millis(1500));
    let after = sample_all(&nodes);
    let series = sum_series(samplers.into_iter().map(Sampler::finish).collect());
    prov.end();

    let sum = |f: fn(&WorkerResult) -> u64| results.iter().map(f).sum::<u64>();
    let reading = a.subscribers - slow;
    let deliveries = sum(|r| r.deliveries);
    let missing = sum(|r| r.missing);
    let duplicates = sum(|r| r.duplicates);
    let closed_early: usize = results.iter().map(|r| r.closed_early).sum();
    let foreign = sum(|r| r.foreign);
    let mut lat = Hist::default();
    let mut lat_sched = Hist::default();
    for r in &results {
        lat.merge(&r.latency_sent);
        lat_sched.merge(&r.latency_sched);
    }
    // The last subscriber's receipt of each event, over all workers.
    let m = a.events as usize;
    let last = cluster::last_receipts(results.iter(), m);
    let mut last_lag = Hist::default();
    let mut last_lag_sched = Hist::default();
    for (seq, &t) in last.iter().enumerate() {
        if t == 0 || seq >= outcome.sent_ns.len() {
            continue;
        }
        last_lag.record(t.saturating_sub(outcome.sent_ns[seq]) / 1000);
        last_lag_sched.record(t.saturating_sub(plan.sched_ns(seq as u64)) / 1000);
    }
    let last_any = last.iter().copied().max().unwrap_or(0);
    // From the first event due to the last receipt, plus one publish interval (M events
    // span M intervals), so a server that keeps up scores the offered rate.
    let span_s = last_any.saturating_sub(plan.start_ns) as f64 / 1e9 + 1.0 / a.rate;
    let achieved = if span_s > 0.0 {
        deliveries as f64 / span_s
    } else {
        0.0
    };
    // Sustained pace: the last subscriber's progress over the last three quarters.
    let k1 = m / 4;
    let k2 = m - 1;
    let sustained = if m >= 8 && last[k1] > 0 && last[k2] > last[k1] {
        (k2 - k1) as f64 / ((last[k2] - last[k1]) as f64 / 1e9) * reading as f64
    } else {
        achieved
    };
    let offered = a.rate * reading as f64;
    let cpu = cpu1.cpu_s - cpu0.cpu_s;
    // Share of one core the server used while events were flowing.
    let busy = if span_s > 0.0 { cpu / span_s } else { 0.0 };
    let cluster = per_node.then(|| {
        let facts = RunFacts {
            events: a.events,
            sent_ns: &outcome.sent_ns,
            span_s,
            published: outcome.ok,
        };
        let node_cpu: Vec<f64> = node_cpu1
            .iter()
            .zip(&node_cpu0)
            .map(|(b, a)| b - a)
            .collect();
        let reports: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, &node)| {
                let mine: Vec<_> = configs
                    .iter()
                    .zip(&results)
                    .zip(&ready)
                    .zip(&node_of)
                    .filter(|(_, n)| **n == i)
                    .map(|(((c, r), rd), _)| (c, r, rd.open))
                    .collect();
                cluster::node_report(i, node, &mine, node_cpu[i], &facts)
            })
            .collect();
        let redis = match (
            a.redis_pid,
            redis_idle0,
            redis_idle1,
            redis_run0,
            redis_run1,
        ) {
            (Some(pid), Some(idle0), Some(idle1), Some(run0), Some(run1)) => Some(
                RedisSamples {
                    pid,
                    idle0,
                    idle1,
                    run0,
                    run1,
                    stats: stats0.zip(stats1),
                }
                .report(outcome.ok),
            ),
            _ => None,
        };
        ClusterPart {
            total: cluster::totals(&reports, &node_cpu, &facts),
            nodes: reports,
            redis,
        }
    });
    let node_busy_max = cluster
        .as_ref()
        .and_then(|c| c.nodes.iter().map(|n| n.busy).reduce(f64::max))
        .unwrap_or(busy);
    let saturated = sustained < 0.95 * offered || node_busy_max > 0.9;
    // ssehub counts its own write calls (`send` for one frame is not in `syscw`); for
    // nginx `syscw` (write/writev; its `send` calls are not counted either).
    let writes = match (writes0, writes1) {
        (Some(w0), Some(w1)) => w1.saturating_sub(w0),
        _ => cpu1.syscw.saturating_sub(cpu0.syscw),
    };
    let slow_cut: usize = results.iter().map(|r| r.slow_cut).sum();
    let slow_kept: usize = results.iter().map(|r| r.slow_kept).sum();
    let slow_part = (slow > 0).then(|| SlowPart {
        slow_streams: slow,
        slow_cut,
        slow_kept,
        slow_deliveries: sum(|r| r.slow_deliveries),
    });
    if missing > 0 || duplicates > 0 {
        problems.push(format!("missing {missing}, duplicated {duplicates}"));
    }
    for n in cluster.iter().flat_map(|c| &c.nodes) {
        if n.missing > 0 || n.duplicates > 0 || n.deliveries < n.expected_deliveries {
            problems.push(format!(
                "node {} ({}): {} of {} deliveries, missing {}, duplicated {}",
                n.node, n.addr, n.deliveries, n.expected_deliveries, n.missing, n.duplicates
            ));
        }
    }
    if closed_early > 0 {
        problems.push(format!("{closed_early} reading streams ended early"));
    }
    if foreign > 0 {
        problems.push(format!("{foreign} events that are not load-test payloads"));
    }
    if a.expect_cut && slow > 0 && slow_cut < slow {
        problems.push(format!(
            "only {slow_cut} of {slow} slow subscribers were disconnected by the server"
        ));
    }
    for r in &results {
        for e in r.errors.iter().take(3) {
            eprintln!("worker error: {e}");
        }
    }
    let report = Report {
        scenario: if slow_scenario { "slow" } else { "fanout" },
        target: a.common.target.name(),
        label: a.common.label.clone(),
        ok: problems.is_empty(),
        problems,
        subscribers: a.subscribers,
        reading_subscribers: reading,
        events: a.events,
        size: a.size,
        rate: a.rate,
        deliveries,
        expected_deliveries: reading as u64 * a.events,
        missing,
        duplicates,
        closed_early,
        foreign_events: foreign,
        latency_us: lat.summary(),
        latency_sched_us: lat_sched.summary(),
        last_subscriber_us: last_lag.summary(),
        last_subscriber_sched_us: last_lag_sched.summary(),
        offered_deliveries_per_s: round1(offered),
        achieved_deliveries_per_s: round1(achieved),
        sustained_deliveries_per_s: round1(sustained),
        saturated,
        server_cpu_s: (cpu * 100.0).round() / 100.0,
        server_busy: (busy * 100.0).round() / 100.0,
        deliveries_per_cpu_s: if cpu > 0.0 {
            (deliveries as f64 / cpu).round()
        } else {
            0.0
        },
        server_writes: writes,
        deliveries_per_write: if writes > 0 {
            (deliveries as f64 / writes as f64 * 100.0).round() / 100.0
        } else {
            0.0
        },
        slow: slow_part,
        server_private_kib_before: before.private_kib,
        server_private_kib_peak: series.iter().map(|s| s.1).max().unwrap_or(0),
        server_private_kib_end: cpu1.private_kib,
        server_fds_before: before.fds,
        server_fds_peak: series.iter().map(|s| s.2).max().unwrap_or(0),
        server_fds_after_close: after.fds,
        memory_series: series,
        cluster,
        publish: outcome,
        workers: configs.len(),
        connect_ms,
        client_cpu_s: round1(results.iter().map(|r| r.cpu_s).sum::<f64>() + self_cpu),
        wall_s: round1(end_ns.saturating_sub(plan.start_ns) as f64 / 1e9),
        provenance: prov,
    };
    println!("{}", serde_json::to_string(&report).expect("report"));
    eprintln!(
        "{} {}: deliveries={} missing={} dup={} p50={}us p99={}us max={}us last-subscriber p99={}us \
         sustained={:.0}/s offered={:.0}/s saturated={} per-cpu-s={:.0} per-write={:.2} \
         answer p50={}us p99={}us events/s={:.1}",
        report.scenario,
        report.target,
        report.deliveries,
        report.missing,
        report.duplicates,
        report.latency_us.p50,
        report.latency_us.p99,
        report.latency_us.max,
        report.last_subscriber_us.p99,
        report.sustained_deliveries_per_s,
        report.offered_deliveries_per_s,
        report.saturated,
        report.deliveries_per_cpu_s,
        report.deliveries_per_write,
        report.publish.answer.p50,
        report.publish.answer.p99,
        report.publish.events_per_s,
    );
    for n in report.cluster.iter().flat_map(|c| &c.nodes) {
        eprintln!(
            "node {} {}: streams={} deliveries={} missing={} dup={} p50={}us p99={}us max={}us \
             cpu={:.3}s per-cpu-s={:.0}",
            n.node,
            n.addr,
            n.streams,
            n.deliveries,
            n.missing,
            n.duplicates,
            n.latency_us.p50,
            n.latency_us.p99,
            n.latency_us.max,
            n.cpu_s,
            n.deliveries_per_cpu_s,
        );
    }
    if let Some(r) = report.cluster.as_ref().and_then(|c| c.redis.as_ref()) {
        eprintln!(
            "redis: cpu={:.4}s over {:.2}s, {:.1}us/event ({:.1}us less its idle {:.4}s/s)",
            r.cpu_s, r.window_s, r.cpu_us_per_event, r.cpu_us_per_event_net, r.idle_cpu_per_s
        );
        if let Some(inside) = r.in_commands_us_per_event {
            let list: Vec<String> = r
                .commands
                .iter()
                .map(|c| {
                    format!(
                        "{} {}/event {}us/event",
                        c.command, c.calls_per_event, c.usec_per_event
                    )
                })
                .collect();
            eprintln!(
                "redis: {inside:.1}us/event inside commands ({}), {:.1}us/event outside",
                list.join(", "),
                r.outside_commands_us_per_event.unwrap_or(0.0)
            );
        }
    }
    for p in &report.problems {
        eprintln!("problem: {p}");
    }
    if report.ok { 0 } else { 1 }
}

/// Every node's sample, summed (one node: its own).
fn sample_all(nodes: &[Node]) -> ServerSample {
    let mut sum = ServerSample::default();
    for s in nodes.iter().filter_map(|n| n.pid).map(sys::server_sample) {
        sum.private_kib += s.private_kib;
        sum.cpu_s += s.cpu_s;
        sum.syscw += s.syscw;
        sum.fds += s.fds;
        sum.processes += s.processes;
    }
    sum
}

/// The nodes' memory series added sample by sample (they sample in step; the shortest
/// bounds the sum). One node: its own series.
fn sum_series(mut all: Vec<Vec<(f64, u64, u64)>>) -> Vec<(f64, u64, u64)> {
    if all.len() <= 1 {
        return all.pop().unwrap_or_default();
    }
    let len = all.iter().map(Vec::len).min().unwrap_or(0);
    (0..len)
        .map(|k| {
            let t = all[0][k].0;
            let kib = all.iter().map(|s| s[k].1).sum();
            let fds = all.iter().map(|s| s[k].2).sum();
            (t, kib, fds)
        })
        .collect()
}

/// One unlabelled sample from the server's `/metrics` (loopback, a plain GET).
fn metric_value(addr: std::net::SocketAddr, name: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: loadtest\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_add_up_in_step() {
        assert!(sum_series(vec![]).is_empty());
        let one = vec![(0.0, 10, 1), (1.0, 12, 2)];
        assert_eq!(sum_series(vec![one.clone()]), one);
        let two = vec![(0.0, 5, 3), (1.0, 6, 4), (2.0, 7, 5)];
        assert_eq!(sum_series(vec![one, two]), vec![(0.0, 15, 4), (1.0, 18, 6)]);
    }
}
