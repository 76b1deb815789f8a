//! Reading segments back: listing the directory and validating every record of a segment,
//! in a bounded buffer (a segment is never read into memory whole).

use super::crc::crc32c;
use super::record::{HEADER_LEN, MAX_PAYLOAD, MIN_PAYLOAD, Recovered, decode_payload};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const SUFFIX: &str = ".seg";
const DIGITS: usize = 20;
const CHUNK: usize = 1 << 20;

/// `<first_id as 20-digit zero-padded decimal>.seg`
pub fn segment_name(first_id: u64) -> String {
    format!("{first_id:0DIGITS$}{SUFFIX}")
}

pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub struct SegmentFile {
    pub path: PathBuf,
    pub name_id: u64,
}

/// The segment files of `dir` in id order. Entries with a segment name that are not regular
/// files (after following a symlink) are skipped and reported.
pub fn list_segments(dir: &Path, report: &mut Vec<String>) -> io::Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(seg) = name.to_str().and_then(|n| n.strip_suffix(TMP_SUFFIX))
            && parse_segment_name(seg).is_some()
        {
            if let Err(e) = fs::remove_file(entry.path()) {
                report.push(format!("{}: cannot remove: {e}", entry.path().display()));
            }
            continue;
        }
        let Some(name_id) = name.to_str().and_then(parse_segment_name) else {
            continue;
        };
        let path = entry.path();
        let md = match fs::metadata(&path) {
            Ok(md) => md,
            Err(e) => {
                report.push(format!("{}: {e}, ignored", path.display()));
                continue;
            }
        };
        if !md.is_file() {
            report.push(format!("{}: not a regular file, ignored", path.display()));
            continue;
        }
        out.push(SegmentFile { path, name_id });
    }
    out.sort_by_key(|s| s.name_id);
    Ok(out)
}

/// A run of bytes that holds no valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub len: u64,
    /// Why the record expected at `offset` was refused.
    pub reason: String,
    /// Id of the next record handed on after it in this segment (None: none in this one).
    pub next_id: Option<u64>,
}

/// What one segment held.
#[derive(Debug, Default)]
pub struct Scanned {
    /// Bytes in the file as read.
    pub file_len: u64,
    /// Records handed to the callback.
    pub records: u64,
    /// Valid records not handed on because their id was not above an earlier segment's.
    pub skipped: u64,
    pub first_id: Option<u64>,
    /// Id of the last valid record, handed on or skipped (0: none).
    pub last_id: u64,
    /// Newest `published_unix_ms` among the valid records (0: none).
    pub max_ms: u64,
    /// `[start, end)` byte ranges of valid records, adjacent ones merged, in file order.
    pub good: Vec<(u64, u64)>,
    /// The bytes between (and after) them, in file order.
    pub damaged: Vec<Damage>,
}

impl Scanned {
    /// Whether the segment holds at least one valid record.
    pub fn has_valid(&self) -> bool {
        !self.good.is_empty()
    }

    /// Bytes of valid records.
    pub fn good_len(&self) -> u64 {
        self.good.iter().map(|(a, b)| b - a).sum()
    }
}

/// While resynchronising, a candidate id this far above both the previous id and the
/// current time is taken for garbage without computing a checksum: ids are
/// max(last + 1, Unix µs), so a real one is at most a little ahead of the clock (one day
/// leaves room for bursts of more than a million events a second and for clock steps).
const MAX_ID_AHEAD_US: u64 = 86_400_000_000;

