//! What each entry of the loop's timer wheel is for (`timer::Wheel<Due>`): a connection's
//! single timer, the loop's housekeeping, and the operations timers. Plain data, below the
//! loop and the stream table that both arm these timers.

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The connection's single timer: its state decides what is due.
    Conn(u32),
    PruneHistory,
    /// Give the allocator's free pages back to the kernel (`heap::release_free_memory`).
    TrimHeap,
    ResumeAccept,
    /// Log the slow-subscriber disconnects of the last second in one line.
    SlowSummary,
    /// systemd watchdog and status, latency windows (`ops`).
    Ops(OpsTimer),
}

/// The operations timers (`event_loop::ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpsTimer {
    Watchdog,
    Status,
    RotateLatency,
}
