//! `fanout` against several nodes (cluster mode, SPEC 7): `--node ADDR[@PID]` names each
//! node, the subscribers are split evenly over them (each worker process targets one
//! node), and the result gains a `cluster` part: per node its streams, deliveries,
//! publish-to-receipt latency (that node's workers' histograms only), CPU time and
//! deliveries per CPU-second; the totals; and with `--redis-pid` Redis's CPU time over the
//! run and per event.
//!
//! CPU time here is the scheduler's own account, `/proc/PID/task/*/schedstat` (ns, every
//! thread), not the 10 ms ticks of `/proc/PID/stat`: Redis spends tens of microseconds
//! per event, so a run of a few hundred events costs it a handful of ticks. With
//! `--redis-addr`, Redis's own counters (`INFO commandstats`, before and after the events)
//! split that time into the commands (the publishing Function, the readers' `XREAD`) and
//! the rest (its event loop and socket I/O).

use crate::hist::{Hist, Summary};
use crate::proto::{Mode, WorkerConfig, WorkerResult};
use crate::run::{Common, round1};
use crate::{coord, sys};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One server node: its HTTP address and, when known, its pid (for CPU time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
}

/// `127.0.0.1:8080` or `127.0.0.1:8080@1234`.
pub fn parse_node(s: &str) -> Result<Node, String> {
    let (addr, pid) = match s.split_once('@') {
        Some((a, p)) => (
            a,
            Some(
                p.parse::<u32>()
                    .map_err(|_| format!("not a pid in --node {s:?}"))?,
            ),
        ),
        None => (s, None),
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("not an address in --node {s:?} (ADDR[@PID])"))?;
    Ok(Node { addr, pid })
}

/// CPU time of every thread of `pid`, in seconds, from the scheduler's nanosecond account
/// (`/proc/PID/task/*/schedstat`, first field); `None` when the kernel does not keep it.
pub fn task_cpu_s(pid: u32) -> Option<f64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut ns = 0u64;
    let mut any = false;
    for t in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(t.path().join("schedstat")) else {
            continue;
        };
        if let Some(v) = text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            ns += v;
            any = true;
        }
    }
    any.then_some(ns as f64 / 1e9)
}

/// CPU seconds of `pid`: the scheduler's account when there is one, else `/proc/PID/stat`.
pub fn cpu_s(pid: u32) -> f64 {
    task_cpu_s(pid).unwrap_or_else(|| sys::server_sample(pid).cpu_s)
}

/// CPU seconds of each node that has a pid (0 for the others).
pub fn cpu_of(nodes: &[Node]) -> Vec<f64> {
    nodes.iter().map(|n| n.pid.map_or(0.0, cpu_s)).collect()
}

/// Worker configurations for `streams` streams (`slow` of them slow) spread evenly over
/// `nodes`, and the node of each worker. Each node gets at least one worker, and at least
/// its share of `--workers`; workers are numbered, given source addresses and seeded over
/// the whole run, so no two share a source address.
pub fn layout(
    common: &Common,
    nodes: &[Node],
    mode: Mode,
    streams: usize,
    slow: usize,
    topic: &str,
) -> (Vec<WorkerConfig>, Vec<usize>) {
    let n = nodes.len().max(1);
    let mut configs = Vec::new();
    let mut node_of = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let share = |x: usize| x * (i + 1) / n - x * i / n;
        let mut c = common.clone();
        c.addr = node.addr;
        c.workers = common.workers.div_ceil(n);
        for cfg in c.layout(mode, share(streams), share(slow), topic) {
            configs.push(cfg);
            node_of.push(i);
        }
    }
    let total = configs.len();
    for (w, cfg) in configs.iter_mut().enumerate() {
        cfg.worker = w;
        cfg.sources = coord::sources(w, total, &common.sources);
        cfg.seed ^= (w as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    }
    (configs, node_of)
}

/// The last receipt (ns) of each event over `results`: when the slowest of their
/// subscribers had it (0: none had it).
pub fn last_receipts<'a>(
    results: impl Iterator<Item = &'a WorkerResult>,
    events: usize,
) -> Vec<u64> {
    let mut last = vec![0u64; events];
    for r in results {
        for (l, &t) in last.iter_mut().zip(&r.last_recv_ns) {
            *l = (*l).max(t);
        }
    }
    last
}