/// A reusable read buffer with a window `[start, end)` of unread bytes.
pub struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    pub fn new() -> Self {
        ReadBuf {
            buf: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    fn window(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Makes `n` unread bytes available if the file has them; returns how many are.
    fn fill(&mut self, file: &mut File, eof: &mut bool, n: usize) -> io::Result<usize> {
        if self.end - self.start >= n || *eof {
            return Ok(self.end - self.start);
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if self.buf.len() < n.max(CHUNK) {
            self.buf.resize(n.max(CHUNK), 0);
        }
        while self.end < n {
            match file.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    *eof = true;
                    break;
                }
                Ok(k) => self.end += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.end - self.start)
    }
}

/// Reads and validates one segment. Records with an id above `*last_id` go to `on_record`
/// (and raise `*last_id`). At a torn or corrupt record it resynchronises: it looks for the
/// next valid record at a later offset (cheap field checks first, the checksum only for a
/// plausible candidate, so megabytes of garbage scan fast) and goes on from there; the
/// bytes skipped are reported in `damaged`. `now_us`: the current Unix time in µs, the
/// upper bound (with a margin) for a candidate's id.
pub fn scan_segment(
    file: &mut File,
    buf: &mut ReadBuf,
    last_id: &mut u64,
    now_us: u64,
    on_record: &mut dyn FnMut(Recovered),
) -> io::Result<Scanned> {
    let mut s = Scanned {
        file_len: file.metadata()?.len(),
        ..Scanned::default()
    };
    let mut eof = false;
    buf.start = 0;
    buf.end = 0;
    let mut offset = 0u64;
    let mut prev = 0u64;
    // Start and reason of the damaged run being skipped.
    let mut bad: Option<(u64, String)> = None;
    // Damage entries (from `first_open`) still waiting for the id of the next record.
    let mut first_open = 0;
    loop {
        if buf.fill(file, &mut eof, 1)? == 0 {
            break;
        }
        let limits = Candidate {
            left: s.file_len.saturating_sub(offset),
            prev,
            resync: bad.is_some(),
            max_id: prev
                .max(*last_id)
                .max(now_us)
                .saturating_add(MAX_ID_AHEAD_US),
        };
        let (rec, total) = match check_record(buf, file, &mut eof, &limits)? {
            Ok(found) => found,
            Err(why) => {
                bad.get_or_insert((offset, why));
                buf.start += 1;
                offset += 1;
                continue;
            }
        };
        if let Some((start, reason)) = bad.take() {
            s.damaged.push(Damage {
                offset: start,
                len: offset - start,
                reason,
                next_id: None,
            });
        }
        buf.start += total;
        let end = offset + total as u64;
        match s.good.last_mut() {
            Some(run) if run.1 == offset => run.1 = end,
            _ => s.good.push((offset, end)),
        }
        offset = end;
        prev = rec.id;
        s.last_id = rec.id;
        s.max_ms = s.max_ms.max(rec.published_unix_ms);
        if rec.id <= *last_id {
            s.skipped += 1;
            continue;
        }
        for d in &mut s.damaged[first_open..] {
            d.next_id = Some(rec.id);
        }
        first_open = s.damaged.len();
        *last_id = rec.id;
        s.first_id.get_or_insert(rec.id);
        s.records += 1;
        on_record(rec);
    }
    if let Some((start, reason)) = bad {
        s.damaged.push(Damage {
            offset: start,
            len: offset - start,
            reason,
            next_id: None,
        });
    }
    s.file_len = s.file_len.max(offset);
    Ok(s)
}

struct Candidate {
    /// Bytes from the candidate's offset to the end of the file.
    left: u64,
    /// Id of the previous valid record of this segment (0: none).
    prev: u64,
    /// Resynchronising: cheap checks come before the checksum.
    resync: bool,
    max_id: u64,
}

/// Validates the record at the start of `buf`'s window: `Ok(Ok((record, framed length)))`,
/// or `Ok(Err(why))` when there is none there.
fn check_record(
    buf: &mut ReadBuf,
    file: &mut File,
    eof: &mut bool,
    c: &Candidate,
) -> io::Result<Result<(Recovered, usize), String>> {
    let avail = buf.fill(file, eof, HEADER_LEN)?;
    if c.resync && avail >= HEADER_LEN {
        // Most offsets of garbage fail here: refuse them without building a reason (only
        // the reason at the start of a damaged run is reported).
        let h = buf.window();
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if !(MIN_PAYLOAD..=MAX_PAYLOAD).contains(&len) || (HEADER_LEN + len) as u64 > c.left {
            return Ok(Err(String::new()));
        }
    }
    if avail < HEADER_LEN {
        return Ok(Err(format!(
            "torn record header ({avail} of {HEADER_LEN} bytes)"
        )));
    }
    let h = buf.window();
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len == 0 {
        return Ok(Err("record length 0 (zero-filled tail?)".into()));
    }
    if len > MAX_PAYLOAD {
        return Ok(Err(format!("record length {len} over 16 MiB")));
    }
    if len < MIN_PAYLOAD {
        return Ok(Err(format!("record length {len} too short for a record")));
    }
    let total = HEADER_LEN + len;
    if (total as u64) > c.left {
        return Ok(Err(format!("torn record ({} of {total} bytes)", c.left)));
    }
    if c.resync {
        // The payload starts with id u64, time u64, flags u8, topic count u8, topic len u8.
        let p = &buf.window()[HEADER_LEN..];
        if p.len() < 19 && buf.fill(file, eof, HEADER_LEN + 19)? < HEADER_LEN + 19 {
            return Ok(Err("torn record".into()));
        }
        let p = &buf.window()[HEADER_LEN..];
        let id = u64::from_le_bytes([p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]]);
        if p[16] > 1 || p[17] == 0 || p[18] == 0 || id <= c.prev || id > c.max_id {
            return Ok(Err(String::new()));
        }
    }
    let avail = buf.fill(file, eof, total)?;
    if avail < total {
        return Ok(Err(format!("torn record ({avail} of {total} bytes)")));
    }
    let payload = &buf.window()[HEADER_LEN..total];
    if crc32c(payload) != crc {
        return Ok(Err("checksum mismatch".into()));
    }
    let rec = match decode_payload(payload) {
        Ok(r) => r,
        Err(e) => return Ok(Err(format!("bad payload: {e}"))),
    };
    if rec.id <= c.prev {
        return Ok(Err(format!(
            "id {} not above the previous {}",
            rec.id, c.prev
        )));
    }
    Ok(Ok((rec, total)))
}

/// The subdirectory of `data_dir` that receives damaged bytes.
pub const DAMAGED: &str = "damaged";

/// `damaged_dir/<base>`, or `<base>.1`, `<base>.2`... if taken (never overwrite an earlier
/// recovery's bytes).
fn fresh_path(damaged_dir: &Path, base: &str) -> PathBuf {
    let mut p = damaged_dir.join(base);
    let mut k = 1u32;
    while p.symlink_metadata().is_ok() {
        p = damaged_dir.join(format!("{base}.{k}"));
        k += 1;
    }
    p
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Copies bytes `[offset, offset + len)` of `src` to `damaged_dir/<src name>.<offset>`
/// (created new, synced) and returns its path. The caller syncs `damaged_dir`.
pub fn save_range(src: &Path, offset: u64, len: u64, damaged_dir: &Path) -> io::Result<PathBuf> {
    fs::create_dir_all(damaged_dir)?;
    let dest = fresh_path(damaged_dir, &format!("{}.{offset}", file_name(src)));
    let mut from = File::open(src)?;
    from.seek(SeekFrom::Start(offset))?;
    let mut to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&dest)?;
    let copied = io::copy(&mut from.take(len), &mut to)?;
    if copied != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("copied {copied} of {len} bytes"),
        ));
    }
    to.sync_all()?;
    Ok(dest)
}

