//! `ssehub-loadtest`: load generators that talk to a server over loopback only, one
//! subcommand per scenario. Each prints one JSON line with its result on stdout (progress
//! on stderr) and exits 0 when the run was correct, 1 when something was missing,
//! duplicated or refused, 2 on a usage error, 3 when the hard deadline passed.
//!
//! - `idle`: N streams held; server private memory per stream (`smaps_rollup`), kernel
//!   memory (`Slab`), keepalives seen.
//! - `fanout`: N subscribers × M events of S bytes at R events/s on one topic; latency from
//!   the publish time and from the scheduled time, the last subscriber's time per event,
//!   deliveries per second, per server CPU-second and per server write call.
//! - `slow`: `fanout` where a share of the subscribers stop reading: the others' latency,
//!   server memory over time, and whether the server cut the slow ones.
//! - `churn`: clients connect, read some events, disconnect (FIN or RST), resume with
//!   `Last-Event-ID`; every client must see every event exactly once.
//! - `floor`: one plain `write()` per delivery from a minimal in-process server: the
//!   machine's floor against which deliveries per CPU-second are read.
//! - `report`: turns the JSON lines of a comparison into markdown and JSON.
//! - `plot`: SVG charts of those results (compare, TLS, cluster), next to the markdown.
//!
//! Streams live in worker processes (`worker`, the same binary), each holding up to its
//! descriptor limit from its own source addresses in 127.0.0.0/8; the coordinator
//! publishes, samples the server and merges the workers' histograms.

mod churn;
mod cluster;
mod coord;
mod fanout;
mod floor;
mod hist;
mod idle;
mod plot;
mod proto;
mod publisher;
mod report;
// The server's xorshift64* generator, the same file rather than a copy. `Rng::seeded` is
// the server's: the workers are seeded by the coordinator.
#[path = "../../src/rng.rs"]
#[allow(dead_code)]
mod rng;
mod run;
mod soak;
mod sse;
mod sys;
mod worker;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ssehub-loadtest",
    version,
    about = "Load tests for ssehub (and nginx+nchan), loopback only"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Hold N idle streams; report server memory per stream and keepalives seen.
    Idle(idle::Args),
    /// N subscribers × M events at R/s: latency, last-subscriber time, deliveries per CPU-second.
    Fanout(fanout::Args),
    /// Fan-out with a share of subscribers that stop reading (default 10%).
    Slow(fanout::Args),
    /// Connect/read/disconnect/resume storms: gap-free, duplicate-free sequences.
    Churn(churn::Args),
    /// The machine's floor: deliveries per CPU-second with one plain write() each.
    Floor(floor::Args),
    /// Render the JSON lines of a comparison run as markdown and JSON.
    Report(report::Args),
    /// SVG charts of results (compare JSON, tls_compare or cluster JSON lines).
    Plot(plot::Args),
    /// Print this machine's description (cores, CPU, kernel, fd limit, load) as JSON.
    Machine,
    /// Internal: a worker process (configuration on stdin).
    #[command(hide = true)]
    Worker,
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.cmd {
        Cmd::Idle(a) => idle::run(a),
        Cmd::Fanout(a) => fanout::run(a, false),
        Cmd::Slow(a) => fanout::run(a, true),
        // A memory soak when `--duration` is given (`soak` takes churn's arguments).
        Cmd::Churn(a) => match a.duration {
            Some(d) => soak::run(&a, d),
            None => churn::run(a),
        },
        Cmd::Floor(a) => floor::run(a),
        Cmd::Report(a) => report::run(a),
        Cmd::Plot(a) => plot::run(a),
        Cmd::Machine => {
            println!(
                "{}",
                serde_json::to_string(&sys::machine()).expect("machine")
            );
            0
        }
        Cmd::Worker => worker::run(),
    };
    std::process::exit(code);
}
