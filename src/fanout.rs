//! Fan-out: a published event's shared frame goes into the queue of every stream on its
//! topics, once per stream, within the slow-client limit. Never writes to a socket: the
//! event loop flushes pending queues in slices, so events that arrive before a stream's
//! turn in the sweep leave with it in one write.

use crate::conn::{Conn, QueuePool, flags};
use crate::sse::Frame;
use crate::timer::Millis;

/// What happened to one delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// Already queued through another topic of the same event, the stream is ending, or it
    /// is replaying (the replay will reach this event in history).
    Skipped,
    /// The stream's pending output passed `streams.max_pending_bytes`: close it.
    Overflow,
}

/// Queues `frame` (event `id`) on `conn` and lists the connection for writing.
#[allow(clippy::too_many_arguments)]
pub fn deliver(
    conn: &mut Conn,
    key: u32,
    frame: &Frame,
    id: u64,
    now: Millis,
    max_pending: usize,
    pending: &mut std::collections::VecDeque<u32>,
    pool: &mut QueuePool,
) -> Delivery {
    if conn.cursor >= id || conn.has(flags::CLOSING | flags::CLOSE_AFTER_FLUSH | flags::REPLAYING) {
        return Delivery::Skipped;
    }
    conn.cursor = id;
    let out = conn.out.get_or_insert_with(|| pool.take(now));
    if out.pending_bytes() + frame.len() > max_pending {
        return Delivery::Overflow;
    }
    out.push(frame.clone());
    mark_pending(conn, key, pending);
    Delivery::Queued
}

/// Puts the connection on the pending-write list unless it is there or waiting to be
/// writable (the writable event lists it again).
pub fn mark_pending(conn: &mut Conn, key: u32, pending: &mut std::collections::VecDeque<u32>) {
    if !conn.has(flags::IN_PENDING) && !conn.has(flags::WRITE_BLOCKED) {
        conn.set(flags::IN_PENDING);
        pending.push_back(key);
    }
}
