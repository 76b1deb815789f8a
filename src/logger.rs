//! Log lines to stderr: `level message key=value...`. Under systemd (`JOURNAL_STREAM` set)
//! each line carries the `<N>` syslog priority prefix and no timestamp (journald adds it).

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

struct StderrLogger {
    journald: bool,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = record.level();
        let line = if self.journald {
            let priority = match level {
                Level::Error => 3,
                Level::Warn => 4,
                Level::Info => 6,
                Level::Debug | Level::Trace => 7,
            };
            format!("<{priority}>{} {}\n", level_name(level), record.args())
        } else {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            format!(
                "{}.{:03} {} {}\n",
                now.as_secs(),
                now.subsec_millis(),
                level_name(level),
                record.args()
            )
        };
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// Parses a level name ("error", "warn", "info", "debug", "trace", "off").
pub fn parse_level(name: &str) -> Result<LevelFilter, String> {
    name.trim()
        .parse()
        .map_err(|_| format!("unknown log level {name:?}"))
}

/// Installs the logger. `RUST_LOG`, when set to a plain level, wins over `level`.
pub fn init(level: LevelFilter) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| parse_level(&v).ok())
        .unwrap_or(level);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    if log::set_boxed_logger(Box::new(StderrLogger { journald })).is_ok() {
        log::set_max_level(level);
    }
}
