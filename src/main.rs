//! The `ssehub` command: parse the command line, load configuration, run. No logic here.

use clap::{Args, Parser, Subcommand};
use log::{error, info};
use ssehub::config::Config;
use ssehub::event_loop::Server;
use ssehub::{logger, publish, rlimit};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ssehub",
    version,
    about = "Server-Sent Events hub",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default command).
    Serve(ServeArgs),
    /// Publish events through the ingest socket; prints each event's id.
    Publish(PublishArgs),
    /// Validate a configuration file.
    CheckConfig { file: PathBuf },
}

#[derive(Args, Default)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// HTTP listen address (http.listen), e.g. 127.0.0.1:8080.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Ingest socket path (ingest.socket).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// History data directory (history.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace (log.level).
    #[arg(long)]
    log_level: Option<String>,
}

#[derive(Args)]
struct PublishArgs {
    /// Ingest socket path.
    #[arg(long, default_value = "./ssehub.sock")]
    socket: PathBuf,
    /// Topic to publish to (repeat for several).
    #[arg(long = "topic", short = 't', required = true)]
    topics: Vec<String>,
    /// Event type.
    #[arg(long, short = 'e')]
    event: Option<String>,
    /// Mark the event final: its topics end.
    #[arg(long = "final")]
    is_final: bool,
    /// Publish one event per line of standard input.
    #[arg(long)]
    lines: bool,
    /// How long to keep retrying to connect, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = ssehub::config::parse_duration)]
    wait: std::time::Duration,
    /// The payload, or `-` (or nothing) for standard input.
    data: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Publish(args)) => run_publish(args),
        Some(Command::CheckConfig { file }) => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ssehub: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let mut config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ssehub: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.http.listen = listen;
    }
    if let Some(socket) = args.socket {
        config.ingest.socket = socket;
    }
    if let Some(dir) = args.data_dir {
        config.history.data_dir = dir;
    }
    if let Some(level) = args.log_level {
        config.log.level = level;
    }
    let level = match logger::parse_level(&config.log.level) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ssehub: log.level: {e}");
            return ExitCode::FAILURE;
        }
    };
    logger::init(level);
    let (before, soft, hard) = rlimit::raise_nofile();
    info!(
        "file descriptor limit nofile_soft_before={before} nofile_soft={soft} nofile_hard={hard}"
    );
    let ingest_path = config.ingest.socket.clone();
    let mut server = match Server::bind(config) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = server.stop_handle();
    if let Err(e) = ctrlc::set_handler(move || stop.stop()) {
        error!("cannot install the signal handler: {e}");
        return ExitCode::FAILURE;
    }
    match server.http_addr() {
        Ok(addr) => info!(
            "listening http={addr} ingest={} max_connections={}",
            ingest_path.display(),
            server.max_connections()
        ),
        Err(e) => error!("no listener address: {e}"),
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("event loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_publish(args: PublishArgs) -> ExitCode {
    let input = match (args.lines, args.data) {
        (true, None) => publish::Input::StdinLines,
        (true, Some(d)) if d == "-" => publish::Input::StdinLines,
        (true, Some(_)) => {
            eprintln!("ssehub publish: --lines reads standard input; give no DATA (or -)");
            return ExitCode::from(2);
        }
        (false, Some(d)) if d != "-" => publish::Input::Data(d),
        (false, _) => publish::Input::Stdin,
    };
    let opts = publish::Options {
        socket: &args.socket,
        topics: &args.topics,
        event: args.event.as_deref(),
        is_final: args.is_final,
        wait: args.wait,
    };
    match publish::run(&opts, input, &mut std::io::stdout().lock()) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ssehub publish: {e}");
            ExitCode::FAILURE
        }
    }
}
