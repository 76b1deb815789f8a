//! How the memory of a peak goes back to the kernel.
//!
//! The `ssehub` binary allocates through jemalloc (`#[global_allocator]` in `main.rs`), with
//! jemalloc's background purging thread started by [`start_background_purge`]. Pages freed
//! after a peak (a burst of connects, a backlog of queued frames, a history that filled
//! and expired) are given back by that thread on jemalloc's decay curve (`dirty_decay_ms`,
//! 10 s), a little at a time and without holding any lock the loop's own allocations wait
//! on, so the loop never pays for it.
//!
//! Before, the binary used glibc's malloc, which returns freed memory on its own only from
//! the top of its heap (bench-results/2026-11-29-churn-soak.md: +12.9 % over an hour of
//! churn), so the loop called `malloc_trim(0)` every 10 s. That call walks every free
//! chunk and `madvise`s its pages away while holding the arena lock: after ~350 MB freed
//! in scattered blocks it stopped the loop for 11–25 ms, and no budget or helper thread
//! can bound it (bench-results/2026-12-07-heap-trim.md). [`release_free_memory`] still
//! trims glibc's own heap, which now holds only what C code in the process allocates, so
//! it costs microseconds.

/// Starts jemalloc's background thread, which purges freed pages on the decay curve
/// instead of the threads that free them. One thread is enough for one event loop. Call
/// it once at startup, from a binary whose global allocator is jemalloc.
pub fn start_background_purge() -> Result<(), String> {
    tikv_jemalloc_ctl::max_background_threads::write(1)
        .and_then(|()| tikv_jemalloc_ctl::background_thread::write(true))
        .map_err(|e| format!("jemalloc background thread: {e}"))
}

/// Asks glibc's malloc to return its whole free pages to the kernel. Returns whether it
/// gave any back. On targets without glibc it does nothing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn release_free_memory() -> bool {
    // SAFETY: `malloc_trim` takes a plain integer (the bytes to leave untrimmed at the top
    // of the heap) and no pointers. It takes each arena's lock itself, so calling it while
    // other threads allocate is sound, and it frees nothing that is in use: it only
    // `madvise`s away the pages inside chunks that are already free, which glibc owns.
    // If a different global allocator were installed it would simply find glibc's
    // (then unused) heap empty.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Anonymous memory of this process, from `/proc/self/smaps_rollup`.
    fn anonymous_kib() -> u64 {
        let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("Anonymous:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Many small blocks freed below one that stays: glibc keeps the pages until trimmed.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn freed_memory_below_a_live_block_is_given_back() {
        // Small blocks (below the mmap threshold) so they come from the heap, touched so
        // their pages are resident.
        let mut blocks: Vec<Vec<u8>> = (0..40_000).map(|i| vec![i as u8; 1000]).collect();
        let keep = vec![7u8; 1000];
        let before = anonymous_kib();
        blocks.clear();
        blocks.shrink_to_fit();
        let freed = anonymous_kib();
        assert!(release_free_memory(), "nothing was given back");
        let after = anonymous_kib();
        assert_eq!(keep[999], 7);
        // 40 MB were resident; at least half of it must go (other tests' threads allocate
        // meanwhile, so no exact figure).
        assert!(
            after + 20_000 < freed,
            "before {before} KiB, after free {freed} KiB, after trim {after} KiB"
        );
    }
}
