//! Hashed timer wheel: owns every pending keepalive/timeout deadline of the event loop.
//! It never reads a clock (the caller passes `now` in), never fires a timer before its
//! deadline, and never panics on a stale id; after warm-up it does not allocate.

pub type Millis = u64;

/// Handle of a pending timer. Ids are reused once the timer fires or is cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerId(std::num::NonZeroU32);

impl TimerId {
    /// Stored as index + 1 so that `Option<TimerId>` is 4 bytes (it lives in every
    /// connection).
    fn from_idx(idx: u32) -> TimerId {
        TimerId(std::num::NonZeroU32::MIN.saturating_add(idx))
    }

    fn idx(self) -> u32 {
        self.0.get() - 1
    }
}

/// End of a list (slot list or free list).
const NIL: u32 = u32::MAX;
/// `prev` value of a free arena entry.
const VACANT: u32 = u32::MAX;
/// `prev` value `HEAD | slot` marks the first entry of `slot`'s list, so `cancel` can fix the
/// slot head without storing the slot separately. Entry indices therefore stay below `HEAD`.
const HEAD: u32 = 1 << 31;

/// One timer in the arena. For `T = u32` this is 24 bytes: 8 (deadline) + 4 (value)
/// + 4 + 4 (links) = 20, padded to the 8-byte alignment of the deadline.
struct Entry<T> {
    deadline: Millis,
    /// Stale (but harmless, `T: Copy`) while the entry is vacant.
    value: T,
    /// `VACANT` when free, `HEAD | slot` when first in its slot, else the previous entry.
    prev: u32,
    /// Next entry in the slot list, or in the free list when vacant; `NIL` at the end.
    next: u32,
}

/// A hashed timer wheel with `slots` buckets of `tick_ms` each.
///
/// A timer with deadline `d` lives in the slot of tick `d / tick_ms` (floor: the tick that
/// contains `d`), or of the current tick if that one is already past. Entries a whole turn or
/// more away share a slot with nearer ones and are skipped (their deadline is compared to
/// `now`) until their round comes. The slot of the current tick is re-examined on every
/// `advance` so a timer fires in the very first `advance(now)` with `now >= deadline`,
/// not only at the next tick boundary.
pub struct Wheel<T: Copy> {
    tick_ms: u64,
    /// `slots - 1`; slots is a power of two.
    mask: usize,
    /// Head entry index of each slot's doubly linked list, `NIL` when empty.
    heads: Vec<u32>,
    /// One bit per slot, set when the slot is non-empty: lets `next_timeout` skip empty slots
    /// 64 at a time.
    occupied: Vec<u64>,
    /// Arena of entries; a `TimerId` is an index into it.
    entries: Vec<Entry<T>>,
    /// Head of the free list threaded through vacant entries' `next`.
    free: u32,
    len: usize,
    /// `now / tick_ms` at the last `advance` (or `new`). Earlier ticks are fully processed;
    /// this tick's slot was visited but may hold entries due later in the same tick.
    cur_tick: u64,
    /// Lower bound of the deadlines in `cur_tick`'s slot (exact right after `advance`, may be
    /// stale-low after a cancel). Lets `next_timeout` return a non-zero wait for that slot,
    /// so the loop neither spins nor oversleeps.
    cur_min: Millis,
}

impl<T: Copy> Wheel<T> {
    /// `tick_ms` >= 1; `slots` a power of two >= 64; `now` is the current time.
    pub fn new(tick_ms: u64, slots: usize, now: Millis) -> Self {
        assert!(tick_ms >= 1, "timer wheel: tick_ms must be >= 1");
        assert!(
            slots.is_power_of_two() && (64..=1 << 30).contains(&slots),
            "timer wheel: slots must be a power of two in 64..=2^30"
        );
        Wheel {
            tick_ms,
            mask: slots - 1,
            heads: vec![NIL; slots],
            occupied: vec![0; slots / 64],
            entries: Vec::new(),
            free: NIL,
            len: 0,
            cur_tick: now / tick_ms,
            cur_min: Millis::MAX,
        }
    }

