//! The `meta` file: the first id ever issued with this data directory, kept when segments
//! are deleted. Text, two lines:
//!
//! ```text
//! ssehub-log 1
//! first_id 1712345678901234
//! ```
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
    Valid(u64),
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
    Ok(match id {
        Some(id) => MetaState::Valid(id),
        None => MetaState::Unreadable("no valid `first_id` line".into()),
    })
}

/// Atomically replaces `dir/meta`.
pub fn write(dir: &Path, first_id: u64) -> io::Result<()> {
    let tmp = dir.join(META_TMP);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(format!("{MAGIC} {VERSION}\nfirst_id {first_id}\n").as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(META))?;
    sync_dir(dir)
}

/// Makes creations, renames and removals in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
