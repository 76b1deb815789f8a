use super::recover::segment_name;
use super::*;
use crate::rng::Rng;
use mio::{Events, Poll, Token};
use std::fs;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tempfile::TempDir;

struct Env {
    tmp: TempDir,
    poll: Poll,
    waker: Arc<Waker>,
}

impl Env {
    fn new() -> Env {
        let poll = Poll::new().expect("poll");
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).expect("waker"));
        Env {
            tmp: tempfile::tempdir().expect("tempdir"),
            poll,
            waker,
        }
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    fn open(&self, opts: LogOptions) -> (Log, RecoveryReport, Vec<Recovered>) {
        let mut got = Vec::new();
        let (log, report) =
            Log::open(&self.dir(), opts, self.waker.clone(), |r| got.push(r)).expect("open");
        assert_eq!(report.records, got.len() as u64);
        assert!(got.windows(2).all(|w| w[0].id < w[1].id), "id order");
        (log, report, got)
    }

    fn segments(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.dir())
            .expect("read_dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        v.sort();
        v
    }

    /// Polls until a sync result covering `want` (or an error) arrives; 10 s at most.
    fn wait_sync(&mut self, log: &mut Log, want: u64) -> Vec<io::Result<u64>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut events = Events::with_capacity(4);
        let mut out = Vec::new();
        loop {
            while let Some(r) = log.poll_sync() {
                let done = match &r {
                    Ok(s) => *s >= want,
                    Err(_) => true,
                };
                out.push(r);
                if done {
                    return out;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no sync result within 10 s: written {} requested {} in_flight {:?} wanted {}",
                log.written_seq,
                log.requested_seq,
                log.in_flight.as_ref().map(|f| f.seq),
                log.sync_wanted
            );
            self.poll
                .poll(&mut events, Some(Duration::from_millis(200)))
                .expect("poll");
        }
    }
}

fn opts() -> LogOptions {
    LogOptions {
        segment_bytes: 64 << 20,
        max_age_ms: 0,
        max_log_bytes: 0,
        fsync: false,
    }
}

fn rec(id: u64, ms: u64, topics: &[&str], event: Option<&str>, data: &str) -> Recovered {
    Recovered {
        id,
        published_unix_ms: ms,
        is_final: false,
        topics: topics.iter().map(|t| Box::from(*t)).collect(),
        event: event.map(Box::from),
        data: data.into(),
    }
}

fn simple(id: u64) -> Recovered {
    rec(id, id, &["t"], None, &format!("payload {id}"))
}

fn write(log: &mut Log, recs: &[Recovered]) -> u64 {
    for r in recs {
        log.append(&r.as_ref());
    }
    assert!(log.has_buffered() || recs.is_empty());
    let seq = log.write_batch().expect("write_batch");
    assert!(!log.has_buffered());
    seq
}

/// Records of equal framed size.
fn fixed(id: u64) -> Recovered {
    rec(id, id, &["t"], None, "x")
}

fn write_ids(log: &mut Log, ids: std::ops::RangeInclusive<u64>) -> Vec<Recovered> {
    let recs: Vec<Recovered> = ids.map(simple).collect();
    write(log, &recs);
    recs
}

fn file_len(p: &Path) -> u64 {
    fs::metadata(p).expect("metadata").len()
}

fn framed_len(r: &Recovered) -> u64 {
    let mut v = Vec::new();
    record::encode_record(&r.as_ref(), &mut v).expect("encode");
    v.len() as u64
}

#[test]
fn round_trip() {
    let env = Env::new();
    let (mut log, report, got) = env.open(opts());
    assert!(got.is_empty());
    assert_eq!(report, RecoveryReport::default());
    assert_eq!(log.first_id_ever(), None);

    let topics32: Vec<String> = (0..32)
        .map(|i| format!("{i:02}:{}", "t".repeat(197)))
        .collect();
    let topics32: Vec<&str> = topics32.iter().map(|s| s.as_str()).collect();
    let event64 = "e".repeat(64);
    let event255 = "é".repeat(127);
    let mut all = vec![
        rec(
            1_000,
            5,
            &["notifications:42"],
            Some("notification"),
            "{\"title\":\"Hi\"}",
        ),
        rec(1_001, 6, &["a", "b"], None, ""),
        rec(
            1_002,
            7,
            &["unicode"],
            Some("ünï"),
            "日本語 🎉\r\nline2\rline3\n",
        ),
        rec(1_003, 8, &topics32, Some(&event64), "thirty-two topics"),
        rec(1_004, 9, &["x"], Some(&event255), &"d".repeat(100_000)),
    ];
    all[4].is_final = true;
    let s1 = write(&mut log, &all[..2]);
    let s2 = write(&mut log, &all[2..]);
    assert_eq!((s1, s2), (1, 2));
    assert_eq!(log.first_id_ever(), Some(1_000));
    let on_disk = log.bytes_on_disk();
    assert_eq!(on_disk, all.iter().map(framed_len).sum::<u64>());
    drop(log);

    let (mut log, report, got) = env.open(opts());
    assert_eq!(got, all);
    assert_eq!(report.last_id, Some(1_004));
    assert_eq!(report.first_id_ever, Some(1_000));
    assert_eq!(report.segments, 1);
    assert_eq!(report.forgotten_up_to, 0);
    assert!(report.dropped.is_empty(), "{:?}", report.dropped);
    assert_eq!(log.bytes_on_disk(), on_disk);
    assert_eq!(log.last_id(), 1_004);

    // Appending after a reopen continues the same segment.
    all.extend(write_ids(&mut log, 2_000..=2_002));
    drop(log);
    let (_log, report, got) = env.open(opts());
    assert_eq!(got, all);
    assert_eq!(report.segments, 1);
    assert_eq!(env.segments().len(), 1);
}