/// What the run knows that every node's report is read against.
pub struct RunFacts<'a> {
    pub events: u64,
    /// Write time of each event (publisher).
    pub sent_ns: &'a [u64],
    /// First event due to the last receipt anywhere, plus one publish interval (s).
    pub span_s: f64,
    /// Events the publisher had accepted.
    pub published: u64,
}

#[derive(Debug, Serialize)]
pub struct NodeReport {
    pub node: usize,
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    /// Subscribers placed on this node, and how many of them read (not slow).
    pub streams: usize,
    pub reading_streams: usize,
    pub streams_open: usize,
    pub workers: usize,
    pub deliveries: u64,
    pub expected_deliveries: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub closed_early: usize,
    pub latency_us: Summary,
    pub latency_sched_us: Summary,
    pub last_subscriber_us: Summary,
    /// This node's deliveries over the run's span.
    pub deliveries_per_s: f64,
    pub cpu_s: f64,
    /// CPU seconds per second of the span (1.0: one core fully busy).
    pub busy: f64,
    pub deliveries_per_cpu_s: f64,
    /// CPU microseconds per published event (fan-out to this node's streams included).
    pub cpu_us_per_event: f64,
}

/// One node's report from its workers' results (`mine`: the workers placed on it).
pub fn node_report(
    i: usize,
    node: Node,
    mine: &[(&WorkerConfig, &WorkerResult, usize)],
    cpu: f64,
    f: &RunFacts,
) -> NodeReport {
    let streams: usize = mine.iter().map(|(c, _, _)| c.streams).sum();
    let slow: usize = mine.iter().map(|(c, _, _)| c.slow).sum();
    let reading = streams - slow;
    let deliveries: u64 = mine.iter().map(|(_, r, _)| r.deliveries).sum();
    let mut lat = Hist::default();
    let mut lat_sched = Hist::default();
    for (_, r, _) in mine {
        lat.merge(&r.latency_sent);
        lat_sched.merge(&r.latency_sched);
    }
    let last = last_receipts(mine.iter().map(|(_, r, _)| *r), f.events as usize);
    let mut last_lag = Hist::default();
    for (seq, &t) in last.iter().enumerate() {
        if t == 0 || seq >= f.sent_ns.len() {
            continue;
        }
        last_lag.record(t.saturating_sub(f.sent_ns[seq]) / 1000);
    }
    let per = |x: f64, y: f64| if y > 0.0 { x / y } else { 0.0 };
    NodeReport {
        node: i,
        addr: node.addr,
        pid: node.pid,
        streams,
        reading_streams: reading,
        streams_open: mine.iter().map(|(_, _, open)| open).sum(),
        workers: mine.len(),
        deliveries,
        expected_deliveries: reading as u64 * f.events,
        missing: mine.iter().map(|(_, r, _)| r.missing).sum(),
        duplicates: mine.iter().map(|(_, r, _)| r.duplicates).sum(),
        closed_early: mine.iter().map(|(_, r, _)| r.closed_early).sum(),
        latency_us: lat.summary(),
        latency_sched_us: lat_sched.summary(),
        last_subscriber_us: last_lag.summary(),
        deliveries_per_s: round1(per(deliveries as f64, f.span_s)),
        cpu_s: round3(cpu),
        busy: round3(per(cpu, f.span_s)),
        deliveries_per_cpu_s: per(deliveries as f64, cpu).round(),
        cpu_us_per_event: round1(per(cpu * 1e6, f.published as f64)),
    }
}

/// The nodes together.
#[derive(Debug, Serialize)]
pub struct Totals {
    pub nodes: usize,
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    pub cpu_s: f64,
    pub deliveries_per_cpu_s: f64,
    pub cpu_us_per_event: f64,
    /// The worst node's p99 and max.
    pub latency_p99_us_worst_node: u64,
    pub latency_max_us: u64,
}

