//! The Redis side's names and calling convention: key names under the `{ev}` hash tag, the
//! `ssehub` Function library (`function.lua`) and the commands that call it. Pure: builds
//! commands, never sends them.

use super::{Options, PublishRequest};
use redis::Cmd;

/// The Function library, loaded with `FUNCTION LOAD REPLACE` on every writer connect.
pub(super) const LIBRARY: &str = include_str!("function.lua");

/// Key names for one `key_prefix`.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    /// `<prefix>:{ev}`: the stream.
    pub stream: String,
    /// `<prefix>:{ev}:last`: the last id issued.
    pub last: String,
    /// `<prefix>:{ev}:epoch`: names the data set (created with `SET NX` when missing).
    pub epoch: String,
    /// `<prefix>:{ev}:seen`: the channel of a reader's confirming `PUBLISH` (nobody
    /// listens: it only gives the reader's connection a write for `WAIT` to count).
    pub seen: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        let stream = format!("{prefix}:{{ev}}");
        Keys {
            last: format!("{stream}:last"),
            epoch: format!("{stream}:epoch"),
            seen: format!("{stream}:seen"),
            stream,
        }
    }

    /// `<prefix>:{ev}:final:<topic>`.
    pub fn final_mark(&self, topic: &str) -> String {
        format!("{}:final:{topic}", self.stream)
    }

    /// `<prefix>:{ev}:key:<key>`.
    pub fn idempotency(&self, key: &str) -> String {
        format!("{}:key:{key}", self.stream)
    }
}

/// What one publish names besides the request: the data set it was meant for and the
/// publishing node's clock (ids never fall below it).
#[derive(Debug, Clone, Copy)]
pub(super) struct Stamp<'a> {
    pub epoch: &'a str,
    pub node_now_us: u64,
}

/// `FCALL ssehub_publish_batch` for one or more requests, stored in this order (see
/// `function.lua` for KEYS and ARGV: a flat layout, each event's topic count before its
/// topics, its idempotency key among KEYS only when it has one).
pub(super) fn publish_batch<'r>(
    keys: &Keys,
    options: &Options,
    requests: impl Iterator<Item = &'r PublishRequest> + Clone,
    stamp: Stamp<'_>,
) -> Cmd {
    let per_event_keys: usize = requests
        .clone()
        .map(|r| usize::from(r.key.is_some()) + r.topics.len())
        .sum();
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("ssehub_publish_batch")
        .arg(3 + per_event_keys)
        .arg(&keys.stream)
        .arg(&keys.last)
        .arg(&keys.epoch);
    for request in requests.clone() {
        if let Some(key) = &request.key {
            cmd.arg(keys.idempotency(key));
        }
        for topic in &request.topics {
            cmd.arg(keys.final_mark(topic));
        }
    }
    cmd.arg(options.max_age.as_millis() as u64)
        .arg(options.max_stream_events)
        .arg(stamp.node_now_us)
        .arg(stamp.epoch);
    for request in requests {
        cmd.arg(u8::from(request.is_final))
            .arg(u8::from(request.key.is_some()))
            .arg(request.event.as_deref().unwrap_or(""))
            .arg(&*request.data)
            .arg(request.topics.len());
        for topic in &request.topics {
            cmd.arg(&**topic);
        }
    }
    cmd
}

/// About how many bytes a request adds to a `publish_batch` call (its strings, each topic
/// twice, and the key names' share), for keeping calls to a bounded size.
pub(super) fn publish_size(keys: &Keys, request: &PublishRequest) -> usize {
    let key_name = keys.stream.len() + 8;
    let topics: usize = request.topics.iter().map(|t| 2 * t.len() + key_name).sum();
    let key = request.key.as_deref().map_or(0, |k| k.len() + key_name);
    request.data.len() + request.event.as_deref().map_or(0, str::len) + topics + key + 16
}

