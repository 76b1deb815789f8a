//! The append-only on-disk event log (`history.data_dir`, protocol 2.2, 3.2).
//!
//! Every accepted event is appended before it is acknowledged; at start-up the log is read
//! back to rebuild the in-memory history and to continue the id sequence.
//!
//! # On disk
//! - `data_dir/<first id, 20-digit zero-padded>.seg`: segments, records appended in strictly
//!   increasing id order. A new segment starts at a batch boundary once the current one has
//!   reached `segment_bytes`, so a segment can exceed it by one batch.
//! - Record: `[u32 LE payload length][u32 LE CRC-32C of the payload][payload]`; the payload
//!   layout is in `record`. Payloads over 16 MiB, that do not parse, hold non-UTF-8 text,
//!   or whose id is not above the previous record's are corrupt.
//! - `data_dir/meta`: the first id ever written with this directory (see `meta`), written
//!   atomically when the first record is appended; it survives segment deletion.
//!
//! # Threads
//! Everything runs on the caller's (event loop) thread except fsync, the `meta` write and
//! segment deletion, which run in order on one helper thread (`helper`). The helper reports
//! through the loop's `mio::Waker`; the loop then calls `poll_sync` until it returns `None`.
//! `write()` of a batch to the page cache happens on the loop thread.
//!
//! # Durability protocol
//! `append` each record of a batch, then `write_batch` (returns the batch's sequence number
//! once the bytes reached the kernel: that is `os` durability). In `fsync` mode call
//! `request_sync` afterwards (once per loop turn is enough). `poll_sync` then yields, in
//! increasing order, `Ok(seq)` = every batch with sequence number <= seq is durable, or
//! `Err(e)` = every batch written so far whose durability was not yet reported is refused
//! (their bytes have been cut off the segment files again, so they never come back).
//! At most one sync runs at a time; batches written while it runs are covered by the next
//! one (group commit). A segment closed by rotation is synced (with the directory entry of
//! the new one) by the sync that covers the first batch of the new segment.

mod crc;
mod helper;
mod lock;
mod meta;
mod open;
mod record;
mod recover;
#[cfg(test)]
mod tests;

pub use crc::crc32c;
pub use lock::DirLock;
pub use record::{
    DecodeError, EncodeError, MAX_PAYLOAD, RecordRef, Recovered, decode_payload, encode_payload,
};

use helper::{Done, Faults, Helper, Job};
use mio::Waker;
use recover::segment_name;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::TryRecvError;

/// Settings of `[history]` that concern the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// Start a new segment once the current one has this many bytes (default 64 MiB).
    pub segment_bytes: u64,
    /// Delete whole segments whose newest record is at least this old (0: never by age).
    pub max_age_ms: u64,
    /// Delete the oldest segments while the log is larger (0: no size bound).
    pub max_log_bytes: u64,
    /// `durability = "fsync"`.
    pub fsync: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 64 << 20,
            max_age_ms: 3_600_000,
            max_log_bytes: 0,
            fsync: false,
        }
    }
}

/// What `Log::open` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Records handed to the callback.
    pub records: u64,
    /// Segment files kept.
    pub segments: usize,
    pub first_id_ever: Option<u64>,
    /// Highest id in the log (None: no record).
    pub last_id: Option<u64>,
    /// Ids up to this one may have existed and are gone (0: none): for every cut whose
    /// successor is known, the successor's id - 1.
    pub forgotten_up_to: u64,
    /// Bytes were cut at the end of the newest segment (or a trailing segment held nothing
    /// valid): ids above `last_id` may have been issued and lost, which ones is unknown.
    pub tail_cut: bool,
    /// One human-readable line per dropped tail, corruption, skipped run or ignored file.
    pub dropped: Vec<String>,
}

/// Length and newest record of a segment (at some moment).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Extent {
    len: u64,
    /// 0: no record.
    last_id: u64,
    max_ms: u64,
}

struct Segment {
    path: PathBuf,
    name_id: u64,
    cur: Extent,
    /// What the last successful sync covered (fsync mode).
    synced: Extent,
    /// Open for the active (newest) segment, and for older ones until they are synced.
    file: Option<Arc<File>>,
    /// Could not be cut back after a failed write: the next batch starts a new segment.
    broken: bool,
}