#[test]
fn segments_rotate_and_recover_in_order() {
    let env = Env::new();
    let o = LogOptions {
        segment_bytes: 300,
        ..opts()
    };
    let (mut log, _, _) = env.open(o);
    let mut all = Vec::new();
    let mut firsts = Vec::new();
    for b in 0..40u64 {
        let first = 100 + b * 10;
        let before = log.segment_count();
        all.extend(write_ids(&mut log, first..=first + 4));
        if log.segment_count() != before {
            firsts.push(first);
        }
    }
    let names: Vec<String> = env
        .segments()
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let expected: Vec<String> = firsts.iter().map(|&f| segment_name(f)).collect();
    assert!(names.len() > 5, "{names:?}");
    assert_eq!(names, expected);
    assert_eq!(names[0], "00000000000000000100.seg");
    for p in &env.segments()[..names.len() - 1] {
        // Rotation happens at a batch boundary once a segment reached segment_bytes.
        assert!(
            file_len(p) >= 300 && file_len(p) < 300 + 5 * 40,
            "{}",
            file_len(p)
        );
    }
    let total: u64 = env.segments().iter().map(|p| file_len(p)).sum();
    assert_eq!(log.bytes_on_disk(), total);
    drop(log);

    let (log, report, got) = env.open(o);
    assert_eq!(got, all);
    assert_eq!(report.segments, names.len());
    assert_eq!(log.bytes_on_disk(), total);
    assert!(report.dropped.is_empty());
}

#[test]
fn torn_tail_at_every_offset() {
    let env = Env::new();
    let (mut log, _, _) = env.open(opts());
    let mut all = write_ids(&mut log, 1..=3);
    let last = rec(
        4,
        4,
        &["topic:a", "topic:b"],
        Some("ev"),
        "the last record ✓",
    );
    write(&mut log, std::slice::from_ref(&last));
    drop(log);
    let path = env.segments()[0].clone();
    let full = fs::read(&path).expect("read");
    let last_start = full.len() - framed_len(&last) as usize;

    for cut in last_start..full.len() {
        fs::write(&path, &full[..cut]).expect("write");
        let (log, report, got) = env.open(opts());
        assert_eq!(got, all, "cut at {cut}");
        assert_eq!(
            file_len(&path),
            last_start as u64,
            "truncated (cut at {cut})"
        );
        assert_eq!(log.bytes_on_disk(), last_start as u64);
        if cut == last_start {
            assert!(report.dropped.is_empty());
        } else {
            assert_eq!(report.dropped.len(), 1, "{:?}", report.dropped);
            let line = &report.dropped[0];
            assert!(line.contains(&segment_name(1)), "{line}");
            assert!(
                line.contains(&format!("dropped {} bytes", cut - last_start)),
                "{line}"
            );
            assert!(line.contains("torn"), "{line}");
        }
        assert_eq!(report.last_id, Some(3));
    }
    // The log is usable after the repair.
    let (mut log, _, _) = env.open(opts());
    all.extend(write_ids(&mut log, 10..=11));
    drop(log);
    let (_log, report, got) = env.open(opts());
    assert_eq!(got, all);
    assert!(report.dropped.is_empty());
}

#[test]
fn flipped_bytes_in_last_record() {
    let env = Env::new();
    let (mut log, _, _) = env.open(opts());
    let keep = write_ids(&mut log, 1..=5);
    let last = simple(6);
    write(&mut log, std::slice::from_ref(&last));
    drop(log);
    let path = env.segments()[0].clone();
    let full = fs::read(&path).expect("read");
    let start = full.len() - framed_len(&last) as usize;
    // In the checksum, in the id, in the data, and in the length field.
    for (at, expect) in [
        (start + 4, "checksum mismatch"),
        (start + 7, "checksum mismatch"),
        (start + 8, "checksum mismatch"),
        (full.len() - 1, "checksum mismatch"),
        (start, "torn record"),
        (start + 3, "over 16 MiB"),
    ] {
        let mut bad = full.clone();
        bad[at] ^= 0x40;
        fs::write(&path, &bad).expect("write");
        let (_log, report, got) = env.open(opts());
        assert_eq!(got, keep, "flip at {at}");
        assert_eq!(file_len(&path), start as u64);
        assert_eq!(report.dropped.len(), 1);
        assert!(report.dropped[0].contains(expect), "{:?}", report.dropped);
        assert!(report.dropped[0].contains(&format!("offset {start}")));
    }
}