/// Moves the whole of `src` to `damaged_dir/<src name>.0` (a rename: same file system) and
/// returns its new path. The caller syncs both directories.
pub fn move_file(src: &Path, damaged_dir: &Path) -> io::Result<PathBuf> {
    fs::create_dir_all(damaged_dir)?;
    let dest = fresh_path(damaged_dir, &format!("{}.0", file_name(src)));
    fs::rename(src, &dest)?;
    Ok(dest)
}

/// Replaces `path` by a file holding only its byte ranges `good`: written to
/// `<path>.tmp`, synced, renamed over. The caller syncs the directory.
pub fn rewrite(path: &Path, good: &[(u64, u64)]) -> io::Result<u64> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        let mut from = File::open(path)?;
        let mut to = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        let mut total = 0;
        for &(a, b) in good {
            from.seek(SeekFrom::Start(a))?;
            let copied = io::copy(&mut (&mut from).take(b - a), &mut to)?;
            if copied != b - a {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "segment shrank while being rewritten",
                ));
            }
            total += copied;
        }
        to.sync_all()?;
        fs::rename(&tmp, path)?;
        Ok(total)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A segment being rewritten when the process stopped leaves `<segment>.tmp`: removed at
/// the next start (the segment itself is still whole).
pub const TMP_SUFFIX: &str = ".tmp";
