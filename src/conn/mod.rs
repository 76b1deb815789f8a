//! Per-connection state of an HTTP client, kept small on purpose: an idle stream owns no
//! read buffer and no write buffer (protocol 1), only its socket, topics and a few numbers.
//! `size_of::<Conn>()` is pinned by a test so that growth is a visible decision.

pub mod out_queue;
pub mod record;
pub mod table;
pub mod tls;

use crate::history::TopicId;
use crate::timer::{Millis, TimerId};
use mio::net::TcpStream;
pub use out_queue::{Flush, OutQueue, QueuePool};

/// What the connection is doing.
#[derive(Debug)]
pub enum ConnState {
    /// Reading a request head; `buf` holds bytes received so far (and any pipelined rest).
    Reading { buf: Vec<u8> },
    /// An event stream on these topics.
    Streaming { topics: Box<[TopicId]> },
    /// A `POST /publish`: reading its body, then waiting for its events' commit (boxed:
    /// the other connections pay nothing for it).
    Publishing(Box<crate::http::publish::InFlight>),
    /// The last answer was sent and our side shut down; reading until the client closes
    /// (or a short timer fires) so unread input does not turn the close into a reset.
    Lingering,
}

/// Bit flags of a connection (one byte instead of several bools).
pub mod flags {
    /// Listed in the loop's pending-write list.
    pub const IN_PENDING: u8 = 1;
    /// The last write hit `WouldBlock`; waiting for a writable event.
    pub const WRITE_BLOCKED: u8 = 2;
    /// Close (linger) once the queued output is written.
    pub const CLOSE_AFTER_FLUSH: u8 = 4;
    /// Listed for closing at the end of this turn; ignore it until then.
    pub const CLOSING: u8 = 8;
    /// Catching up from history: live events are not queued (the replay reaches them).
    pub const REPLAYING: u8 = 16;
    /// Accepted past `http.max_connections` (`overload_as_retry`): answer, then close.
    pub const OVER_CAP: u8 = 32;
    /// Accepted past `http.max_per_ip` (`overload_as_retry`): answer, then close.
    pub const OVER_PER_IP: u8 = 64;
    /// Accepted on the admin listener (`http.admin_listen`): `/metrics` and `/healthz` only.
    pub const ADMIN: u8 = 128;
}

#[derive(Debug)]
pub struct Conn {
    pub sock: TcpStream,
    pub state: ConnState,
    /// Pending output; `None` whenever nothing is pending.
    pub out: Option<Box<OutQueue>>,
    /// The TLS session of an HTTPS connection (boxed: plain connections pay 8 bytes).
    pub tls: Option<Box<tls::Session>>,
    /// Last time bytes were written, loop milliseconds truncated to 32 bits (compared
    /// with wrapping arithmetic; the keepalive counts from here).
    last_write: u32,
    /// Id of the newest event queued to this stream: an event published to several of its
    /// topics is queued once.
    pub cursor: u64,
    /// The connection's single timer (request deadline, keepalive or write timeout).
    pub timer: Option<TimerId>,
    /// Bytes received and discarded after a stream's request head.
    pub discarded: u16,
    pub flags: u8,
}

impl Conn {
    pub fn new(sock: TcpStream, now: Millis) -> Self {
        Conn {
            sock,
            state: ConnState::Reading { buf: Vec::new() },
            out: None,
            tls: None,
            last_write: now as u32,
            cursor: 0,
            timer: None,
            discarded: 0,
            flags: 0,
        }
    }

    pub fn wrote_at(&mut self, now: Millis) {
        self.last_write = now as u32;
    }

    /// Milliseconds since bytes were last written.
    pub fn since_write(&self, now: Millis) -> Millis {
        Millis::from((now as u32).wrapping_sub(self.last_write))
    }

    /// When the keepalive is due if nothing is written before.
    pub fn keepalive_due(&self, now: Millis, keepalive: Millis) -> Millis {
        now + keepalive.saturating_sub(self.since_write(now))
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    pub fn set(&mut self, flag: u8) {
        self.flags |= flag;
    }

    pub fn clear(&mut self, flag: u8) {
        self.flags &= !flag;
    }

    pub fn pending_bytes(&self) -> usize {
        self.out.as_ref().map_or(0, |q| q.pending_bytes())
    }

    pub fn is_streaming(&self) -> bool {
        matches!(self.state, ConnState::Streaming { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle stream pays this, so growth must be a decision: update the number and
    /// say why in the commit.
    #[test]
    fn per_connection_state_stays_small() {
        assert_eq!(std::mem::size_of::<Option<TimerId>>(), 4);
        assert_eq!(std::mem::size_of::<ConnState>(), 24);
        assert_eq!(std::mem::size_of::<Conn>(), 64);
    }

    #[test]
    fn keepalive_arithmetic_survives_the_32_bit_wrap() {
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(sock.local_addr().unwrap()).unwrap();
        let near_wrap = Millis::from(u32::MAX) - 100;
        let mut c = Conn::new(client, near_wrap);
        assert_eq!(c.since_write(near_wrap + 1_000), 1_000);
        assert_eq!(
            c.keepalive_due(near_wrap + 1_000, 15_000),
            near_wrap + 15_000
        );
        c.wrote_at(near_wrap + 2_000);
        assert_eq!(c.since_write(near_wrap + 2_500), 500);
    }
}
