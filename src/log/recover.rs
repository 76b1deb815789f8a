//! Reading segments back: listing the directory and validating every record of a segment,
//! in a bounded buffer (a segment is never read into memory whole).

use super::crc::crc32c;
use super::record::{HEADER_LEN, MAX_PAYLOAD, MIN_PAYLOAD, Recovered, decode_payload};
use std::fs::{self, File};
use std::io::{self, Read};
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

/// What one segment held.
#[derive(Debug, Default)]
pub struct Scanned {
    /// End of the last valid record: everything before it is intact.
    pub good_len: u64,
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
    /// Why reading stopped before the end of the file.
    pub corrupt: Option<String>,
}

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
/// (and raise `*last_id`); reading stops at the first record that is torn or corrupt.
pub fn scan_segment(
    file: &mut File,
    buf: &mut ReadBuf,
    last_id: &mut u64,
    on_record: &mut dyn FnMut(Recovered),
) -> io::Result<Scanned> {
    let mut s = Scanned::default();
    let mut eof = false;
    buf.start = 0;
    buf.end = 0;
    let mut offset = 0u64;
    let mut prev = 0u64;
    loop {
        let avail = buf.fill(file, &mut eof, HEADER_LEN)?;
        if avail == 0 {
            break;
        }
        if avail < HEADER_LEN {
            s.corrupt = Some(format!(
                "torn record header ({avail} of {HEADER_LEN} bytes)"
            ));
            break;
        }
        let h = buf.window();
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if len == 0 {
            s.corrupt = Some("record length 0 (zero-filled tail?)".into());
            break;
        }
        if len > MAX_PAYLOAD {
            s.corrupt = Some(format!("record length {len} over 16 MiB"));
            break;
        }
        if len < MIN_PAYLOAD {
            s.corrupt = Some(format!("record length {len} too short for a record"));
            break;
        }
        let total = HEADER_LEN + len;
        let avail = buf.fill(file, &mut eof, total)?;
        if avail < total {
            s.corrupt = Some(format!("torn record ({avail} of {total} bytes)"));
            break;
        }
        let payload = &buf.window()[HEADER_LEN..total];
        if crc32c(payload) != crc {
            s.corrupt = Some("checksum mismatch".into());
            break;
        }
        let rec = match decode_payload(payload) {
            Ok(r) => r,
            Err(e) => {
                s.corrupt = Some(format!("bad payload: {e}"));
                break;
            }
        };
        if rec.id <= prev {
            s.corrupt = Some(format!("id {} not above the previous {prev}", rec.id));
            break;
        }
        prev = rec.id;
        buf.start += total;
        offset += total as u64;
        s.last_id = rec.id;
        s.max_ms = s.max_ms.max(rec.published_unix_ms);
        if rec.id <= *last_id {
            s.skipped += 1;
            continue;
        }
        *last_id = rec.id;
        s.first_id.get_or_insert(rec.id);
        s.records += 1;
        on_record(rec);
    }
    s.good_len = offset;
    s.file_len = file.metadata()?.len().max(offset);
    Ok(s)
}