#[test]
fn corruption_in_an_older_segment() {
    let env = Env::new();
    let o = LogOptions {
        segment_bytes: 1,
        ..opts()
    };
    let (mut log, _, _) = env.open(o);
    let a = write_ids(&mut log, 1..=4);
    let b = write_ids(&mut log, 10..=14);
    let c = write_ids(&mut log, 20..=22);
    drop(log);
    let segs = env.segments();
    assert_eq!(segs.len(), 3);
    let mid = segs[1].clone();
    let mut bytes = fs::read(&mid).expect("read");
    let len_before = bytes.len() as u64;
    let third = 2 * framed_len(&b[0]) as usize;
    bytes[third + 12] ^= 0x01; // inside the id of record 12
    fs::write(&mid, &bytes).expect("write");

    let mut want = a.clone();
    want.extend_from_slice(&b[..2]);
    want.extend_from_slice(&b[3..]);
    want.extend_from_slice(&c);
    let (log, report, got) = env.open(o);
    assert_eq!(got, want, "records 13 and 14 after the damage are kept");
    assert_eq!(report.dropped.len(), 1, "{:?}", report.dropped);
    let line = &report.dropped[0];
    assert!(line.contains(&segment_name(10)), "{line}");
    assert!(line.contains("checksum mismatch"), "{line}");
    assert!(line.contains("rewritten"), "{line}");
    let rec_len = framed_len(&b[2]);
    assert!(line.contains(&format!("offset {third}: dropped {rec_len} bytes")));
    assert_eq!(
        file_len(&mid),
        len_before - rec_len,
        "holds its valid records only"
    );
    // Record 12 is gone: a resume from before it cannot be proven complete.
    assert_eq!(report.forgotten_up_to, 12);
    assert_eq!(log.forgotten_up_to(), 12);
    assert!(!report.tail_cut);
    assert_eq!(report.last_id, Some(22));
    drop(log);

    // Repaired: nothing to report any more, but the horizon is remembered (`meta`).
    let (_log, report, got) = env.open(o);
    assert_eq!(got, want);
    assert!(report.dropped.is_empty(), "{:?}", report.dropped);
    assert_eq!(report.forgotten_up_to, 12);
}

/// The files of `data/damaged`, sorted by name, with their bytes.
fn damaged_files(env: &Env) -> Vec<(String, Vec<u8>)> {
    let Ok(rd) = fs::read_dir(env.dir().join("damaged")) else {
        return Vec::new();
    };
    let mut v: Vec<(String, Vec<u8>)> = rd
        .map(|e| {
            let p = e.expect("entry").path();
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            (name, fs::read(&p).expect("read"))
        })
        .collect();
    v.sort();
    v
}

fn framed(recs: &[Recovered]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in recs {
        record::encode_record(&r.as_ref(), &mut out).expect("encode");
    }
    out
}

#[test]
fn a_flipped_byte_in_record_3_of_10_keeps_the_other_nine() {
    let env = Env::new();
    let (mut log, _, _) = env.open(opts());
    let all = write_ids(&mut log, 1..=10);
    drop(log);
    let path = env.segments()[0].clone();
    let orig = fs::read(&path).expect("read");
    let start = framed(&all[..2]).len();
    let len3 = framed_len(&all[2]) as usize;
    let mut bad = orig.clone();
    bad[start + len3 / 2] ^= 0x01; // in the middle of record 3
    fs::write(&path, &bad).expect("write");

    let (mut log, report, got) = env.open(opts());
    let kept: Vec<Recovered> = [&all[..2], &all[3..]].concat();
    assert_eq!(got, kept);
    assert_eq!(report.dropped.len(), 1, "{:?}", report.dropped);
    let line = &report.dropped[0];
    assert!(
        line.contains(&format!(
            "offset {start}: dropped {len3} bytes: checksum mismatch"
        )),
        "{line}"
    );
    assert!(line.contains("damaged"), "{line}");
    // The damaged bytes are kept aside as they were; the segment holds the good records.
    let saved = damaged_files(&env);
    assert_eq!(
        saved,
        vec![(
            format!("{}.{start}", segment_name(1)),
            bad[start..start + len3].to_vec()
        )]
    );
    assert_eq!(fs::read(&path).expect("read"), framed(&kept));
    assert_eq!(
        report.forgotten_up_to, 3,
        "a resume from before 4 gets reset"
    );
    assert!(!report.tail_cut);
    assert_eq!(report.last_id, Some(10));
    // Appending continues the repaired segment.
    let more = write_ids(&mut log, 11..=12);
    drop(log);
    let (_log, report, got) = env.open(opts());
    assert_eq!(got, [kept, more].concat());
    assert!(report.dropped.is_empty(), "{:?}", report.dropped);
    assert_eq!(report.forgotten_up_to, 3, "kept across restarts");
    assert_eq!(damaged_files(&env).len(), 1);
}

