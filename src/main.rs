//! The `ssehub` command: parse the command line, load configuration, run. No logic here.

use clap::{Args, Parser, Subcommand};
use log::{error, info, warn};
use ssehub::config::Config;
use ssehub::event_loop::Server;
use ssehub::reload::{ConfigSource, Overrides};
use ssehub::{listen_fds, logger, notify, publish, reload, rlimit};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// jemalloc instead of glibc's malloc: its background thread gives the pages of a peak back
/// to the kernel gradually, where glibc needed a `malloc_trim` that stops the loop for as
/// long as it walks the free memory (`ssehub::heap`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Publish events through the ingest socket (or over HTTP with --url); prints each id.
    Publish(PublishArgs),
    /// Validate a configuration file.
    CheckConfig { file: PathBuf },
    /// Mint an HS256 token for private topics or publishing (for operators and tests).
    Token(TokenArgs),
    /// Ask a running hub to re-read its configuration file (the unit's ExecReload).
    Reload(ReloadArgs),
}

#[derive(Args)]
struct ReloadArgs {
    /// Ingest socket path of the running hub.
    #[arg(long, conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// Take the ingest socket path from this configuration file instead.
    #[arg(long)]
    config: Option<PathBuf>,
    /// How long to keep retrying to connect, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = ssehub::config::parse_duration)]
    wait: std::time::Duration,
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
#[command(group(
    clap::ArgGroup::new("grants")
        .args(["subscribe", "publish"])
        .required(true)
        .multiple(true)
))]
struct TokenArgs {
    /// Read auth.secret from this configuration file.
    #[arg(long, conflicts_with = "secret")]
    config: Option<PathBuf>,
    /// The HS256 secret.
    #[arg(long)]
    secret: Option<String>,
    /// Topic pattern the token may read (repeat; a trailing * matches by prefix).
    #[arg(long)]
    subscribe: Vec<String>,
    /// Topic pattern the token may publish to over HTTP (repeat; same pattern rules).
    #[arg(long)]
    publish: Vec<String>,
    /// Lifetime, e.g. 1h.
    #[arg(long, default_value = "1h", value_parser = ssehub::config::parse_duration)]
    ttl: std::time::Duration,
    /// The `aud` claim (default: auth.audience of --config; none without it).
    #[arg(long)]
    audience: Option<String>,
    /// The `iss` claim (default: auth.issuer of --config; none without it).
    #[arg(long)]
    issuer: Option<String>,
}

