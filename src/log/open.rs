//! Opening a data directory: reading every segment back (`recover`), handing the valid
//! records on, repairing damage (damaged bytes to `damaged/`, each segment keeping exactly
//! its valid records), reconciling `meta` and the resume horizon, and assembling the `Log`
//! with its helper thread. Runs once, before the event loop.

use super::helper::{Faults, Helper};
use super::meta::{self, MetaState};
use super::recover::{self, ReadBuf};
use super::{
    Batch, DirLock, Extent, Log, LogOptions, Recovered, RecoveryReport, Segment, open_append,
};
use mio::Waker;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::Arc;

impl Log {
    /// Locks `dir` (see `DirLock`), then opens it as `open_locked` does.
    pub fn open(
        dir: &Path,
        opts: LogOptions,
        waker: Arc<Waker>,
        on_record: impl FnMut(Recovered),
    ) -> io::Result<(Log, RecoveryReport)> {
        Log::open_locked(DirLock::acquire(dir)?, opts, waker, on_record)
    }

    /// Opens (creating if needed) the log in the locked directory, hands every valid record
    /// to `on_record` in id order, repairs damage (moving damaged bytes to `damaged/` and
    /// keeping every valid record) and starts the helper thread. The log keeps the lock.
    /// Blocks (reads, copies, fsync): call it before the event loop runs.
    pub fn open_locked(
        lock: DirLock,
        opts: LogOptions,
        waker: Arc<Waker>,
        mut on_record: impl FnMut(Recovered),
    ) -> io::Result<(Log, RecoveryReport)> {
        let dir = lock.dir().to_path_buf();
        let dir = dir.as_path();
        let mut dropped = Vec::new();
        match fs::remove_file(dir.join(meta::META_TMP)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                dropped.push(format!("{}: cannot remove: {e}", meta::META_TMP));
            }
            _ => {}
        }
        let meta_state = meta::read(dir)?;
        let files = recover::list_segments(dir, &mut dropped)?;

        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut buf = ReadBuf::new();
        let mut last_id = 0u64;
        let mut scans = Vec::with_capacity(files.len());
        for sf in &files {
            let mut f = File::open(&sf.path)?;
            scans.push(recover::scan_segment(
                &mut f,
                &mut buf,
                &mut last_id,
                now_us,
                &mut on_record,
            )?);
        }
        drop(buf);

        // The newest segment with a valid record is written next. Damaged bytes anywhere go
        // to `damaged/` (so an operator can look at them) and each segment keeps exactly its
        // valid records; a segment with nothing valid goes to `damaged/` whole.
        let damaged_dir = dir.join(recover::DAMAGED);
        let active = scans.iter().rposition(|s| s.has_valid());
        let mut dir_changed = false;
        let mut damaged_changed = false;
        let mut forgotten_up_to = 0u64;
        let mut tail_cut = false;
        let mut segments = VecDeque::new();
        let mut oldest = None;
        let mut records = 0;
        for (i, (sf, s)) in files.iter().zip(&scans).enumerate() {
            let name = sf.path.display();
            records += s.records;
            oldest = oldest.or(s.first_id);
            // The first id handed on after segment `i` (the successor of a cut at its end).
            let next_after = || scans[i + 1..].iter().find_map(|s| s.first_id);
            // Raise the resume horizon for every cut: a resume from before it cannot be
            // proven complete. A cut with no known successor is at the end of the log.
            let mut note_cut = |next: Option<u64>| match next.or_else(next_after) {
                Some(next) => forgotten_up_to = forgotten_up_to.max(next - 1),
                None => tail_cut = true,
            };
            if s.file_len == 0 {
                // A crash right after creating a segment: nothing was in it.
                if fs::remove_file(&sf.path).is_ok() {
                    dir_changed = true;
                }
                continue;
            }
            if !s.has_valid() {
                let why = s.damaged.first().map_or("", |d| d.reason.as_str());
                let fate = match recover::move_file(&sf.path, &damaged_dir) {
                    Ok(dest) => {
                        dir_changed = true;
                        damaged_changed = true;
                        format!("moved to {}", dest.display())
                    }
                    // It is found and skipped again at the next start.
                    Err(e) => format!("cannot move it to {}: {e}", damaged_dir.display()),
                };
                dropped.push(format!(
                    "{name}: offset 0: dropped {} bytes: {why}; no valid record, {fate}",
                    s.file_len
                ));
                note_cut(None);
                continue;
            }
            if s.skipped > 0 {
                dropped.push(format!(
                    "{name}: skipped {} valid records whose ids were not above earlier segments'",
                    s.skipped
                ));
            }
            let is_active = Some(i) == active;
            let mut seg = Segment {
                path: sf.path.clone(),
                name_id: sf.name_id,
                cur: Extent {
                    len: s.file_len,
                    last_id: s.last_id,
                    max_ms: s.max_ms,
                },
                synced: Extent::default(),
                file: None,
                broken: false,
            };
            if !s.damaged.is_empty() {
                // First every damaged range is saved; only then is the segment changed.
                let mut saved = Vec::with_capacity(s.damaged.len());
                for d in &s.damaged {
                    match recover::save_range(&sf.path, d.offset, d.len, &damaged_dir) {
                        Ok(dest) => saved.push(dest),
                        Err(e) => {
                            dropped.push(format!(
                                "{name}: offset {}: {} damaged bytes ({}) cannot be moved to {}: {e}; file kept as is",
                                d.offset,
                                d.len,
                                d.reason,
                                damaged_dir.display()
                            ));
                            break;
                        }
                    }
                }
                damaged_changed |= !saved.is_empty();
                let good_len = s.good_len();
                let repaired = if saved.len() < s.damaged.len() {
                    Err(None)
                } else if s.damaged.len() == 1
                    && s.good.last().is_some_and(|g| g.1 == s.damaged[0].offset)
                {
                    // Only a damaged tail: cut it, as a torn write is cut.
                    OpenOptions::new()
                        .write(true)
                        .open(&sf.path)
                        .and_then(|f| f.set_len(good_len).and_then(|()| f.sync_all()))
                        .map(|()| "truncated")
                        .map_err(Some)
                } else {
                    recover::rewrite(&sf.path, &s.good)
                        .map(|_| "segment rewritten with its valid records only")
                        .map_err(Some)
                };
                match repaired {
                    Ok(how) => {
                        dir_changed = true;
                        seg.cur.len = good_len;
                        for (d, dest) in s.damaged.iter().zip(&saved) {
                            dropped.push(format!(
                                "{name}: offset {}: dropped {} bytes: {}; moved to {}, {how}",
                                d.offset,
                                d.len,
                                d.reason,
                                dest.display()
                            ));
                            note_cut(d.next_id);
                        }
                    }
                    Err(e) => {
                        if let Some(e) = e {
                            dropped.push(format!(
                                "{name}: repair failed: {e}; damaged bytes saved, file kept as is"
                            ));
                        }
                        // The damage stays in the file (found again at the next start), so
                        // nothing is appended after it: the next batch starts a new segment.
                        seg.broken = true;
                        for d in &s.damaged {
                            note_cut(d.next_id);
                        }
                    }
                }
            }
            if is_active && !seg.broken {
                match open_append(&sf.path) {
                    Ok(f) => {
                        // What was recovered counts as synced from now on.
                        if opts.fsync
                            && s.damaged.is_empty()
                            && let Err(e) = f.sync_data()
                        {
                            dropped.push(format!("{name}: fsync failed: {e}"));
                            seg.broken = true;
                        }
                        seg.file = Some(Arc::new(f));
                    }
                    Err(e) => {
                        dropped.push(format!("{name}: cannot open for writing: {e}"));
                        seg.broken = true;
                    }
                }
            }
            seg.synced = seg.cur;
            segments.push_back(seg);
        }
        if damaged_changed {
            let _ = meta::sync_dir(&damaged_dir);
            dir_changed = true;
        }

