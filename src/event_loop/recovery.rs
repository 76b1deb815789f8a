//! Start-up with a data directory: the on-disk log is opened (its directory already
//! locked) and read back into the hub — history, the id sequence, what was forgotten —
//! before the loop serves anyone.

use super::*;

/// Opens the log in `history.data_dir` and rebuilds the hub's history from it.
pub(super) fn open_log(
    config: &Config,
    lock: DirLock,
    waker: Arc<Waker>,
    hub: &mut Hub,
) -> io::Result<Log> {
    let options = LogOptions {
        max_age_ms: config.history.max_age.as_millis() as u64,
        max_log_bytes: config.history.max_log_bytes,
        fsync: config.history.durability == Durability::Fsync,
        ..LogOptions::default()
    };
    let started = Instant::now();
    let dir = &config.history.data_dir;
    let (log, report) = Log::open_locked(lock, options, waker, |r| {
        let event = hub.recover(
            r.id,
            r.published_unix_ms,
            &r.topics,
            r.event.as_deref(),
            &r.data,
            r.is_final,
        );
        hub.commit(&event);
    })
    .map_err(|e| io::Error::new(e.kind(), format!("history.data_dir {}: {e}", dir.display())))?;
    for line in &report.dropped {
        warn!("log recovery dropped: {line}");
    }
    if let Some(first) = report.first_id_ever {
        hub.set_remembers_from(first);
    }
    hub.note_forgotten(report.forgotten_up_to);
    if report.tail_cut {
        // Which ids the cut tail held is unknown: anything issued before this restart.
        // Ids are max(last + 1, Unix µs), so every one issued before now is below this
        // and every new one is above it: a resume from before now gets `reset`.
        hub.note_forgotten(report.last_id.unwrap_or(0).max(unix_micros()));
    }
    hub.prune(unix_millis(), usize::MAX);
    info!(
        "log recovered dir={} records={} segments={} last_id={} retained_events={} ms={}",
        dir.display(),
        report.records,
        report.segments,
        report.last_id.unwrap_or(0),
        hub.retained_events(),
        started.elapsed().as_millis()
    );
    Ok(log)
}
