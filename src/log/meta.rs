//! The `meta` file: the first id ever issued with this data directory, kept when segments
//! are deleted, and the resume horizon left by recovery cuts. Text, two or three lines:
//!
//! ```text
//! ssehub-log 1
//! first_id 1712345678901234
//! forgotten_up_to 1712345678999999
//! ```
//!
//! The third line is written only after a recovery cut bytes (readers that predate it ignore
//! it): the repaired segments no longer show the damage, so the horizon would otherwise be
//! forgotten at the next start and a resume across the cut would miss its `reset`.
//!
//! Written atomically (temp file, fsync, rename, fsync of the directory).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

pub const META: &str = "meta";
pub const META_TMP: &str = "meta.tmp";
const MAGIC: &str = "ssehub-log";
const VERSION: &str = "1";

pub enum MetaState {
    Missing,
    /// First id, horizon (0: none).
    Valid(u64, u64),
    /// Present but not parseable: the reason.
    Unreadable(String),
}

/// Reads `dir/meta`. A meta file of another format version is an error (never guess at,
/// and never overwrite, a log written by another version).
pub fn read(dir: &Path) -> io::Result<MetaState> {
    let file = match File::open(dir.join(META)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(MetaState::Missing),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(4096).read_to_end(&mut bytes)?;
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Ok(MetaState::Unreadable("not UTF-8".into()));
    };
    let mut lines = text.lines();
    match lines.next().and_then(|l| l.split_once(' ')) {
        Some((MAGIC, VERSION)) => {}
        Some((MAGIC, other)) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: log format version {other:?}, this build reads version {VERSION}",
                    dir.join(META).display()
                ),
            ));
        }
        _ => return Ok(MetaState::Unreadable("no `ssehub-log` header".into())),
    }
    let id = lines
        .next()
        .and_then(|l| l.strip_prefix("first_id "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    let horizon = lines
        .next()
        .and_then(|l| l.strip_prefix("forgotten_up_to "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Ok(match id {
        Some(id) => MetaState::Valid(id, horizon),
        None => MetaState::Unreadable("no valid `first_id` line".into()),
    })
}

/// Atomically replaces `dir/meta` (`horizon` 0: no third line).
pub fn write(dir: &Path, first_id: u64, horizon: u64) -> io::Result<()> {
    let tmp = dir.join(META_TMP);
    {
        let mut f = File::create(&tmp)?;
        let mut text = format!("{MAGIC} {VERSION}\nfirst_id {first_id}\n");
        if horizon > 0 {
            text.push_str(&format!("forgotten_up_to {horizon}\n"));
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(META))?;
    sync_dir(dir)
}

/// Makes creations, renames and removals in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