#[test]
fn a_torn_tail_is_moved_aside_and_reported_as_a_tail_cut() {
    let env = Env::new();
    let (mut log, _, _) = env.open(opts());
    let all = write_ids(&mut log, 1..=4);
    drop(log);
    let path = env.segments()[0].clone();
    let orig = fs::read(&path).expect("read");
    let good = framed(&all[..3]).len();
    let cut = orig.len() - 5;
    fs::write(&path, &orig[..cut]).expect("write");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64;

    let (log, report, got) = env.open(opts());
    assert_eq!(got, all[..3]);
    assert!(report.tail_cut, "the lost ids are unknown");
    assert_eq!(report.forgotten_up_to, 0, "no successor known");
    assert_eq!(file_len(&path), good as u64);
    assert_eq!(
        damaged_files(&env),
        vec![(
            format!("{}.{good}", segment_name(1)),
            orig[good..cut].to_vec()
        )]
    );
    assert!(
        report.dropped[0].contains("truncated"),
        "{:?}",
        report.dropped
    );
    drop(log);
    // The next start no longer sees the cut but remembers the horizon it implied:
    // everything issued before that start.
    let (_log, report, _) = env.open(opts());
    assert!(!report.tail_cut && report.dropped.is_empty());
    assert!(
        report.forgotten_up_to >= before,
        "{} < {before}",
        report.forgotten_up_to
    );
}

#[test]
fn random_garbage_between_good_records_is_skipped() {
    let env = Env::new();
    fs::create_dir_all(env.dir()).expect("mkdir");
    let a: Vec<Recovered> = (1..=5).map(simple).collect();
    let b: Vec<Recovered> = (6..=10).map(simple).collect();
    let mut x = Rng::new(0x5EED_u64);
    let garbage: Vec<u8> = (0..5000).map(|_| x.next_u64() as u8).collect();
    let mut bytes = framed(&a);
    let at = bytes.len();
    bytes.extend_from_slice(&garbage);
    bytes.extend_from_slice(&framed(&b));
    let path = env.dir().join(segment_name(1));
    fs::write(&path, &bytes).expect("write");

    let (_log, report, got) = env.open(opts());
    assert_eq!(got, [a.clone(), b.clone()].concat());
    assert_eq!(report.dropped.len(), 1, "{:?}", report.dropped);
    assert!(
        report.dropped[0].contains(&format!("offset {at}: dropped 5000 bytes")),
        "{:?}",
        report.dropped
    );
    assert_eq!(report.forgotten_up_to, 5, "between 5 and 6");
    assert!(!report.tail_cut);
    assert_eq!(fs::read(&path).expect("read"), framed(&[a, b].concat()));
    assert_eq!(damaged_files(&env)[0].1, garbage);
}

#[test]
fn a_garbage_segment_between_good_ones_is_moved_aside() {
    let env = Env::new();
    let o = LogOptions {
        segment_bytes: 1,
        ..opts()
    };
    let (mut log, _, _) = env.open(o);
    let a = write_ids(&mut log, 1..=3);
    let b = write_ids(&mut log, 20..=22);
    drop(log);
    let junk = env.dir().join(segment_name(10));
    fs::write(&junk, b"not a record at all, not even close").expect("write");
    let (_log, report, got) = env.open(o);
    assert_eq!(got, [a, b].concat());
    assert!(!junk.exists());
    assert_eq!(damaged_files(&env).len(), 1);
    assert!(report.dropped[0].contains("no valid record, moved to"));
    assert_eq!(
        report.forgotten_up_to, 19,
        "up to the next segment's first id"
    );
    assert!(!report.tail_cut);
}

#[test]
fn megabytes_of_garbage_scan_fast() {
    let env = Env::new();
    fs::create_dir_all(env.dir()).expect("mkdir");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64;
    // Ids like real ones (Unix µs): the cheap checks must still reject garbage quickly.
    let a: Vec<Recovered> = (0..3).map(|i| simple(now - 1000 + i)).collect();
    let b: Vec<Recovered> = (0..3).map(|i| simple(now - 500 + i)).collect();
    let mut bytes = framed(&a);
    let mut x = Rng::new(0xC0FF_EE00_u64);
    let n = 8 << 20;
    bytes.reserve(n);
    for _ in 0..n / 8 {
        bytes.extend_from_slice(&x.next_u64().to_le_bytes());
    }
    bytes.extend_from_slice(&framed(&b));
    fs::write(env.dir().join(segment_name(a[0].id)), &bytes).expect("write");
    let started = Instant::now();
    let (_log, report, got) = env.open(opts());
    let t = started.elapsed();
    assert_eq!(got, [a, b].concat());
    assert_eq!(report.dropped.len(), 1, "{:?}", report.dropped);
    println!(
        "garbage scan: {} MiB of random bytes resynchronised (and moved aside) in {:.3} s",
        n >> 20,
        t.as_secs_f64()
    );
    assert!(t < Duration::from_secs(60), "{t:?}");
}

#[test]
fn a_second_open_of_the_directory_is_refused() {
    let env = Env::new();
    let (mut log, _, _) = env.open(opts());
    let recs = write_ids(&mut log, 1..=2);
    let err = match Log::open(&env.dir(), opts(), env.waker.clone(), |_| {}) {
        Ok(_) => panic!("a second open must fail"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("pid {}", std::process::id())) && msg.contains("in use by another"),
        "{msg}"
    );
    drop(log);
    let (_log, _, got) = env.open(opts());
    assert_eq!(got, recs, "free again once the log is dropped");
}

