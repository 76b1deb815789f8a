//! Log lines to stderr: `level message key=value...` (`log.format = "text"`), or one JSON
//! object per line with `ts`, `level`, `msg` and the line's `key=value` fields
//! (`log.format = "json"`, for log shippers). Under systemd (`JOURNAL_STREAM` set) each
//! line carries the `<N>` syslog priority prefix, and a text line no timestamp (journald
//! adds it).

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

struct StderrLogger {
    journald: bool,
}

/// `log.format = "json"`: read at every line, so a reload switches it.
static JSON: AtomicBool = AtomicBool::new(false);

/// Switches between text and JSON lines (`log.format`).
pub fn set_format(format: &str) {
    JSON.store(format == "json", Ordering::Relaxed);
}

/// Checks a `log.format` value.
pub fn parse_format(format: &str) -> Result<(), String> {
    match format {
        "text" | "json" => Ok(()),
        other => Err(format!("unknown log format {other:?} (text or json)")),
    }
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
        let priority = match level {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 6,
            Level::Debug | Level::Trace => 7,
        };
        let line = if JSON.load(Ordering::Relaxed) {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let object = json_line(now, level_name(level), &record.args().to_string());
            match self.journald {
                true => format!("<{priority}>{object}\n"),
                false => format!("{object}\n"),
            }
        } else if self.journald {
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

/// One JSON log object: `ts` (RFC 3339, UTC, milliseconds), `level`, `msg` (the text up to
/// the first `key=value` word), then each `key=value` as a string field (a word without
/// `=` belongs to the value before it: values may hold spaces). A key that would repeat
/// `ts`, `level` or `msg`, or an earlier key, gets a `_` prefix.
pub fn json_line(now: std::time::Duration, level: &str, text: &str) -> String {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut msg = String::new();
    for word in text.split(' ') {
        match word.split_once('=') {
            Some((key, value)) if is_key(key) => {
                let mut key = key.to_string();
                while ["ts", "level", "msg"].contains(&key.as_str())
                    || fields.iter().any(|(k, _)| *k == key)
                {
                    key.insert(0, '_');
                }
                fields.push((key, value.to_string()));
            }
            _ => match fields.last_mut() {
                Some((_, value)) => {
                    value.push(' ');
                    value.push_str(word);
                }
                None => {
                    if !msg.is_empty() {
                        msg.push(' ');
                    }
                    msg.push_str(word);
                }
            },
        }
    }
    let mut object = serde_json::Map::new();
    object.insert("ts".into(), rfc3339_utc(now).into());
    object.insert("level".into(), level.into());
    object.insert("msg".into(), msg.into());
    for (key, value) in fields {
        object.insert(key, value.into());
    }
    serde_json::Value::Object(object).to_string()
}

/// A field name: lowercase letters, digits and `_`, starting with a letter.
fn is_key(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_lowercase())
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `2026-12-07T19:05:44.123Z` for a time since the Unix epoch.
fn rfc3339_utc(t: std::time::Duration) -> String {
    let secs = t.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        t.subsec_millis()
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn json_lines_split_the_message_from_its_fields() {
        let t = Duration::from_millis(1_796_668_593_540);
        let line = json_line(t, "info", "stopped streams_left=1 producers_left=0");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["msg"], "stopped");
        assert_eq!(v["level"], "info");
        assert_eq!(v["streams_left"], "1");
        assert_eq!(v["producers_left"], "0");
        assert_eq!(v["ts"], "2026-12-07T18:36:33.540Z");
        // Values with spaces, a message without fields, quotes, reserved names.
        let line = json_line(
            t,
            "warn",
            "redis: down: why=connection refused (os error 111) n=2",
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["msg"], "redis: down:");
        assert_eq!(v["why"], "connection refused (os error 111)");
        let line = json_line(t, "info", r#"reload (SIGHUP): {"ok":true} msg=x level=y"#);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["msg"], r#"reload (SIGHUP): {"ok":true}"#);
        assert_eq!(v["_msg"], "x");
        assert_eq!(v["_level"], "y");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339_utc(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_utc(Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339_utc(Duration::from_secs(4_102_444_799)),
            "2099-12-31T23:59:59.000Z"
        );
    }
}
