//! Gives the memory the allocator keeps free back to the kernel.
//!
//! ssehub allocates through the system allocator, glibc's malloc on Linux. glibc returns
//! freed memory to the kernel on its own only from the top of its heap; memory freed
//! below a chunk still in use stays mapped, so after a peak (a burst of connects, a
//! backlog of queued frames, a history that filled and expired) the process keeps the
//! peak's footprint. Under days of churn that shows as steps in the resident size that
//! never come down (bench-results/2026-11-29-churn-soak.md: +12.9 % over an hour, all of
//! it given back by one `malloc_trim(0)`). The loop calls [`release_free_memory`] from
//! its housekeeping timer; its cost is measured there and shown in `/metrics`.

/// Asks the allocator to return whole free pages to the kernel. Returns whether it gave
/// any back. On targets without glibc it does nothing.
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