#[test]
fn overlapping_ids_in_a_later_segment_are_skipped() {
    let env = Env::new();
    let o = LogOptions {
        segment_bytes: 1,
        ..opts()
    };
    let (mut log, _, _) = env.open(o);
    let a = write_ids(&mut log, 1..=5);
    let b = write_ids(&mut log, 10..=12);
    drop(log);
    // A stray copy of records 3..=5 followed by 6 as a segment between the two.
    let stray = env.dir().join(segment_name(3));
    let mut bytes = Vec::new();
    for r in [simple(3), simple(4), simple(5), simple(6)] {
        record::encode_record(&r.as_ref(), &mut bytes).expect("encode");
    }
    fs::write(&stray, &bytes).expect("write");
    let (_log, report, got) = env.open(o);
    let mut want = a.clone();
    want.push(simple(6));
    want.extend(b);
    assert_eq!(got, want);
    assert_eq!(report.dropped.len(), 1);
    assert!(
        report.dropped[0].contains("skipped 3"),
        "{:?}",
        report.dropped
    );
}

#[test]
fn garbage_appended_and_garbage_segment() {
    let env = Env::new();
    let (mut log, _, _) = env.open(opts());
    let all = write_ids(&mut log, 1..=10);
    drop(log);
    let path = env.segments()[0].clone();
    let good = file_len(&path);
    let mut bytes = fs::read(&path).expect("read");
    let mut x = Rng::new(0x1234_5678_9ABC_DEF0u64);
    for _ in 0..1000 {
        bytes.push(x.next_u64() as u8);
    }
    fs::write(&path, &bytes).expect("write");
    // And a whole segment of garbage after it.
    let junk = env.dir().join(segment_name(500));
    fs::write(&junk, &bytes[good as usize..]).expect("write");

    let (mut log, report, got) = env.open(opts());
    assert_eq!(got, all);
    assert_eq!(file_len(&path), good);
    assert!(
        !junk.exists(),
        "a trailing segment without a valid record is removed"
    );
    assert_eq!(report.dropped.len(), 2, "{:?}", report.dropped);
    assert!(report.dropped.iter().any(|l| l.contains(&segment_name(1))));
    assert!(
        report
            .dropped
            .iter()
            .any(|l| l.contains(&segment_name(500)))
    );
    assert_eq!(report.segments, 1);
    let more = write_ids(&mut log, 11..=12);
    drop(log);
    let (_log, report, got) = env.open(opts());
    assert_eq!(got, [all, more].concat());
    assert!(report.dropped.is_empty());
}

#[test]
fn empty_segment_files() {
    let env = Env::new();
    let o = LogOptions {
        segment_bytes: 1,
        ..opts()
    };
    let (mut log, _, _) = env.open(o);
    let a = write_ids(&mut log, 1..=2);
    let b = write_ids(&mut log, 10..=12);
    drop(log);
    // A crash right after creating a segment leaves it empty; also one in the middle.
    fs::write(env.dir().join(segment_name(5)), b"").expect("write");
    fs::write(env.dir().join(segment_name(40)), b"").expect("write");
    let (mut log, report, got) = env.open(o);
    assert_eq!(got, [a.clone(), b.clone()].concat());
    assert!(report.dropped.is_empty(), "{:?}", report.dropped);
    assert_eq!(report.segments, 2);
    assert_eq!(env.segments().len(), 2);
    let c = write_ids(&mut log, 41..=41);
    drop(log);
    let (_log, _, got) = env.open(o);
    assert_eq!(got, [a, b, c].concat());

    // A directory holding nothing but an empty segment.
    let env = Env::new();
    fs::create_dir_all(env.dir()).expect("mkdir");
    fs::write(env.dir().join(segment_name(7)), b"").expect("write");
    let (mut log, report, got) = env.open(o);
    assert!(got.is_empty() && report.dropped.is_empty());
    assert_eq!(report.last_id, None);
    let d = write_ids(&mut log, 8..=9);
    drop(log);
    let (_log, _, got) = env.open(o);
    assert_eq!(got, d);
}

#[test]
fn meta_keeps_the_first_id() {
    let env = Env::new();
    let o = LogOptions {
        segment_bytes: 1,
        max_age_ms: 1_000,
        ..opts()
    };
    let (mut log, _, _) = env.open(o);
    write(&mut log, &[rec(500, 10, &["t"], None, "a")]);
    assert_eq!(log.first_id_ever(), Some(500));
    write(&mut log, &[rec(600, 20, &["t"], None, "b")]);
    write(&mut log, &[rec(700, 5_000, &["t"], None, "c")]);
    drop(log);
    let meta_text = fs::read_to_string(env.dir().join("meta")).expect("meta");
    // No cut happened: no horizon line.
    assert_eq!(meta_text, "ssehub-log 1\nfirst_id 500\n");

    let (mut log, report, _) = env.open(o);
    assert_eq!(report.first_id_ever, Some(500));
    log.enforce_retention(5_000);
    assert_eq!(log.forgotten_up_to(), 600);
    drop(log);
    assert_eq!(env.segments().len(), 1);

    let (log, report, got) = env.open(o);
    assert_eq!(got.len(), 1);
    assert_eq!(report.first_id_ever, Some(500));
    assert_eq!(log.first_id_ever(), Some(500));
    assert_eq!(report.forgotten_up_to, 699);
    drop(log);

    // Without meta (crash before the helper wrote it) the oldest record stands in.
    fs::remove_file(env.dir().join("meta")).expect("rm");
    let (_log, report, _) = env.open(o);
    assert_eq!(report.first_id_ever, Some(700));
    assert_eq!(report.forgotten_up_to, 0);
    assert!(env.dir().join("meta").exists(), "rewritten at open");
}