#[derive(Default)]
struct Batch {
    first_id: Option<u64>,
    last_id: u64,
    max_ms: u64,
    /// A record could not be encoded: the whole batch is refused.
    error: Option<String>,
}

struct InFlight {
    seq: u64,
    files: Vec<(u64, Extent)>,
    dir: bool,
}

/// The log of one data directory. See the module documentation for the protocol; opened
/// by `Log::open` / `Log::open_locked` (in `open`).
pub struct Log {
    /// Held for the life of the log: one process per data directory.
    _lock: DirLock,
    dir: PathBuf,
    opts: LogOptions,
    waker: Arc<Waker>,
    helper: Helper,
    /// Oldest first; the back one is the segment being written.
    segments: VecDeque<Segment>,
    buf: Vec<u8>,
    batch: Batch,
    /// Id of the last record written (or recovered).
    last_id: u64,
    bytes: u64,
    first_id_ever: Option<u64>,
    meta_pending: bool,
    forgotten_up_to: u64,
    /// The recovery-cut horizon kept in `meta`.
    horizon: u64,
    written_seq: u64,
    /// Highest sequence number handed to a sync, or given up by a failed one.
    requested_seq: u64,
    in_flight: Option<InFlight>,
    sync_wanted: bool,
    dir_dirty: bool,
    local_error: Option<io::Error>,
    background_error: Option<String>,
    #[cfg_attr(not(test), allow(dead_code))]
    faults: Faults,
    /// Test hook: the next write stops after this many bytes with ENOSPC.
    #[cfg(test)]
    fail_write_after: Option<usize>,
}

const KEEP_BUF: usize = 4 << 20;