#[derive(Args)]
struct PublishArgs {
    /// Ingest socket path (default ./ssehub.sock).
    #[arg(long, conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// Take the ingest socket path from this configuration file instead.
    #[arg(long, conflicts_with = "url")]
    config: Option<PathBuf>,
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
    /// Publish over HTTP (POST /publish) instead of the socket: http://HOST:PORT[/PATH].
    #[arg(long, conflicts_with_all = ["socket", "config"])]
    url: Option<String>,
    /// Bearer token for --url (a JWT with a `publish` claim); default: $SSEHUB_TOKEN.
    #[arg(long, requires = "url")]
    token: Option<String>,
    /// The payload, or `-` (or nothing) for standard input.
    data: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Publish(args)) => run_publish(args),
        Some(Command::Reload(args)) => run_reload(args),
        Some(Command::Token(args)) => run_token(args),
        Some(Command::CheckConfig { file }) => {
            match Config::load(&file).and_then(|c| check_keys(&c)) {
                Ok(()) => {
                    println!("{}: ok", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ssehub: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    // The file plus the flags; a reload reads the file again and re-applies the flags.
    let source = ConfigSource {
        path: args.config,
        overrides: Overrides {
            listen: args.listen,
            socket: args.socket,
            data_dir: args.data_dir,
            log_level: args.log_level,
        },
    };
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ssehub: {e}");
            return ExitCode::FAILURE;
        }
    };
    let level = match logger::parse_level(&config.log.level) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ssehub: log.level: {e}");
            return ExitCode::FAILURE;
        }
    };
    logger::init(level);
    logger::set_format(&config.log.format);
    info!(
        "starting ssehub version={} pid={}",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    if let Err(e) = ssehub::heap::start_background_purge() {
        // jemalloc then purges on the threads that allocate, on the same decay curve.
        warn!("{e}: freed memory is given back by the loop itself");
    }
    log_config(&source, &config);
    let (before, soft, hard) = rlimit::raise_nofile();
    info!(
        "file descriptor limit nofile_soft_before={before} nofile_soft={soft} nofile_hard={hard}"
    );
    // systemd's environment is read (and cleared) before any other thread exists.
    let passed = match listen_fds::take_from_env() {
        Ok(p) => p,
        Err(e) => {
            error!("cannot take the sockets passed by systemd: {e}");
            return ExitCode::FAILURE;
        }
    };
    for what in &passed.ignored {
        warn!(
            "ignoring a passed descriptor that is no listening TCP or Unix stream socket: {what}"
        );
    }
    let socket_activated = !passed.is_empty();
    let ingest_passed = passed.ingest.is_some();
    let notifier = notify::Notifier::from_env();
    let watchdog = notify::watchdog_interval_from_env();
    let ingest_path = config.ingest.socket.clone();
    let mut server = match Server::bind_with(config, passed) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    server.set_systemd(notifier, watchdog);
    server.set_config_source(source);
    if let Err(e) = server.handle_signals() {
        error!("cannot install the signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    match server.http_addr() {
        Ok(addr) => info!(
            "listening http={addr} ingest={}{} admin={} max_connections={} max_producers={} socket_activated={socket_activated} watchdog_ms={}",
            ingest_path.display(),
            if ingest_passed { " (passed in)" } else { "" },
            server
                .admin_addr()
                .map_or_else(|| "-".to_string(), |a| a.to_string()),
            server.max_connections(),
            server.max_producers(),
            watchdog.map_or(0, |w| w.as_millis()),
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
    let socket = match socket_of(args.socket, args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ssehub publish: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = publish::Options {
        socket: &socket,
        topics: &args.topics,
        event: args.event.as_deref(),
        is_final: args.is_final,
        wait: args.wait,
    };
    let out = &mut std::io::stdout().lock();
    let result = match &args.url {
        None => publish::run(&opts, input, out),
        Some(url) => {
            let target = match publish::http::Target::parse(url) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("ssehub publish: {e}");
                    return ExitCode::from(2);
                }
            };
            // The environment keeps the token out of `ps`; an empty one is no token.
            let token = args
                .token
                .or_else(|| std::env::var("SSEHUB_TOKEN").ok())
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty());
            if let Some(t) = token
                .as_deref()
                .filter(|t| !publish::http::token_is_valid(t))
            {
                eprintln!(
                    "ssehub publish: the token ({} bytes) has characters an HTTP header cannot \
                     carry",
                    t.len()
                );
                return ExitCode::from(2);
            }
            publish::http::run(&opts, &target, token.as_deref(), input, out)
        }
    };
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ssehub publish: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_token(args: TokenArgs) -> ExitCode {
    let (secret, audience, issuer) = match (args.secret, args.config) {
        (Some(s), _) => (s, String::new(), String::new()),
        (None, Some(path)) => match Config::load(&path) {
            Ok(c) => (c.auth.secret, c.auth.audience, c.auth.issuer),
            Err(e) => {
                eprintln!("ssehub token: {e}");
                return ExitCode::FAILURE;
            }
        },
        (None, None) => {
            eprintln!("ssehub token: give --secret or --config");
            return ExitCode::from(2);
        }
    };
    if secret.is_empty() {
        eprintln!("ssehub token: the secret is empty (auth.secret)");
        return ExitCode::FAILURE;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let what = ssehub::auth::MintClaims {
        subscribe: &args.subscribe,
        publish: &args.publish,
        audience: args.audience.as_deref().unwrap_or(&audience),
        issuer: args.issuer.as_deref().unwrap_or(&issuer),
    };
    match ssehub::auth::mint(&secret, what, now, args.ttl.as_secs()) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ssehub token: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One line with the configuration in force (the notable keys; `check-config` shows none).
fn log_config(source: &ConfigSource, c: &Config) {
    info!(
        "config file={} listen={} admin_listen={:?} ingest={} data_dir={:?} durability={} \
         keepalive={:?} retry_base={:?} shutdown_spread={:?} drain_timeout={:?} \
         max_connections={} max_per_ip={} tls={} private_patterns={} log_level={}",
        source
            .path
            .as_ref()
            .map_or_else(|| "(defaults)".to_string(), |p| p.display().to_string()),
        c.http.listen,
        c.http.admin_listen,
        c.ingest.socket.display(),
        c.history.data_dir,
        c.history.durability.name(),
        c.streams.keepalive,
        c.streams.retry_base,
        c.streams.shutdown_spread,
        c.streams.drain_timeout,
        c.http.max_connections,
        c.http.max_per_ip,
        c.tls.is_some(),
        c.auth.private.len(),
        c.log.level,
    );
}

fn run_reload(args: ReloadArgs) -> ExitCode {
    let socket = match socket_of(args.socket, args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ssehub reload: {e}");
            return ExitCode::FAILURE;
        }
    };
    match reload::request(&socket, args.wait) {
        Ok(answer) => {
            println!("{answer}");
            if answer.starts_with("{\"ok\":true") {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("ssehub reload: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The ingest socket a command talks to: `--socket`, else the one the configuration file
/// names, else `./ssehub.sock`. A file the hub would refuse still names its socket when
/// the line can be read, so that `ssehub reload` gets the hub's own `reload failed: …`
/// answer for it rather than failing here.
fn socket_of(socket: Option<PathBuf>, config: Option<&Path>) -> Result<PathBuf, String> {
    let default = || PathBuf::from("./ssehub.sock");
    let path = match (socket, config) {
        (Some(s), _) => return Ok(s),
        (None, None) => return Ok(default()),
        (None, Some(path)) => path,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if let Ok(c) = Config::parse(&text) {
        return Ok(c.ingest.socket);
    }
    // Not a valid configuration: the `socket = "…"` line of its `[ingest]` section.
    let mut in_ingest = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_ingest = line.trim_end_matches(|c: char| c != ']') == "[ingest]";
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if in_ingest && key.trim() == "socket" {
            let v: toml::Table = toml::from_str(&format!("v = {}", value.trim()))
                .map_err(|e| format!("{}: ingest.socket: {e}", path.display()))?;
            if let Some(s) = v.get("v").and_then(|v| v.as_str()) {
                return Ok(PathBuf::from(s));
            }
        }
    }
    Ok(default())
}

/// What `serve` would refuse beyond the file's syntax: auth keys, TLS files, log level.
fn check_keys(c: &Config) -> Result<(), String> {
    ssehub::auth::Auth::from_config(&c.auth)?;
    logger::parse_level(&c.log.level).map_err(|e| format!("log.level: {e}"))?;
    logger::parse_format(&c.log.format).map_err(|e| format!("log.format: {e}"))?;
    if let Some(tls) = &c.tls {
        ssehub::conn::tls::server_config(&tls.cert, &tls.key)?;
    }
    Ok(())
}