#[test]
fn bad_meta() {
    let env = Env::new();
    let (mut log, _, _) = env.open(opts());
    write_ids(&mut log, 3..=4);
    drop(log);
    let meta = env.dir().join("meta");
    fs::write(&meta, b"\xFF\x00garbage").expect("write");
    let (_log, report, got) = env.open(opts());
    assert_eq!(got.len(), 2);
    assert_eq!(report.first_id_ever, Some(3));
    assert!(
        report.dropped[0].contains("unreadable"),
        "{:?}",
        report.dropped
    );
    assert_eq!(
        fs::read_to_string(&meta).expect("meta"),
        "ssehub-log 1\nfirst_id 3\n"
    );
    drop(_log);

    fs::write(&meta, b"ssehub-log 2\nfirst_id 3\n").expect("write");
    let err = Log::open(&env.dir(), opts(), env.waker.clone(), |_| {})
        .err()
        .expect("another format version is refused");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn retention_by_age() {
    let env = Env::new();
    let o = LogOptions {
        segment_bytes: 1,
        max_age_ms: 1_000,
        ..opts()
    };
    let (mut log, _, _) = env.open(o);
    // Segment i holds ids 10i+1..=10i+3 published at 1000i ms.
    for i in 0..5u64 {
        let recs: Vec<Recovered> = (1..=3)
            .map(|k| rec(10 * i + k, 1_000 * i + k, &["t"], None, "x"))
            .collect();
        write(&mut log, &recs);
    }
    assert_eq!(log.segment_count(), 5);
    log.enforce_retention(2_002); // only segment 0 (newest at 3 ms) is >= 1000 ms old
    assert_eq!(log.forgotten_up_to(), 3);
    assert_eq!(log.segment_count(), 4);
    log.enforce_retention(2_003); // and now segment 1 (newest at 1003 ms)
    assert_eq!(log.forgotten_up_to(), 13);
    assert_eq!(log.segment_count(), 3);
    // Everything is old now, but the segment being written stays.
    log.enforce_retention(1_000_000);
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.forgotten_up_to(), 33);
    let on_disk = log.bytes_on_disk();
    drop(log); // joins the helper: deletions are done
    assert_eq!(env.segments(), [env.dir().join(segment_name(41))]);
    assert_eq!(on_disk, file_len(&env.dir().join(segment_name(41))));

    let (log, report, got) = env.open(o);
    assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), [41, 42, 43]);
    assert_eq!(report.forgotten_up_to, 40);
    assert_eq!(log.forgotten_up_to(), 40);
    assert_eq!(report.first_id_ever, Some(1));
}

#[test]
fn retention_by_size() {
    let env = Env::new();
    let o = LogOptions {
        segment_bytes: 1,
        max_log_bytes: 1,
        max_age_ms: 0,
        ..opts()
    };
    let (mut log, _, _) = env.open(o);
    for i in 0..6u64 {
        write(&mut log, &[fixed(10 * i + 1), fixed(10 * i + 2)]);
    }
    let seg = log.bytes_on_disk() / 6;
    assert_eq!(seg, 2 * framed_len(&fixed(1)));
    log.enforce_retention(0);
    assert_eq!(log.segment_count(), 1, "never the active segment");
    assert_eq!(log.forgotten_up_to(), 42);
    drop(log);

    let o = LogOptions {
        max_log_bytes: 3 * seg,
        ..o
    };
    let (mut log, _, _) = env.open(o);
    for i in 6..12u64 {
        write(&mut log, &[fixed(10 * i + 1), fixed(10 * i + 2)]);
    }
    log.enforce_retention(0);
    assert_eq!(log.segment_count(), 3);
    assert!(log.bytes_on_disk() <= 3 * seg);
    assert_eq!(log.forgotten_up_to(), 82);
    drop(log);
    assert_eq!(env.segments().len(), 3);
}