/// `SET <epoch> <candidate> NX GET`: the data set's epoch, created as `candidate` when it
/// has none (the reply is then nil).
pub(super) fn claim_epoch(keys: &Keys, candidate: &str) -> Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(&keys.epoch).arg(candidate).arg("NX").arg("GET");
    cmd
}

/// `PUBLISH <seen> ""` then `WAIT min_replicas timeout`: the `WAIT` answers how many
/// replicas hold everything the primary had before the `PUBLISH`, so entries read before
/// it are confirmed when that reaches `min_replicas` (a reader's connection writes nothing
/// else, and `WAIT` counts only a connection's own writes).
pub(super) fn confirm(keys: &Keys, min_replicas: u32, timeout_ms: u64) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.cmd("PUBLISH")
        .arg(&keys.seen)
        .arg("")
        .ignore()
        .cmd("WAIT")
        .arg(min_replicas)
        .arg(timeout_ms.max(1));
    pipe
}

/// `FCALL ssehub_raise`: `last` = max(`last`, `id`).
pub(super) fn raise(keys: &Keys, id: u64) -> Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("ssehub_raise").arg(1).arg(&keys.last).arg(id);
    cmd
}

/// `FUNCTION LOAD REPLACE <library>`.
pub(super) fn load_library() -> Cmd {
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LOAD").arg("REPLACE").arg(LIBRARY);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn args(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<cursor>".into(),
            })
            .collect()
    }

    fn options() -> Options {
        Options {
            url: "redis+unix:///tmp/x.sock".into(),
            key_prefix: "hub".into(),
            min_replicas: 0,
            replica_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
            max_age: Duration::from_secs(3600),
            max_stream_events: 10,
            read_from: Vec::new(),
            read_linger: Duration::ZERO,
            write_linger: Duration::ZERO,
        }
    }

    #[test]
    fn key_names_share_the_hash_tag() {
        let k = Keys::new("hub");
        assert_eq!(k.stream, "hub:{ev}");
        assert_eq!(k.last, "hub:{ev}:last");
        assert_eq!(k.final_mark("a/b"), "hub:{ev}:final:a/b");
        assert_eq!(k.idempotency("k1"), "hub:{ev}:key:k1");
        assert_eq!(k.epoch, "hub:{ev}:epoch");
    }

    const STAMP: Stamp<'static> = Stamp {
        epoch: "e1",
        node_now_us: 1_800_000_000_000_000,
    };

    #[test]
    fn publish_batch_lists_keys_then_arguments() {
        let k = Keys::new("hub");
        let req = PublishRequest {
            topics: vec!["a".into(), "b".into()],
            event: Some("ev".into()),
            data: "x y".into(),
            is_final: true,
            key: Some("k1".into()),
        };
        let plain = PublishRequest {
            topics: vec!["a".into()],
            event: None,
            data: "".into(),
            is_final: false,
            key: None,
        };
        assert_eq!(
            args(&publish_batch(
                &k,
                &options(),
                [&req, &plain].into_iter(),
                STAMP
            )),
            [
                "FCALL",
                "ssehub_publish_batch",
                "7",
                "hub:{ev}",
                "hub:{ev}:last",
                "hub:{ev}:epoch",
                "hub:{ev}:key:k1",
                "hub:{ev}:final:a",
                "hub:{ev}:final:b",
                "hub:{ev}:final:a",
                "3600000",
                "10",
                "1800000000000000",
                "e1",
                "1",
                "1",
                "ev",
                "x y",
                "2",
                "a",
                "b",
                "0",
                "0",
                "",
                "",
                "1",
                "a"
            ]
        );
        assert!(publish_size(&k, &req) > "x y".len() + "ev".len() + "k1".len() + 2 * "ab".len());
        assert_eq!(
            args(&raise(&k, 1_800_000_000_000_000)),
            [
                "FCALL",
                "ssehub_raise",
                "1",
                "hub:{ev}:last",
                "1800000000000000"
            ]
        );
    }
}