impl Log {
    /// Encodes `rec` into the write buffer (no I/O). Ids must increase strictly across
    /// everything appended. A record that cannot be stored (over the format's limits: no
    /// topic, more than 255 topics, a topic or event type over 255 bytes, payload over
    /// 16 MiB; or an id not above the previous one) makes `write_batch` refuse the whole
    /// batch with `InvalidInput`.
    pub fn append(&mut self, rec: &RecordRef<'_>) {
        if self.batch.error.is_some() {
            return;
        }
        let prev = self.batch.last_id.max(self.last_id);
        if rec.id <= prev {
            self.batch.error = Some(format!("record id {} is not above {prev}", rec.id));
            return;
        }
        if let Err(e) = record::encode_record(rec, &mut self.buf) {
            self.batch.error = Some(e.to_string());
            return;
        }
        self.batch.first_id.get_or_insert(rec.id);
        self.batch.last_id = rec.id;
        self.batch.max_ms = self.batch.max_ms.max(rec.published_unix_ms);
    }

    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty() || self.batch.error.is_some()
    }

    /// Writes the buffered records to the current segment (starting a new one first when
    /// it is full) and returns this batch's sequence number (1, 2, 3...; an empty batch also
    /// gets one). On error nothing of the batch remains in the file (best effort: if it
    /// cannot be cut back, the next batch goes to a new segment), the buffered records are
    /// discarded and no sequence number is used.
    pub fn write_batch(&mut self) -> io::Result<u64> {
        let result = self.write_buffered();
        let batch = std::mem::take(&mut self.batch);
        self.buf.clear();
        if self.buf.capacity() > KEEP_BUF {
            self.buf.shrink_to(KEEP_BUF / 4);
        }
        result?;
        if let Some(first) = batch.first_id {
            self.last_id = batch.last_id;
            if let Some(seg) = self.segments.back_mut() {
                seg.cur.last_id = batch.last_id;
                seg.cur.max_ms = seg.cur.max_ms.max(batch.max_ms);
            }
            if self.first_id_ever.is_none() {
                self.first_id_ever = Some(first);
                self.meta_pending = true;
            }
            if self.meta_pending
                && let Some(first_id) = self.first_id_ever
            {
                self.meta_pending = !self.helper.send(Job::Meta {
                    first_id,
                    horizon: self.horizon,
                });
            }
        }
        self.written_seq += 1;
        Ok(self.written_seq)
    }

    fn write_buffered(&mut self) -> io::Result<()> {
        if let Some(why) = &self.batch.error {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, why.clone()));
        }
        let Some(first_id) = self.batch.first_id else {
            return Ok(());
        };
        let rotate = match self.segments.back() {
            None => true,
            Some(s) => {
                s.broken
                    || s.file.is_none()
                    || (s.cur.len > 0 && s.cur.len >= self.opts.segment_bytes)
            }
        };
        if rotate {
            self.start_segment(first_id)?;
        }
        let fault = self.take_write_fault();
        let Some(seg) = self.segments.back_mut() else {
            return Err(io::Error::other("no segment to write"));
        };
        let Some(file) = seg.file.clone() else {
            return Err(io::Error::other("segment not open"));
        };
        let before = seg.cur.len;
        let written = write_all(&file, &self.buf, fault);
        match written {
            Ok(()) => {
                let n = self.buf.len() as u64;
                seg.cur.len += n;
                self.bytes += n;
                Ok(())
            }
            Err(e) => {
                if file.set_len(before).is_err() {
                    seg.broken = true;
                }
                Err(e)
            }
        }
    }

    #[cfg(test)]
    fn take_write_fault(&mut self) -> Option<usize> {
        self.fail_write_after.take()
    }

    #[cfg(not(test))]
    fn take_write_fault(&mut self) -> Option<usize> {
        None
    }

    fn start_segment(&mut self, first_id: u64) -> io::Result<()> {
        let path = self.dir.join(segment_name(first_id));
        let file = open_append(&path)?;
        let len = file.metadata()?.len();
        self.dir_dirty = true;
        if let Some(old) = self.segments.back_mut()
            && (!self.opts.fsync || old.synced.len >= old.cur.len)
        {
            old.file = None;
        }
        let ext = Extent {
            len,
            last_id: 0,
            max_ms: 0,
        };
        self.bytes += len;
        self.segments.push_back(Segment {
            path,
            name_id: first_id,
            cur: ext,
            synced: ext,
            file: Some(Arc::new(file)),
            broken: false,
        });
        Ok(())
    }

    /// `fsync` mode: makes everything written so far durable, on the helper thread. If a
    /// sync is running, the next one starts when it ends and covers everything written
    /// meanwhile. No-op in `os` mode or when nothing is unsynced.
    pub fn request_sync(&mut self) {
        if !self.opts.fsync {
            return;
        }
        if let Some(f) = &self.in_flight {
            if self.written_seq > f.seq {
                self.sync_wanted = true;
            }
            return;
        }
        if self.written_seq <= self.requested_seq {
            return;
        }
        let seq = self.written_seq;
        let mut files = Vec::new();
        let mut covered = Vec::new();
        for s in &self.segments {
            if let Some(f) = &s.file
                && s.cur != s.synced
            {
                files.push(f.clone());
                covered.push((s.name_id, s.cur));
            }
        }
        let dir = std::mem::take(&mut self.dir_dirty);
        self.requested_seq = seq;
        self.in_flight = Some(InFlight {
            seq,
            files: covered,
            dir,
        });
        if !self.helper.send(Job::Sync { seq, files, dir }) {
            self.in_flight = None;
            self.local_error = Some(io::Error::other("log helper thread is gone"));
            let _ = self.waker.wake();
        }
    }

    /// Non-blocking: the next sync result, if one arrived. Call until `None` after a wake.
    /// `Ok(seq)`: every batch with sequence number <= seq is durable (seqs increase from
    /// one result to the next). `Err`: every batch written up to now and not yet reported
    /// durable is refused, and its bytes were cut off the segment files. Always `None` in
    /// `os` mode (it still consumes the helper's other reports).
    pub fn poll_sync(&mut self) -> Option<io::Result<u64>> {
        loop {
            if let Some(e) = self.local_error.take() {
                self.fail_unsynced();
                return Some(Err(e));
            }
            match self.helper.try_recv() {
                Ok(Done::Sync { seq, result }) => {
                    let flight = self.in_flight.take();
                    match result {
                        Ok(()) => {
                            if let Some(f) = flight {
                                self.mark_synced(&f);
                            }
                            if std::mem::take(&mut self.sync_wanted) {
                                self.request_sync();
                            }
                            return Some(Ok(seq));
                        }
                        Err(e) => {
                            if flight.is_some_and(|f| f.dir) {
                                self.dir_dirty = true;
                            }
                            self.fail_unsynced();
                            return Some(Err(e));
                        }
                    }
                }
                Ok(Done::Meta(r)) => {
                    if let Err(e) = r {
                        self.meta_pending = true;
                        self.background_error = Some(format!("writing the log's meta file: {e}"));
                    }
                }
                Ok(Done::Delete(r)) => {
                    if let Err(e) = r {
                        self.background_error = Some(format!("deleting an old log segment: {e}"));
                    }
                }
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => {
                    if self.in_flight.take().is_some() {
                        self.local_error = Some(io::Error::other("log helper thread is gone"));
                        continue;
                    }
                    return None;
                }
            }
        }
    }

    fn mark_synced(&mut self, f: &InFlight) {
        let last = self.segments.len().saturating_sub(1);
        for (i, s) in self.segments.iter_mut().enumerate() {
            if let Some((_, ext)) = f.files.iter().find(|(id, _)| *id == s.name_id)
                && ext.len >= s.synced.len
            {
                s.synced = *ext;
            }
            if i != last && s.synced == s.cur {
                s.file = None;
            }
        }
    }

    /// After a failed sync: cut every segment back to what is known durable, so refused
    /// records never come back.
    fn fail_unsynced(&mut self) {
        self.sync_wanted = false;
        self.requested_seq = self.written_seq;
        let last = self.segments.len().saturating_sub(1);
        for (i, s) in self.segments.iter_mut().enumerate() {
            let Some(f) = &s.file else { continue };
            if s.cur != s.synced {
                if f.set_len(s.synced.len).is_err() && i == last {
                    s.broken = true;
                }
                self.bytes = self.bytes.saturating_sub(s.cur.len) + s.synced.len;
                s.cur = s.synced;
            }
            if i != last {
                s.file = None;
            }
        }
    }

    /// Deletes (on the helper thread) the oldest whole segments whose newest record is at
    /// least `max_age_ms` old, and then while the log is over `max_log_bytes`; never the
    /// segment being written. Raises `forgotten_up_to` at once.
    pub fn enforce_retention(&mut self, now_unix_ms: u64) {
        let mut paths = Vec::new();
        while self.segments.len() > 1 {
            let Some(s) = self.segments.front() else {
                break;
            };
            let old = self.opts.max_age_ms > 0
                && (s.cur.last_id == 0
                    || now_unix_ms.saturating_sub(s.cur.max_ms) >= self.opts.max_age_ms);
            let big = self.opts.max_log_bytes > 0 && self.bytes > self.opts.max_log_bytes;
            if !(old || big) {
                break;
            }
            let Some(s) = self.segments.pop_front() else {
                break;
            };
            self.bytes -= s.cur.len;
            self.forgotten_up_to = self.forgotten_up_to.max(s.cur.last_id);
            paths.push(s.path);
        }
        if !paths.is_empty() {
            // If the helper is gone the files stay; they are deleted after a restart.
            let _ = self.helper.send(Job::Delete { paths });
        }
    }

    /// The latest failure of background work other than syncs (the `meta` write, which is
    /// retried with the next batch; a segment deletion), seen by `poll_sync`: for the logs.
    pub fn take_background_error(&mut self) -> Option<String> {
        self.background_error.take()
    }

    pub fn first_id_ever(&self) -> Option<u64> {
        self.first_id_ever
    }

    /// Highest id known deleted or lost (0: none).
    pub fn forgotten_up_to(&self) -> u64 {
        self.forgotten_up_to
    }

    /// Bytes of all segment files (the `meta` file aside).
    pub fn bytes_on_disk(&self) -> u64 {
        self.bytes
    }

    /// Sequence number of the last batch written (0: none yet).
    pub fn last_batch_seq(&self) -> u64 {
        self.written_seq
    }

    /// Id of the last record written or recovered (0: none).
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

impl Drop for Log {
    /// Lets queued helper jobs finish and joins the helper thread.
    fn drop(&mut self) {
        self.helper.shutdown();
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `fail_after` (tests only): write that many bytes, then fail with ENOSPC.
fn write_all(file: &File, bytes: &[u8], fail_after: Option<usize>) -> io::Result<()> {
    let mut w = file;
    if let Some(k) = fail_after {
        w.write_all(&bytes[..k.min(bytes.len())])?;
        return Err(io::Error::from_raw_os_error(28)); // ENOSPC
    }
    w.write_all(bytes)
}