#[test]
fn fsync_mode_reports_every_batch() {
    let mut env = Env::new();
    let o = LogOptions {
        fsync: true,
        segment_bytes: 400,
        ..opts()
    };
    let (mut log, _, _) = env.open(o);
    assert_eq!(log.poll_sync().map(|r| r.is_ok()), None);
    log.request_sync(); // nothing written: no-op
    let mut seq = 0;
    let mut all = Vec::new();
    let mut reported = Vec::new();
    for round in 0..20u64 {
        // Several batches per turn share a sync.
        for b in 0..3 {
            let first = 1 + round * 100 + b * 10;
            all.extend(write_ids(&mut log, first..=first + 2));
            seq += 1;
            log.request_sync();
        }
        if round % 4 == 3 {
            for r in env.wait_sync(&mut log, seq) {
                reported.push(r.expect("sync ok"));
            }
        }
    }
    log.request_sync(); // all requested already: no-op
    assert!(log.in_flight.is_none());
    all.extend(write_ids(&mut log, 5_000..=5_001));
    seq += 1;
    log.request_sync();
    for r in env.wait_sync(&mut log, seq) {
        reported.push(r.expect("sync ok"));
    }
    assert!(reported.windows(2).all(|w| w[0] < w[1]), "{reported:?}");
    assert_eq!(reported.last(), Some(&seq));
    assert!(reported.len() < seq as usize, "group commit: {reported:?}");
    assert!(log.segment_count() > 3);
    // An empty batch also gets a sequence number and is reported.
    let empty = log.write_batch().expect("empty batch");
    log.request_sync();
    assert_eq!(
        env.wait_sync(&mut log, empty).pop().map(|r| r.ok()),
        Some(Some(empty))
    );
    drop(log);
    let (_log, report, got) = env.open(o);
    assert_eq!(got, all);
    assert!(report.dropped.is_empty());
}

#[test]
fn failed_sync_cuts_back_unsynced_batches() {
    let mut env = Env::new();
    let o = LogOptions {
        fsync: true,
        segment_bytes: 200,
        ..opts()
    };
    let (mut log, _, _) = env.open(o);
    let a = write_ids(&mut log, 1..=3);
    log.request_sync();
    assert_eq!(
        env.wait_sync(&mut log, 1).pop().map(|r| r.ok()),
        Some(Some(1))
    );
    let durable_bytes = log.bytes_on_disk();
    let segs_before = env.segments();

    log.faults.fail_syncs.store(1, Ordering::SeqCst);
    write_ids(&mut log, 10..=12); // seq 2, rotates into a new segment
    log.request_sync();
    write_ids(&mut log, 20..=22); // seq 3, while the failing sync runs
    log.request_sync();
    let results = env.wait_sync(&mut log, 3);
    let err = results.last().expect("a result");
    assert!(err.is_err(), "{results:?}");
    // Both batches are refused: nothing of them stays on disk.
    assert_eq!(log.bytes_on_disk(), durable_bytes);
    let on_disk: u64 = env.segments().iter().map(|p| file_len(p)).sum();
    assert_eq!(on_disk, durable_bytes);
    assert_eq!(file_len(&segs_before[0]), durable_bytes);
    // No late Ok for the refused batches.
    std::thread::sleep(Duration::from_millis(50));
    assert!(log.poll_sync().is_none());

    let b = write_ids(&mut log, 30..=31); // seq 4
    log.request_sync();
    assert_eq!(
        env.wait_sync(&mut log, 4).pop().map(|r| r.ok()),
        Some(Some(4))
    );
    drop(log);
    let (_log, report, got) = env.open(o);
    assert_eq!(got, [a, b].concat());
    assert!(report.dropped.is_empty(), "{:?}", report.dropped);
}

#[test]
fn partial_write_error_leaves_no_partial_record() {
    let env = Env::new();
    let (mut log, _, _) = env.open(opts());
    let a = write_ids(&mut log, 1..=3);
    let len = log.bytes_on_disk();
    log.fail_write_after = Some(13);
    for r in (10..=12).map(simple) {
        log.append(&r.as_ref());
    }
    let err = log.write_batch().expect_err("write error");
    assert_eq!(err.raw_os_error(), Some(28));
    assert!(!log.has_buffered(), "the batch is discarded");
    assert_eq!(log.bytes_on_disk(), len);
    assert_eq!(file_len(&env.segments()[0]), len);
    let b = write_ids(&mut log, 20..=21);
    assert_eq!(
        log.last_batch_seq(),
        2,
        "a failed batch uses no sequence number"
    );
    drop(log);
    let (_log, report, got) = env.open(opts());
    assert_eq!(got, [a, b].concat());
    assert!(report.dropped.is_empty(), "{:?}", report.dropped);
}