/// `cpu`: each node's CPU seconds over the run (unrounded).
pub fn totals(nodes: &[NodeReport], cpu: &[f64], f: &RunFacts) -> Totals {
    let deliveries: u64 = nodes.iter().map(|n| n.deliveries).sum();
    let cpu: f64 = cpu.iter().sum();
    Totals {
        nodes: nodes.len(),
        deliveries,
        deliveries_per_s: round1(if f.span_s > 0.0 {
            deliveries as f64 / f.span_s
        } else {
            0.0
        }),
        cpu_s: round3(cpu),
        deliveries_per_cpu_s: if cpu > 0.0 {
            (deliveries as f64 / cpu).round()
        } else {
            0.0
        },
        cpu_us_per_event: round1(if f.published > 0 {
            cpu * 1e6 / f.published as f64
        } else {
            0.0
        }),
        latency_p99_us_worst_node: nodes.iter().map(|n| n.latency_us.p99).max().unwrap_or(0),
        latency_max_us: nodes.iter().map(|n| n.latency_us.max).max().unwrap_or(0),
    }
}

/// Calls and microseconds spent inside each command, from `INFO commandstats`.
pub type CommandStats = BTreeMap<String, (u64, u64)>;

/// Redis's `INFO commandstats` over one connection (RESP, loopback).
pub fn commandstats(addr: SocketAddr) -> Result<CommandStats, String> {
    let err = |e: std::io::Error| format!("redis {addr}: {e}");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(err)?;
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        .map_err(err)?;
    let mut r = BufReader::new(s);
    let mut head = String::new();
    r.read_line(&mut head).map_err(err)?;
    let len: usize = head
        .strip_prefix('$')
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("redis {addr}: unexpected reply {:?}", head.trim()))?;
    let mut body = vec![0; len];
    r.read_exact(&mut body).map_err(err)?;
    Ok(parse_commandstats(&String::from_utf8_lossy(&body)))
}

/// `cmdstat_xread:calls=12,usec=340,usec_per_call=28.33,...` lines → name → (calls, usec).
pub fn parse_commandstats(text: &str) -> CommandStats {
    let mut out = CommandStats::new();
    for line in text.lines() {
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.trim_end().split_once(':'))
        else {
            continue;
        };
        let field = |k: &str| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.insert(name.to_string(), (field("calls"), field("usec")));
    }
    out
}

/// One command's share of the events: calls and time inside it per published event.
#[derive(Debug, Serialize, PartialEq)]
pub struct CommandCost {
    pub command: String,
    pub calls: u64,
    pub usec: u64,
    pub calls_per_event: f64,
    pub usec_per_event: f64,
}

/// The commands' costs between two snapshots, the most expensive first (`info`, the
/// snapshots' own command, left out).
pub fn command_costs(before: &CommandStats, after: &CommandStats, events: u64) -> Vec<CommandCost> {
    let per = |x: u64| {
        if events > 0 {
            (x as f64 / events as f64 * 100.0).round() / 100.0
        } else {
            0.0
        }
    };
    let mut v: Vec<CommandCost> = after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .filter_map(|(name, &(calls, usec))| {
            let (c0, u0) = before.get(name).copied().unwrap_or((0, 0));
            let (calls, usec) = (calls.saturating_sub(c0), usec.saturating_sub(u0));
            (calls > 0).then(|| CommandCost {
                command: name.clone(),
                calls,
                usec,
                calls_per_event: per(calls),
                usec_per_event: per(usec),
            })
        })
        .collect();
    v.sort_by(|a, b| b.usec.cmp(&a.usec).then(a.command.cmp(&b.command)));
    v
}

/// Redis's CPU time: idle (before the first event) and over the events.
#[derive(Debug, Serialize)]
pub struct RedisReport {
    pub pid: u32,
    /// CPU seconds from just before the first event to the last receipt.
    pub cpu_s: f64,
    pub window_s: f64,
    /// CPU seconds per second with the nodes connected and nothing published (its timers
    /// and the readers' idle `XREAD BLOCK` round trips), measured over `idle_window_s`.
    pub idle_cpu_per_s: f64,
    pub idle_window_s: f64,
    /// `cpu_s` per published event, in µs.
    pub cpu_us_per_event: f64,
    /// The same less the idle rate over the window: what the events themselves cost.
    pub cpu_us_per_event_net: f64,
    /// With `--redis-addr`: time inside commands over the same window (`INFO
    /// commandstats`), per event, and per command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_commands_us_per_event: Option<f64>,
    /// `cpu_us_per_event_net` less that: Redis's event loop and socket reads and writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outside_commands_us_per_event: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<CommandCost>,
}