    /// Schedules `value` to fire at `deadline` (a deadline in the past fires on the next advance).
    pub fn insert(&mut self, deadline: Millis, value: T) -> TimerId {
        let idx = if self.free != NIL {
            let idx = self.free;
            let e = &mut self.entries[idx as usize];
            self.free = e.next;
            e.deadline = deadline;
            e.value = value;
            idx
        } else {
            let idx = self.entries.len();
            // 2^31 pending timers would take 48 GiB; treat it as a bug, not a runtime case.
            assert!(idx < HEAD as usize, "timer wheel: too many timers");
            self.entries.push(Entry {
                deadline,
                value,
                prev: VACANT,
                next: NIL,
            });
            idx as u32
        };
        self.link(idx);
        self.len += 1;
        TimerId::from_idx(idx)
    }

    /// Removes a pending timer and returns its value. The caller guarantees `id` is pending
    /// (not yet fired or cancelled); ids are reused after that. Panics are NOT acceptable:
    /// on an id that is not pending return None (check the slab slot is occupied).
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        if !self.is_pending(id) {
            return None;
        }
        let value = self.entries[id.idx() as usize].value;
        self.remove(id.idx());
        Some(value)
    }

    /// Moves a pending timer to a new deadline, keeping its id. Returns false if `id` is not pending.
    pub fn reschedule(&mut self, id: TimerId, deadline: Millis) -> bool {
        if !self.is_pending(id) {
            return false;
        }
        self.unlink(id.idx());
        self.entries[id.idx() as usize].deadline = deadline;
        self.link(id.idx());
        true
    }

    /// The deadline of a pending timer.
    pub fn deadline(&self, id: TimerId) -> Option<Millis> {
        self.is_pending(id)
            .then(|| self.entries[id.idx() as usize].deadline)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Milliseconds from `now` until `advance` next has work to do: the time until the earliest
    /// non-empty slot comes due (0 if something is already due). May be earlier than the true
    /// earliest deadline (that slot may hold later-round entries), never later. None when empty.
    pub fn next_timeout(&self, now: Millis) -> Option<Millis> {
        if self.len == 0 {
            return None;
        }
        let cur = self.slot_of(self.cur_tick);
        let mut due = if self.heads[cur] != NIL {
            self.cur_min
        } else {
            Millis::MAX
        };
        // Every other non-empty slot's entries are at or after the start of that slot's next
        // tick, so the first such slot bounds them all.
        if let Some(slot) = self.first_occupied_from((cur + 1) & self.mask)
            && slot != cur
        {
            let ahead = (slot.wrapping_sub(cur) & self.mask) as u64;
            let start = self.cur_tick.saturating_add(ahead);
            due = due.min(start.saturating_mul(self.tick_ms));
        }
        Some(due.saturating_sub(now))
    }

    /// Fires every timer with deadline <= now: removes it and pushes its value onto `fired`
    /// (in no particular order). Their ids become free.
    pub fn advance(&mut self, now: Millis, fired: &mut Vec<T>) {
        let end = now / self.tick_ms;
        if end < self.cur_tick {
            return; // the clock went backwards: treat as no time passed
        }
        if end == self.cur_tick && now < self.cur_min {
            return; // same tick and nothing in its slot is due; later slots are not either
        }
        // After a jump of a turn or more, each slot needs visiting only once.
        let start = self.cur_tick.max(end.saturating_sub(self.mask as u64));
        let mut remaining_min = Millis::MAX;
        for tick in start..=end {
            remaining_min = self.expire_slot(self.slot_of(tick), now, fired);
        }
        self.cur_tick = end;
        // The last slot visited is the new current tick's.
        self.cur_min = remaining_min;
    }

    /// Fires the entries of `slot` that are due and returns the smallest deadline left in it.
    fn expire_slot(&mut self, slot: usize, now: Millis, fired: &mut Vec<T>) -> Millis {
        let mut min = Millis::MAX;
        let mut idx = self.heads[slot];
        while idx != NIL {
            let e = &self.entries[idx as usize];
            let (deadline, value, next) = (e.deadline, e.value, e.next);
            if deadline <= now {
                fired.push(value);
                self.remove(idx);
            } else {
                min = min.min(deadline);
            }
            idx = next;
        }
        min
    }

    fn is_pending(&self, id: TimerId) -> bool {
        self.entries
            .get(id.idx() as usize)
            .is_some_and(|e| e.prev != VACANT)
    }

    fn slot_of(&self, tick: u64) -> usize {
        (tick & self.mask as u64) as usize
    }

    /// Pushes entry `idx` onto the front of the slot its deadline belongs to.
    fn link(&mut self, idx: u32) {
        let deadline = self.entries[idx as usize].deadline;
        // Past ticks are never visited again, so overdue entries go to the current tick.
        let tick = (deadline / self.tick_ms).max(self.cur_tick);
        let slot = self.slot_of(tick);
        let old = self.heads[slot];
        if old == NIL {
            self.occupied[slot / 64] |= 1 << (slot % 64);
        } else {
            self.entries[old as usize].prev = idx;
        }
        let e = &mut self.entries[idx as usize];
        e.prev = HEAD | slot as u32;
        e.next = old;
        self.heads[slot] = idx;
        if slot == self.slot_of(self.cur_tick) {
            self.cur_min = if old == NIL {
                deadline
            } else {
                self.cur_min.min(deadline)
            };
        }
    }

    /// Takes pending entry `idx` out of its slot list (it stays allocated).
    fn unlink(&mut self, idx: u32) {
        let e = &self.entries[idx as usize];
        let (prev, next) = (e.prev, e.next);
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        if prev & HEAD != 0 {
            let slot = (prev & !HEAD) as usize;
            self.heads[slot] = next;
            if next == NIL {
                self.occupied[slot / 64] &= !(1 << (slot % 64));
                if slot == self.slot_of(self.cur_tick) {
                    self.cur_min = Millis::MAX;
                }
            }
        } else {
            self.entries[prev as usize].next = next;
        }
    }

    /// Unlinks pending entry `idx` and puts it on the free list.
    fn remove(&mut self, idx: u32) {
        self.unlink(idx);
        let e = &mut self.entries[idx as usize];
        e.prev = VACANT;
        e.next = self.free;
        self.free = idx;
        self.len -= 1;
    }

    /// First non-empty slot at or after `from`, wrapping around once.
    fn first_occupied_from(&self, from: usize) -> Option<usize> {
        let words = self.occupied.len();
        let mut w = from / 64;
        let mut word = self.occupied[w] & (!0u64 << (from % 64));
        // `words + 1` looks: the first word's high part, the others, then the first word's
        // low part (its high part is known to be empty by then).
        for _ in 0..=words {
            if word != 0 {
                return Some(w * 64 + word.trailing_zeros() as usize);
            }
            w = (w + 1) % words;
            word = self.occupied[w];
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Advances to `now` and returns the fired values sorted.
    fn fire<T: Copy + Ord>(w: &mut Wheel<T>, now: Millis) -> Vec<T> {
        let mut out = Vec::new();
        w.advance(now, &mut out);
        out.sort();
        out
    }

    /// The crate's generator, seeded: the property tests are deterministic.
    use crate::rng::Rng;

    #[test]
    fn entry_is_24_bytes_for_u32() {
        assert_eq!(size_of::<Entry<u32>>(), 24);
    }

    #[test]
    fn fires_at_deadline_not_before_and_once() {
        let mut w = Wheel::new(10, 64, 0);
        w.insert(105, 7u32);
        w.insert(110, 8u32);
        assert_eq!(w.len(), 2);
        assert!(fire(&mut w, 100).is_empty());
        assert!(fire(&mut w, 104).is_empty());
        assert_eq!(fire(&mut w, 105), vec![7]);
        assert!(fire(&mut w, 109).is_empty());
        assert_eq!(fire(&mut w, 110), vec![8]);
        assert!(fire(&mut w, 200).is_empty());
        assert!(w.is_empty());

        // Advancing well past the deadline fires it exactly once.
        let id = w.insert(300, 9u32);
        assert_eq!(fire(&mut w, 1000), vec![9]);
        assert!(fire(&mut w, 2000).is_empty());
        assert_eq!(w.deadline(id), None);
    }

    #[test]
    fn cancel_returns_value_and_timer_never_fires() {
        let mut w = Wheel::new(10, 64, 0);
        let a = w.insert(50, 1u32);
        let b = w.insert(50, 2u32);
        let c = w.insert(50, 3u32);
        // Cancel the middle, then head and tail of the same slot list.
        assert_eq!(w.cancel(b), Some(2));
        assert_eq!(w.cancel(b), None);
        assert_eq!(w.len(), 2);
        assert_eq!(fire(&mut w, 49), Vec::<u32>::new());
        assert_eq!(w.cancel(c), Some(3));
        assert_eq!(fire(&mut w, 100), vec![1]);
        assert_eq!(w.cancel(a), None, "fired timer is not pending");
        assert_eq!(w.cancel(TimerId::from_idx(12345)), None, "never-issued id");
        assert!(w.is_empty());
        assert_eq!(w.next_timeout(100), None);
    }

    #[test]
    fn reschedule_earlier_and_later_keeps_id() {
        let mut w = Wheel::new(10, 64, 0);
        let id = w.insert(500, 1u32);
        assert!(w.reschedule(id, 200));
        assert_eq!(w.deadline(id), Some(200));
        assert!(fire(&mut w, 199).is_empty());
        assert_eq!(fire(&mut w, 200), vec![1]);
        assert!(!w.reschedule(id, 900), "fired timer cannot be rescheduled");
        assert!(fire(&mut w, 600).is_empty(), "old deadline must not fire");

        let id2 = w.insert(700, 2u32);
        assert!(w.reschedule(id2, 1500));
        assert_eq!(w.deadline(id2), Some(1500));
        assert!(fire(&mut w, 700).is_empty());
        assert!(fire(&mut w, 1499).is_empty());
        assert_eq!(w.cancel(id2), Some(2), "same id still refers to the timer");
        assert!(fire(&mut w, 1500).is_empty());
    }

    #[test]
    fn same_slot_different_rounds_fire_in_their_own_round() {
        let (tick, slots) = (10, 64);
        let turn = tick * slots as u64;
        let mut w = Wheel::new(tick, slots, 0);
        let d = 1005;
        for round in 0..4u64 {
            w.insert(d + round * turn, round);
        }
        let mut fired_at = BTreeMap::new();
        for now in 0..=d + 4 * turn {
            for v in fire(&mut w, now) {
                assert!(fired_at.insert(v, now).is_none(), "fired twice");
            }
        }
        for round in 0..4u64 {
            assert_eq!(fired_at[&round], d + round * turn);
        }
    }

    #[test]
    fn long_delay_small_steps_and_big_jump() {
        let hour = 3_600_000;
        // Small, uneven steps.
        let mut w = Wheel::new(10, 64, 0);
        w.insert(hour, 1u32);
        let mut now = 0;
        let mut rng = Rng::new(7);
        while now < hour + 100 {
            let got = fire(&mut w, now);
            if now < hour {
                assert!(got.is_empty(), "fired early at {now}");
            } else {
                assert_eq!(got, vec![1]);
                break;
            }
            now += 1 + rng.below(13);
        }
        assert!(w.is_empty(), "never fired");

        // One big jump.
        let mut w = Wheel::new(10, 64, 0);
        w.insert(hour, 1u32);
        w.insert(hour + 1, 2u32);
        w.insert(2 * hour, 3u32);
        assert!(fire(&mut w, hour - 1).is_empty());
        assert_eq!(fire(&mut w, hour), vec![1]);
        assert_eq!(fire(&mut w, 2 * hour - 1), vec![2]);
        assert_eq!(w.len(), 1);
        assert_eq!(fire(&mut w, 10 * hour), vec![3]);
    }

    #[test]
    fn big_jump_fires_due_and_keeps_the_rest() {
        let mut w = Wheel::new(10, 64, 0);
        let mut rng = Rng::new(99);
        let deadlines: Vec<u64> = (0..2000).map(|_| rng.below(100_000)).collect();
        for (i, &d) in deadlines.iter().enumerate() {
            w.insert(d, i);
        }
        let got = fire(&mut w, 50_000);
        let want: Vec<usize> = (0..deadlines.len())
            .filter(|&i| deadlines[i] <= 50_000)
            .collect();
        assert_eq!(got, want);
        let got = fire(&mut w, 100_000);
        let want: Vec<usize> = (0..deadlines.len())
            .filter(|&i| deadlines[i] > 50_000)
            .collect();
        assert_eq!(got, want);
        assert!(w.is_empty());
    }

    #[test]
    fn next_timeout_basics_and_no_spin() {
        let mut w = Wheel::new(10, 64, 0);
        assert_eq!(w.next_timeout(0), None);
        // Later-round entry in the current slot: wait for it, not 0.
        w.insert(645, 1u32);
        assert_eq!(w.next_timeout(0), Some(645));
        // Entry later in the current tick.
        w.insert(5, 2u32);
        assert_eq!(w.next_timeout(0), Some(5));
        assert_eq!(w.next_timeout(3), Some(2));
        assert_eq!(fire(&mut w, 5), vec![2]);
        assert_eq!(w.next_timeout(5), Some(640));
        // An entry in a later slot: woken at that slot's start, never after the deadline.
        w.insert(237, 3u32);
        assert_eq!(w.next_timeout(5), Some(230 - 5));
        // Nothing due at 230: advance finds nothing, then asks to wait until 237 exactly.
        assert!(fire(&mut w, 230).is_empty());
        assert_eq!(w.next_timeout(230), Some(7));
        assert_eq!(fire(&mut w, 237), vec![3]);
        // Already due.
        assert_eq!(w.next_timeout(700), Some(0));
    }

    #[test]
    fn past_deadline_fires_on_next_advance() {
        let mut w = Wheel::new(10, 64, 1000);
        w.insert(500, 1u32);
        assert_eq!(w.next_timeout(1000), Some(0));
        assert_eq!(fire(&mut w, 1000), vec![1]);

        assert!(fire(&mut w, 2005).is_empty());
        w.insert(2001, 2u32); // same tick, already past
        w.insert(0, 3u32); // far past
        w.insert(1999, 4u32); // previous tick
        assert_eq!(w.next_timeout(2005), Some(0));
        assert_eq!(fire(&mut w, 2005), vec![2, 3, 4]);
        assert!(w.is_empty());
    }

    #[test]
    fn clock_going_backwards_is_no_time_passing() {
        let mut w = Wheel::new(10, 64, 0);
        assert!(fire(&mut w, 1000).is_empty());
        w.insert(1500, 1u32);
        assert!(fire(&mut w, 900).is_empty());
        assert!(fire(&mut w, 0).is_empty());
        assert!(w.next_timeout(900).unwrap() >= 600);
        assert_eq!(fire(&mut w, 1500), vec![1]);
    }

    #[test]
    fn reused_ids_do_not_confuse() {
        let mut w = Wheel::new(10, 64, 0);
        let a = w.insert(100, 1u32);
        assert_eq!(w.cancel(a), Some(1));
        let b = w.insert(300, 2u32);
        assert_eq!(a, b, "freed id is reused");
        assert_eq!(w.deadline(b), Some(300));
        assert!(
            fire(&mut w, 100).is_empty(),
            "cancelled timer must not fire"
        );
        assert_eq!(fire(&mut w, 300), vec![2]);
        assert_eq!(w.deadline(b), None);

        // Reuse after firing.
        let c = w.insert(400, 3u32);
        assert_eq!(c, a);
        let d = w.insert(400, 4u32);
        assert_ne!(c, d);
        assert_eq!(w.deadline(c), Some(400));
        assert_eq!(w.cancel(c), Some(3));
        assert_eq!(w.deadline(d), Some(400));
        assert_eq!(fire(&mut w, 400), vec![4]);
    }

    /// Drives the wheel the way the event loop does: advance, then sleep `next_timeout`.
    #[test]
    fn event_loop_reaches_every_deadline_on_time() {
        for &(tick, slots) in &[(10u64, 64usize), (1, 64), (7, 256)] {
            let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15 ^ tick);
            let n = 3000;
            let horizon = 200_000;
            let start = 1234;
            let mut w = Wheel::new(tick, slots, start);
            let deadlines: Vec<u64> = (0..n).map(|_| start + rng.below(horizon)).collect();
            for (i, &d) in deadlines.iter().enumerate() {
                w.insert(d, i);
            }
            let mut pending: BTreeMap<(u64, usize), ()> = deadlines
                .iter()
                .enumerate()
                .map(|(i, &d)| ((d, i), ()))
                .collect();
            let mut now = start;
            let mut steps = 0u64;
            let mut fired = Vec::new();
            loop {
                fired.clear();
                w.advance(now, &mut fired);
                for &v in &fired {
                    let d = deadlines[v];
                    assert!(now >= d, "fired early: {now} < {d}");
                    assert!(now <= d + tick, "fired late: {now} > {d} + {tick}");
                    assert!(pending.remove(&(d, v)).is_some(), "fired twice");
                }
                assert_eq!(w.len(), pending.len());
                let Some(wait) = w.next_timeout(now) else {
                    break;
                };
                let earliest = pending.keys().next().unwrap().0;
                assert!(now + wait <= earliest, "would oversleep");
                assert!(wait > 0, "would spin");
                now += wait;
                steps += 1;
                // Each wakeup fires something or starts a new tick.
                assert!(steps <= n as u64 + horizon / tick + 2, "too many steps");
            }
            assert!(pending.is_empty());
        }
    }

    /// Random inserts, cancels, reschedules and advances against a simple model.
    #[test]
    fn random_operations_match_model() {
        let mut rng = Rng::new(42);
        let (tick, slots) = (10, 64);
        let mut w = Wheel::new(tick, slots, 0);
        let mut model: BTreeMap<u32, (TimerId, u64)> = BTreeMap::new();
        let mut now = 0u64;
        let mut next_value = 0u32;
        for _ in 0..50_000 {
            match rng.below(10) {
                0..=3 => {
                    let delay = match rng.below(4) {
                        0 => rng.below(20),
                        1 => rng.below(700),
                        2 => rng.below(5000),
                        _ => rng.below(100_000),
                    };
                    let d = (now + delay).saturating_sub(rng.below(2) * 15);
                    let id = w.insert(d, next_value);
                    model.insert(next_value, (id, d));
                    next_value += 1;
                }
                4 if !model.is_empty() => {
                    let k = *model
                        .keys()
                        .nth(rng.below(model.len() as u64) as usize)
                        .unwrap();
                    let (id, _) = model.remove(&k).unwrap();
                    assert_eq!(w.cancel(id), Some(k));
                    assert_eq!(w.cancel(id), None);
                }
                5 if !model.is_empty() => {
                    let k = *model
                        .keys()
                        .nth(rng.below(model.len() as u64) as usize)
                        .unwrap();
                    let d = now + rng.below(3000);
                    let entry = model.get_mut(&k).unwrap();
                    assert!(w.reschedule(entry.0, d));
                    entry.1 = d;
                    assert_eq!(w.deadline(entry.0), Some(d));
                }
                _ => {
                    now += match rng.below(3) {
                        0 => rng.below(5),
                        1 => rng.below(50),
                        _ => w.next_timeout(now).unwrap_or(0).min(10_000),
                    };
                    let got = fire(&mut w, now);
                    let want: Vec<u32> = model
                        .iter()
                        .filter(|(_, (_, d))| *d <= now)
                        .map(|(&k, _)| k)
                        .collect();
                    assert_eq!(got, want, "at {now}");
                    for k in &want {
                        model.remove(k);
                    }
                    if let Some(earliest) = model.values().map(|&(_, d)| d).min() {
                        let wait = w.next_timeout(now).unwrap();
                        assert!(now + wait <= earliest);
                        assert!(wait > 0);
                    } else {
                        assert_eq!(w.next_timeout(now), None);
                    }
                }
            }
            assert_eq!(w.len(), model.len());
        }
    }
}