#[test]
fn write_error_on_a_full_device() {
    if !Path::new("/dev/full").exists() {
        eprintln!("no /dev/full: skipped");
        return;
    }
    let env = Env::new();
    let o = LogOptions {
        segment_bytes: 1,
        ..opts()
    };
    let (mut log, _, _) = env.open(o);
    let a = write_ids(&mut log, 1..=3);
    // The next segment will be named 10: make it a link to /dev/full (ENOSPC on write).
    let link = env.dir().join(segment_name(10));
    std::os::unix::fs::symlink("/dev/full", &link).expect("symlink");
    for r in (10..=12).map(simple) {
        log.append(&r.as_ref());
    }
    let err = log.write_batch().expect_err("ENOSPC");
    assert_eq!(err.raw_os_error(), Some(libc_enospc()));
    // Fix the disk; later batches succeed and hold no partial record.
    fs::remove_file(&link).expect("rm");
    let b = write_ids(&mut log, 13..=15);
    let c = write_ids(&mut log, 16..=16);
    drop(log);
    let (_log, report, got) = env.open(o);
    assert_eq!(got, [a, b, c].concat());
    assert!(report.dropped.is_empty(), "{:?}", report.dropped);

    // A device link left in place is ignored at open (and reported), not read.
    std::os::unix::fs::symlink("/dev/full", env.dir().join(segment_name(99))).expect("symlink");
    let (_log2, report, got) = {
        drop(_log);
        env.open(o)
    };
    assert_eq!(got.len(), 7);
    assert!(
        report.dropped[0].contains("not a regular file"),
        "{:?}",
        report.dropped
    );
}

fn libc_enospc() -> i32 {
    28
}

#[test]
fn unstorable_records_refuse_the_batch() {
    let env = Env::new();
    let (mut log, _, _) = env.open(opts());
    let a = write_ids(&mut log, 5..=6);
    // Id not above the last written one.
    log.append(&simple(7).as_ref());
    log.append(&simple(6).as_ref());
    assert!(log.has_buffered());
    let err = log.write_batch().expect_err("refused");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    // No topic.
    log.append(&rec(8, 0, &[], None, "x").as_ref());
    assert_eq!(
        log.write_batch().expect_err("refused").kind(),
        io::ErrorKind::InvalidInput
    );
    let b = write_ids(&mut log, 9..=9);
    drop(log);
    let (_log, _, got) = env.open(opts());
    assert_eq!(got, [a, b].concat());
}

#[test]
fn random_damage_never_panics_nor_invents_records() {
    let env = Env::new();
    let o = LogOptions {
        segment_bytes: 600,
        ..opts()
    };
    let (mut log, _, _) = env.open(o);
    let mut all = Vec::new();
    for b in 0..20u64 {
        all.extend(write_ids(&mut log, b * 10 + 1..=b * 10 + 4));
    }
    drop(log);
    let originals: Vec<(PathBuf, Vec<u8>)> = env
        .segments()
        .into_iter()
        .map(|p| {
            let b = fs::read(&p).expect("read");
            (p, b)
        })
        .collect();
    let mut x = Rng::new(0xDEAD_BEEF_u64);
    for round in 0..200 {
        for (p, b) in &originals {
            let mut b = b.clone();
            match x.next_u64() % 4 {
                0 => {
                    let at = (x.next_u64() % b.len() as u64) as usize;
                    b[at] = x.next_u64() as u8;
                }
                1 => b.truncate((x.next_u64() % (b.len() as u64 + 1)) as usize),
                2 => b.extend((0..x.next_u64() % 64).map(|_| x.next_u64() as u8)),
                _ => {}
            }
            fs::write(p, &b).expect("write");
        }
        if round % 10 == 0 {
            let junk: Vec<u8> = (0..x.next_u64() % 100)
                .map(|_| x.next_u64() as u8)
                .collect();
            fs::write(env.dir().join(segment_name(x.next_u64() % 300)), junk).expect("write");
        }
        let (_log, _, got) = env.open(o);
        for r in &got {
            assert!(all.contains(r), "invented record {r:?}");
        }
        for (p, _) in &originals {
            let _ = fs::remove_file(p);
        }
        for p in env.segments() {
            fs::remove_file(p).expect("rm");
        }
    }
}

fn recovery_rate(n: u64, data_len: usize) {
    let env = Env::new();
    let (mut log, _, _) = env.open(opts());
    let data = "x".repeat(data_len);
    let topics: Vec<Box<str>> = vec!["prices:AAPL".into()];
    let mut id = 1_700_000_000_000_000u64;
    let started = Instant::now();
    for _ in 0..n / 1000 {
        for _ in 0..1000 {
            id += 1;
            log.append(&RecordRef {
                id,
                published_unix_ms: id / 1000,
                is_final: false,
                topics: &topics,
                event: Some("tick"),
                data: &data,
            });
        }
        log.write_batch().expect("write");
    }
    let write_time = started.elapsed();
    let bytes = log.bytes_on_disk();
    drop(log);
    let started = Instant::now();
    let mut count = 0u64;
    let mut sum = 0usize;
    let (_log, report) = Log::open(&env.dir(), opts(), env.waker.clone(), |r| {
        count += 1;
        sum += r.data.len();
    })
    .expect("open");
    let t = started.elapsed();
    assert_eq!(count, n);
    assert_eq!(sum, n as usize * data_len);
    assert_eq!(report.records, n);
    println!(
        "recovery: {n} records ({bytes} bytes, {} segments) in {:.3} s = {:.0} records/s, {:.0} MB/s (written in {:.3} s)",
        report.segments,
        t.as_secs_f64(),
        n as f64 / t.as_secs_f64(),
        bytes as f64 / 1e6 / t.as_secs_f64(),
        write_time.as_secs_f64()
    );
}

#[test]
fn recovery_of_10k_records_is_fast() {
    recovery_rate(10_000, 200);
}