/// Redis CPU samples: `idle0`..`idle1` with nothing published, `cpu0`..`cpu1` over the
/// events (seconds of CPU, at the given monotonic times in ns).
pub struct RedisSamples {
    pub pid: u32,
    pub idle0: (u64, f64),
    pub idle1: (u64, f64),
    pub run0: (u64, f64),
    pub run1: (u64, f64),
    /// `INFO commandstats` at `run0` and `run1` (with `--redis-addr`).
    pub stats: Option<(CommandStats, CommandStats)>,
}

impl RedisSamples {
    pub fn report(&self, published: u64) -> RedisReport {
        let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e9;
        let idle_window = secs(self.idle0.0, self.idle1.0);
        let idle_rate = if idle_window > 0.0 {
            (self.idle1.1 - self.idle0.1).max(0.0) / idle_window
        } else {
            0.0
        };
        let window = secs(self.run0.0, self.run1.0);
        let cpu = (self.run1.1 - self.run0.1).max(0.0);
        let per_event = |c: f64| {
            if published > 0 {
                round1(c * 1e6 / published as f64)
            } else {
                0.0
            }
        };
        let net = per_event((cpu - idle_rate * window).max(0.0));
        let commands = self
            .stats
            .as_ref()
            .map(|(b, a)| command_costs(b, a, published))
            .unwrap_or_default();
        let inside = self.stats.as_ref().map(|_| {
            let usec: u64 = commands.iter().map(|c| c.usec).sum();
            per_event(usec as f64 / 1e6)
        });
        RedisReport {
            pid: self.pid,
            cpu_s: round4(cpu),
            window_s: round3(window),
            idle_cpu_per_s: round4(idle_rate),
            idle_window_s: round3(idle_window),
            cpu_us_per_event: per_event(cpu),
            cpu_us_per_event_net: net,
            in_commands_us_per_event: inside,
            outside_commands_us_per_event: inside.map(|i| round1(net - i)),
            commands,
        }
    }
}

/// The `cluster` part of a fanout result.
#[derive(Debug, Serialize)]
pub struct ClusterPart {
    pub nodes: Vec<NodeReport>,
    pub total: Totals,
    pub redis: Option<RedisReport>,
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Target;

    fn common() -> Common {
        Common {
            target: Target::Ssehub,
            addr: "127.0.0.1:8080".parse().unwrap(),
            socket: "./s.sock".into(),
            sub_path: "/events?topic=".into(),
            pub_path: "/pub?topic=".into(),
            server_pid: None,
            sources: Vec::new(),
            workers: 0,
            max_per_worker: Some(300),
            connect_timeout: std::time::Duration::from_secs(1),
            deadline: None,
            label: None,
            tls_ca: None,
            tls12: false,
            pub_addr: None,
        }
    }

    #[test]
    fn nodes_parse() {
        assert_eq!(
            parse_node("127.0.0.1:9000@42").unwrap(),
            Node {
                addr: "127.0.0.1:9000".parse().unwrap(),
                pid: Some(42)
            }
        );
        assert_eq!(parse_node("127.0.0.1:9000").unwrap().pid, None);
        assert!(parse_node("127.0.0.1:9000@x").is_err());
        assert!(parse_node("localhost@1").is_err());
    }