        let mut horizon = 0;
        let (first_id_ever, mut write_meta) = match meta_state {
            MetaState::Valid(m, h) => {
                horizon = h;
                match oldest {
                    Some(o) if o < m => {
                        dropped.push(format!(
                            "{}: first_id {m} is above the oldest record {o}; rewritten",
                            dir.join(meta::META).display()
                        ));
                        (Some(o), true)
                    }
                    _ => (Some(m), false),
                }
            }
            MetaState::Missing => (oldest, oldest.is_some()),
            MetaState::Unreadable(why) => {
                dropped.push(format!(
                    "{}: unreadable ({why}); rebuilt from the oldest record",
                    dir.join(meta::META).display()
                ));
                (oldest, oldest.is_some())
            }
        };
        // This start's cuts join the horizon of earlier ones, kept in `meta` (the repaired
        // segments no longer show them). For a tail cut the lost ids are unknown: all ids
        // issued so far are below max(last id, now) (ids are max(last + 1, Unix µs)).
        let earlier = horizon;
        let mut cuts = forgotten_up_to;
        if tail_cut {
            cuts = cuts.max(last_id.max(now_us));
        }
        if cuts > horizon {
            horizon = cuts;
            write_meta |= first_id_ever.is_some();
        }
        forgotten_up_to = forgotten_up_to.max(earlier);
        let mut meta_pending = false;
        if write_meta && let Some(first) = first_id_ever {
            meta_pending = meta::write(dir, first, horizon).is_err();
        }
        if let (Some(o), Some(f)) = (oldest, first_id_ever)
            && o > f
        {
            forgotten_up_to = forgotten_up_to.max(o - 1);
        }
        if dir_changed {
            let _ = meta::sync_dir(dir);
        }

        let faults = Faults::default();
        let helper = Helper::spawn(dir.to_path_buf(), waker.clone(), faults.clone())?;
        let bytes = segments.iter().map(|s| s.cur.len).sum();
        let report = RecoveryReport {
            records,
            segments: segments.len(),
            first_id_ever,
            last_id: (last_id > 0).then_some(last_id),
            forgotten_up_to,
            tail_cut,
            dropped,
        };
        let log = Log {
            _lock: lock,
            dir: dir.to_path_buf(),
            opts,
            waker,
            faults,
            helper,
            segments,
            buf: Vec::new(),
            batch: Batch::default(),
            last_id,
            bytes,
            first_id_ever,
            meta_pending,
            forgotten_up_to,
            horizon,
            written_seq: 0,
            requested_seq: 0,
            in_flight: None,
            sync_wanted: false,
            dir_dirty: false,
            local_error: None,
            background_error: None,
            #[cfg(test)]
            fail_write_after: None,
        };
        Ok((log, report))
    }
}
