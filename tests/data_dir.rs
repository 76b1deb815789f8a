//! One owner per `history.data_dir`, and log recovery that keeps every good record and never
//! skips silently (issue 16, protocol 2.2, 3.2): real processes, a real data directory.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Store {
        Store {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn history(&self) -> String {
        format!("data_dir = {:?}", self.data().display().to_string())
    }

    fn start(&self) -> Server {
        let socket = self.dir.path().join("ingest.sock");
        Server::start_at_socket(&socket, &[("history", &self.history())])
    }

    fn segments(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.data())
            .expect("data dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        v.sort();
        v
    }

    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        self.segments()
            .into_iter()
            .map(|p| {
                let b = std::fs::read(&p).expect("read segment");
                (p, b)
            })
            .collect()
    }
}

/// Runs a second `ssehub serve` on the store's data directory with its own ingest socket;
/// `listen` replaces the HTTP address. Returns what it printed and its exit.
fn second_instance(store: &Store, listen: &str) -> BinOutput {
    let other = tempfile::tempdir().expect("temp dir");
    let config = config_with_socket(
        &other.path().join("other.sock"),
        &[("history", &store.history())],
    )
    .replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{listen}\""),
    );
    let path = other.path().join("ssehub.toml");
    std::fs::write(&path, config).expect("write config");
    run_bin(
        &["serve".as_ref(), "--config".as_ref(), path.as_os_str()],
        b"",
        Duration::from_secs(20),
    )
}

#[test]
fn a_second_instance_on_the_same_data_dir_exits_at_once_and_changes_nothing() {
    let store = Store::new();
    let first = store.start();
    let mut p = first.producer();
    let ids: Vec<u64> = (1..=5).map(|i| p.publish("t", &format!("e{i}"))).collect();
    // A torn record at the end, as a crash mid-write leaves: recovery would cut it, so an
    // instance that ran recovery would change the file.
    let seg = store.segments().pop().expect("a segment");
    let clean = std::fs::read(&seg).expect("read");
    let mut torn = clean.clone();
    torn.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3]);
    std::fs::write(&seg, &torn).expect("write");
    let before = store.snapshot();

    for listen in ["127.0.0.1:0".to_string(), first.addr.to_string()] {
        let out = second_instance(&store, &listen);
        assert!(!out.timed_out, "the second instance kept running: {out:?}");
        assert!(
            out.code.is_some_and(|c| c != 0),
            "non-zero exit expected: {out:?}"
        );
        assert!(
            out.elapsed < Duration::from_secs(10),
            "took {:?}",
            out.elapsed
        );
        let want = format!(
            "is in use by another ssehub process (pid {}); one data directory serves one process",
            first.pid()
        );
        assert!(
            out.stderr.contains(&want),
            "listen {listen}: {}",
            out.stderr
        );
        assert_eq!(
            store.snapshot(),
            before,
            "segment files changed by the attempt (listen {listen})"
        );
    }

    // Put the file back as the first instance wrote it; it goes on serving.
    std::fs::write(&seg, &clean).expect("write");
    let mut c = first.resume("topic=t", &ids[2].to_string());
    for (id, i) in ids[3..].iter().zip(4..) {
        assert_eq!(c.read_event(), format!("id: {id}\ndata: e{i}\n\n"));
    }
    let next = p.publish("t", "after");
    assert_eq!(c.read_event(), format!("id: {next}\ndata: after\n\n"));
}

/// `[start, end)` of every framed record in a segment (`[u32 len][u32 crc][payload]`).
fn record_ranges(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let end = at + 8 + len as usize;
        out.push((at, end));
        at = end;
    }
    out
}

fn publish_ten(server: &Server) -> Vec<u64> {
    let mut p = server.producer();
    (1..=10).map(|i| p.publish("t", &format!("e{i}"))).collect()
}

fn reset_block(last_event_id: u64, earliest: u64) -> String {
    format!(
        "event: reset\ndata: {{\"lastEventId\":\"{last_event_id}\",\"earliestId\":\"{earliest}\"}}\n\n"
    )
}

fn flip(path: &Path, at: &[usize]) {
    let mut bytes = std::fs::read(path).expect("read");
    for &i in at {
        bytes[i] ^= 0x20;
    }
    std::fs::write(path, bytes).expect("write");
}

#[test]
fn a_damaged_tail_after_a_crash_makes_a_resume_across_it_get_reset() {
    let store = Store::new();
    let mut server = store.start();
    let e = publish_ten(&server);
    server.signal("KILL");
    server.wait_exit(Duration::from_secs(10));
    let seg = store.segments().pop().expect("a segment");
    let n = std::fs::metadata(&seg).expect("metadata").len() as usize;
    flip(&seg, &[n - 3, n - 2, n - 1]); // the end of e10

    let server = store.start();
    assert!(
        server.log_contains("log recovery dropped"),
        "{:?}",
        server.log.lock().unwrap()
    );
    let n1 = server.producer().publish("t", "n1");
    // The client saw e9; e10 was acknowledged and delivered before the crash and is gone.
    let mut c = server.resume("topic=t", &e[8].to_string());
    assert_eq!(c.read_event(), reset_block(e[8], e[0]));
    assert_eq!(c.read_event(), format!("id: {n1}\ndata: n1\n\n"));
    assert!(c.read_for(Duration::from_millis(200)).is_empty());
    // The damaged bytes were moved aside, not thrown away.
    let damaged: Vec<_> = std::fs::read_dir(store.data().join("damaged"))
        .expect("damaged dir")
        .collect();
    assert_eq!(damaged.len(), 1);
}

#[test]
fn a_flipped_byte_in_record_3_of_10_keeps_the_other_nine_behind_a_reset() {
    let store = Store::new();
    let mut server = store.start();
    let e = publish_ten(&server);
    drop(server.producer());
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(10)), Some(0));
    let seg = store.segments().pop().expect("a segment");
    let ranges = record_ranges(&std::fs::read(&seg).expect("read"));
    assert_eq!(ranges.len(), 10);
    let (a, b) = ranges[2];
    flip(&seg, &[(a + b) / 2]);

    let server = store.start();
    let kept: Vec<(u64, usize)> = e
        .iter()
        .copied()
        .zip(1..)
        .filter(|&(_, i)| i != 3)
        .collect();
    // A fresh replay from before e1, and a resume from e2 (just before the lost record).
    for (from, earliest, expect) in [(e[0] - 1, e[0], &kept[..]), (e[1], e[0], &kept[2..])] {
        let mut c = server.resume("topic=t", &from.to_string());
        assert_eq!(c.read_event(), reset_block(from, earliest));
        for &(id, i) in expect {
            assert_eq!(c.read_event(), format!("id: {id}\ndata: e{i}\n\n"));
        }
        assert!(c.read_for(Duration::from_millis(200)).is_empty());
    }
    // A client that saw e4 missed nothing: no reset.
    let mut c = server.resume("topic=t", &e[3].to_string());
    assert_eq!(c.read_event(), format!("id: {}\ndata: e5\n\n", e[4]));
}