    #[test]
    fn subscribers_spread_evenly_over_nodes() {
        let nodes = [
            parse_node("127.0.0.1:9000@1").unwrap(),
            parse_node("127.0.0.1:9001@2").unwrap(),
        ];
        let (configs, node_of) = layout(&common(), &nodes, Mode::Fanout, 1001, 11, "t");
        // 500 and 501 streams, each node within 300 per worker: 2 workers each.
        assert_eq!(node_of, vec![0, 0, 1, 1]);
        let per_node = |i: usize, f: fn(&WorkerConfig) -> usize| -> usize {
            configs
                .iter()
                .zip(&node_of)
                .filter(|(_, n)| **n == i)
                .map(|(c, _)| f(c))
                .sum()
        };
        assert_eq!(per_node(0, |c| c.streams), 500);
        assert_eq!(per_node(1, |c| c.streams), 501);
        assert_eq!(per_node(0, |c| c.slow) + per_node(1, |c| c.slow), 11);
        for (c, &n) in configs.iter().zip(&node_of) {
            assert_eq!(c.addr, nodes[n].addr);
        }
        // Numbered over the run, own source addresses, own seeds.
        for (w, c) in configs.iter().enumerate() {
            assert_eq!(c.worker, w);
            for d in &configs[w + 1..] {
                assert!(c.sources.iter().all(|s| !d.sources.contains(s)));
                assert_ne!(c.seed, d.seed);
            }
        }
        // --workers is shared out: at least 3 over 2 nodes gives 2 each.
        let mut c = common();
        c.max_per_worker = None;
        c.workers = 3;
        let (configs, node_of) = layout(&c, &nodes, Mode::Fanout, 10, 0, "t");
        assert_eq!(node_of, vec![0, 0, 1, 1]);
        assert_eq!(configs.iter().map(|c| c.streams).sum::<usize>(), 10);
    }

    #[test]
    fn redis_cost_less_idle() {
        let s = RedisSamples {
            pid: 1,
            idle0: (0, 1.0),
            idle1: (2_000_000_000, 1.002),
            run0: (3_000_000_000, 1.003),
            run1: (7_000_000_000, 1.023),
            stats: None,
        };
        let r = s.report(200);
        assert_eq!(r.cpu_s, 0.02);
        assert_eq!(r.idle_cpu_per_s, 0.001);
        assert_eq!(r.cpu_us_per_event, 100.0);
        // 0.02 s less 4 s × 0.001 s/s = 0.016 s over 200 events.
        assert_eq!(r.cpu_us_per_event_net, 80.0);
        assert_eq!(r.in_commands_us_per_event, None);
        assert!(r.commands.is_empty());
    }

    #[test]
    fn command_costs_between_snapshots() {
        let before = parse_commandstats(
            "# Commandstats\r\ncmdstat_fcall:calls=10,usec=300,usec_per_call=30.00,rejected_calls=0,failed_calls=0\r\n\
             cmdstat_info:calls=1,usec=20,usec_per_call=20.00,rejected_calls=0,failed_calls=0\r\n",
        );
        assert_eq!(before["fcall"], (10, 300));
        let after = parse_commandstats(
            "cmdstat_fcall:calls=210,usec=6300,usec_per_call=30.00\r\n\
             cmdstat_xread:calls=400,usec=4000,usec_per_call=10.00\r\n\
             cmdstat_info:calls=2,usec=40,usec_per_call=20.00\r\n\
             cmdstat_ping:calls=0,usec=0,usec_per_call=0.00\r\n",
        );
        let c = command_costs(&before, &after, 200);
        assert_eq!(
            c,
            vec![
                CommandCost {
                    command: "fcall".into(),
                    calls: 200,
                    usec: 6000,
                    calls_per_event: 1.0,
                    usec_per_event: 30.0
                },
                CommandCost {
                    command: "xread".into(),
                    calls: 400,
                    usec: 4000,
                    calls_per_event: 2.0,
                    usec_per_event: 20.0
                },
            ]
        );
        let s = RedisSamples {
            pid: 1,
            idle0: (0, 0.0),
            idle1: (1_000_000_000, 0.0),
            run0: (1_000_000_000, 0.0),
            run1: (2_000_000_000, 0.02),
            stats: Some((before, after)),
        };
        let r = s.report(200);
        assert_eq!(r.cpu_us_per_event_net, 100.0);
        assert_eq!(r.in_commands_us_per_event, Some(50.0));
        assert_eq!(r.outside_commands_us_per_event, Some(50.0));
    }

    #[test]
    fn own_cpu_is_read_in_nanoseconds() {
        let a = task_cpu_s(std::process::id()).expect("schedstat");
        let t = std::time::Instant::now();
        let mut x = 0u64;
        let mut b = a;
        while b - a < 0.002 && t.elapsed() < std::time::Duration::from_secs(10) {
            for _ in 0..10_000 {
                x = x.wrapping_mul(31).wrapping_add(7);
            }
            b = task_cpu_s(std::process::id()).unwrap();
        }
        std::hint::black_box(x);
        assert!(b - a >= 0.002, "{a} -> {b}");
    }
}
