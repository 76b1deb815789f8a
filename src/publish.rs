//! `ssehub publish`: the command-line producer. Writes JSON lines to the ingest socket and
//! prints each id; answers are read on their own thread so a long `--lines` input never
//! deadlocks against the server's backpressure. With `--url` the same lines go to
//! `POST /publish` instead (`http`).

pub mod http;

use serde::Serialize;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One event as an ingest line (protocol 3.1): what this command sends, and what a
/// Mercure form body becomes (`http::body::form_to_line`).
#[derive(Serialize)]
pub struct WireEvent<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topics: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'a str>,
    pub data: &'a str,
    #[serde(rename = "final", skip_serializing_if = "std::ops::Not::not")]
    pub is_final: bool,
}

pub struct Options<'a> {
    pub socket: &'a Path,
    pub topics: &'a [String],
    pub event: Option<&'a str>,
    pub is_final: bool,
    pub wait: Duration,
}

/// Where the payloads come from.
pub enum Input {
    /// One event with this payload.
    Data(String),
    /// One event with all of stdin (one trailing newline dropped).
    Stdin,
    /// One event per stdin line.
    StdinLines,
}

/// Connects, retrying for `wait` so that producers ride over a server restart.
pub fn connect(socket: &Path, wait: Duration) -> io::Result<UnixStream> {
    let deadline = Instant::now() + wait;
    loop {
        match UnixStream::connect(socket) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot connect to {}: {e}", socket.display()),
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Encodes one event line (with its newline).
fn encode(opts: &Options<'_>, data: &str) -> Vec<u8> {
    let (topic, topics) = match opts.topics {
        [one] => (Some(one.as_str()), None),
        many => (None, Some(many)),
    };
    let wire = WireEvent {
        topic,
        topics,
        event: opts.event,
        data,
        is_final: opts.is_final,
    };
    let mut line = serde_json::to_vec(&wire).unwrap_or_default();
    line.push(b'\n');
    line
}

/// `encode` with owned copies of the options, for a thread that reads stdin.
fn owned_encoder(opts: &Options<'_>) -> impl Fn(&str) -> Vec<u8> + Send + 'static {
    let topics: Vec<String> = opts.topics.to_vec();
    let event = opts.event.map(str::to_owned);
    let is_final = opts.is_final;
    move |data: &str| {
        let o = Options {
            socket: Path::new(""),
            topics: &topics,
            event: event.as_deref(),
            is_final,
            wait: Duration::ZERO,
        };
        encode(&o, data)
    }
}

/// All of stdin as one payload, one trailing newline (LF or CRLF) dropped.
fn read_stdin_payload() -> io::Result<String> {
    let mut data = String::new();
    io::stdin().read_to_string(&mut data)?;
    if data.ends_with('\n') {
        data.pop();
        if data.ends_with('\r') {
            data.pop();
        }
    }
    Ok(data)
}

/// Publishes and prints one id per event on `out`; returns the number of error answers
/// (each reported on stderr with the server's reason).
pub fn run(opts: &Options<'_>, input: Input, out: &mut impl Write) -> io::Result<usize> {
    let sock = connect(opts.socket, opts.wait)?;
    let mut writer = sock.try_clone()?;
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let lines: Vec<Vec<u8>> = match input {
        Input::Data(data) => vec![encode(opts, &data)],
        Input::Stdin => vec![encode(opts, &read_stdin_payload()?)],
        Input::StdinLines => Vec::new(),
    };
    let streaming = lines.is_empty();
    let encode_owned = owned_encoder(opts);
    let writer_thread = std::thread::spawn(move || -> io::Result<()> {
        if streaming {
            for line in io::stdin().lock().lines() {
                let line = line?;
                writer.write_all(&encode_owned(line.trim_end_matches('\r')))?;
                if sent_tx.send(()).is_err() {
                    break;
                }
            }
        } else {
            for line in &lines {
                writer.write_all(line)?;
                let _ = sent_tx.send(());
            }
        }
        writer.flush()
    });
    let mut answers = BufReader::new(sock);
    let mut errors = 0;
    let mut answer = String::new();
    for () in sent_rx {
        answer.clear();
        if answers.read_line(&mut answer)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        match parse_answer(&answer) {
            Ok(id) => writeln!(out, "{id}")?,
            Err(reason) => {
                eprintln!("ssehub publish: {reason}");
                errors += 1;
            }
        }
    }
    writer_thread
        .join()
        .map_err(|_| io::Error::other("writer thread panicked"))??;
    Ok(errors)
}

/// An answer line read back (`ingest::line::read_answer`).
pub(crate) use crate::ingest::line::read_answer as parse_answer;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_one_or_many_topics() {
        let one = ["a".to_string()];
        let opts = Options {
            socket: Path::new(""),
            topics: &one,
            event: None,
            is_final: false,
            wait: Duration::ZERO,
        };
        assert_eq!(
            encode(&opts, "x\"y"),
            b"{\"topic\":\"a\",\"data\":\"x\\\"y\"}\n"
        );
        let two = ["a".to_string(), "b".to_string()];
        let opts = Options {
            socket: Path::new(""),
            topics: &two,
            event: Some("e"),
            is_final: true,
            wait: Duration::ZERO,
        };
        assert_eq!(
            String::from_utf8(encode(&opts, "d")).unwrap(),
            "{\"topics\":[\"a\",\"b\"],\"event\":\"e\",\"data\":\"d\",\"final\":true}\n"
        );
    }

    #[test]
    fn reads_answers() {
        assert_eq!(
            parse_answer("{\"ok\":true,\"id\":\"12\"}\n"),
            Ok("12".into())
        );
        assert_eq!(
            parse_answer("{\"ok\":false,\"error\":\"bad\"}\n"),
            Err("bad".into())
        );
        assert!(parse_answer("garbage").is_err());
    }
}
