//! A connection's pending output: shared frames waiting for the socket, written with one
//! `writev` per turn. Exists only while output is pending (an idle stream has none).

use crate::sse::Frame;
use crate::timer::Millis;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

/// At most this many frames go into one `writev` (Linux allows 1024; 64 keeps the iovec
/// array on the stack and one busy client from hogging a turn).
const MAX_IOVECS: usize = 64;

#[derive(Debug)]
#[repr(C)] // the fields a one-frame delivery touches first, in the box's first cache line
pub struct OutQueue {
    /// The oldest pending frame. Most queues hold one frame (one event per stream per
    /// sweep): kept here, it is queued and written without touching a ring buffer.
    front: Option<Frame>,
    /// Bytes of the front frame already written.
    head_written: usize,
    /// Unwritten bytes in the queue.
    pending: usize,
    /// When the queue last went from empty to non-empty (the write timeout counts from here).
    pub since: Millis,
    /// Frames after `front`, oldest first; empty whenever `front` is `None`.
    rest: VecDeque<Frame>,
}

/// Emptied queues kept for the next deliveries: a sweep over many streams frees a queue
/// per stream and the next event's fan-out makes them again, so they are reused instead
/// of going back to the allocator every time. `release` (the loop's heap trim, every
/// 10 s) frees the queues that were not needed since the last release — the pool's low
/// water mark — so a busy hub keeps what it reuses (no burst of frees and no pause) and an
/// idle hub holds none after two releases.
#[derive(Debug, Default)]
pub struct QueuePool {
    /// Boxes, not queues: a connection holds its queue boxed, and the box itself is what
    /// is reused.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<OutQueue>>,
    /// The fewest spare queues held since the last `release`.
    low_water: usize,
}

/// A queue whose ring grew past this many frames (a replay batch) is not kept.
const POOL_MAX_FRAMES: usize = 8;

impl QueuePool {
    /// An empty queue whose write timeout counts from `now`.
    pub fn take(&mut self, now: Millis) -> Box<OutQueue> {
        match self.spare.pop() {
            Some(mut q) => {
                self.low_water = self.low_water.min(self.spare.len());
                q.since = now;
                q
            }
            None => Box::new(OutQueue::new(now)),
        }
    }

    /// Keeps a queue that is no longer needed for a later `take`.
    pub fn put(&mut self, mut q: Box<OutQueue>) {
        if q.rest.capacity() <= POOL_MAX_FRAMES {
            q.front = None;
            q.rest.clear();
            q.head_written = 0;
            q.pending = 0;
            self.spare.push(q);
        }
    }

    /// Gives back the queues not taken since the last release.
    pub fn release(&mut self) {
        let keep = self.spare.len() - self.low_water.min(self.spare.len());
        self.spare.truncate(keep);
        if keep == 0 {
            self.spare = Vec::new();
        }
        self.low_water = self.spare.len();
    }

    pub fn len(&self) -> usize {
        self.spare.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spare.is_empty()
    }
}

pub enum Flush {
    /// Everything was written.
    Done,
    /// The socket is full; wait for it to become writable.
    Blocked,
    /// The per-turn budget ran out with the socket still writable.
    Budget,
}

impl OutQueue {
    pub fn new(now: Millis) -> Self {
        OutQueue {
            front: None,
            head_written: 0,
            pending: 0,
            since: now,
            rest: VecDeque::new(),
        }
    }

    pub fn push(&mut self, frame: Frame) {
        self.pending += frame.len();
        if self.front.is_none() {
            self.front = Some(frame);
        } else {
            self.rest.push_back(frame);
        }
    }

    /// Frames queued (the front one counted whole even when partly written).
    #[cfg(test)]
    fn frames(&self) -> usize {
        usize::from(self.front.is_some()) + self.rest.len()
    }

    /// Queued frames, oldest first.
    fn iter(&self) -> impl Iterator<Item = &Frame> {
        self.front.iter().chain(self.rest.iter())
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// Writes queued frames, up to `max_writes` calls; an I/O error other than
    /// `WouldBlock` is returned. One frame (the common case: one event per stream per
    /// sweep) goes out with a plain `write`, several with one `writev`. `writes` counts
    /// the calls.
    pub fn flush(
        &mut self,
        sock: &mut impl Write,
        max_writes: usize,
        writes: &mut u64,
    ) -> io::Result<Flush> {
        for _ in 0..max_writes {
            let result = match (&self.front, self.rest.len()) {
                (None, _) => return Ok(Flush::Done),
                (Some(front), 0) => sock.write(&front[self.head_written..]),
                (Some(_), n) if n < 4 => self.write_vectored::<4>(sock),
                _ => self.write_vectored::<MAX_IOVECS>(sock),
            };
            *writes += 1;
            let written = match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flush::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.consume(written);
        }
        if self.front.is_none() {
            Ok(Flush::Done)
        } else {
            Ok(Flush::Budget)
        }
    }

    /// One `writev` of up to `N` queued frames (`N` sizes the iovec array on the stack).
    fn write_vectored<const N: usize>(&self, sock: &mut impl Write) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); N];
        let mut n = 0;
        for (i, frame) in self.iter().take(N).enumerate() {
            slices[i] = IoSlice::new(if i == 0 {
                &frame[self.head_written..]
            } else {
                &frame[..]
            });
            n += 1;
        }
        sock.write_vectored(&slices[..n])
    }

    /// Passes queued bytes, front first, to `take` (e.g. a TLS session's plaintext
    /// writer) until the queue is empty or `take` accepts nothing more; returns how many
    /// bytes were taken.
    pub fn feed(&mut self, mut take: impl FnMut(&[u8]) -> io::Result<usize>) -> io::Result<usize> {
        let mut total = 0;
        while let Some(front) = &self.front {
            let n = take(&front[self.head_written..])?;
            if n == 0 {
                break;
            }
            total += n;
            self.consume(n);
        }
        Ok(total)
    }

    /// Drops `written` bytes from the front.
    fn consume(&mut self, mut written: usize) {
        self.pending -= written;
        while let Some(front) = &self.front {
            let left = front.len() - self.head_written;
            if written < left {
                self.head_written += written;
                break;
            }
            written -= left;
            self.head_written = 0;
            self.front = self.rest.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that accepts at most `room` bytes, then says WouldBlock.
    struct Pipe {
        got: Vec<u8>,
        room: usize,
        calls: usize,
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.room);
                self.got.extend_from_slice(&b[..take]);
                self.room -= take;
                n += take;
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn coalesces_frames_into_one_write() {
        let mut q = OutQueue::new(0);
        for f in [&b"ab"[..], b"cd", b"ef"] {
            q.push(f.into());
        }
        let mut p = Pipe {
            got: vec![],
            room: 100,
            calls: 0,
        };
        let outcome = q.flush(&mut p, 8, &mut 0).unwrap();
        assert!(matches!(outcome, Flush::Done));
        assert_eq!(p.calls, 1, "three frames in one writev");
        assert_eq!(p.got, b"abcdef");
        assert!(q.is_empty());
    }

    #[test]
    fn one_frame_needs_no_ring_and_order_holds_across_front_and_rest() {
        let mut q = OutQueue::new(0);
        q.push((&b"one"[..]).into());
        assert_eq!(q.rest.capacity(), 0, "a single frame allocates nothing");
        let mut p = Pipe {
            got: vec![],
            room: 2,
            calls: 0,
        };
        assert!(matches!(
            q.flush(&mut p, 8, &mut 0).unwrap(),
            Flush::Blocked
        ));
        // Frames pushed behind a half-written front leave after it, in order.
        q.push((&b"two"[..]).into());
        q.push((&b"three"[..]).into());
        assert_eq!((q.frames(), q.pending_bytes()), (3, 9));
        p.room = 3;
        assert!(matches!(q.flush(&mut p, 1, &mut 0).unwrap(), Flush::Budget));
        assert_eq!(q.frames(), 2, "`two` is the front now, two bytes written");
        p.room = 100;
        let mut writes = 0;
        assert!(matches!(
            q.flush(&mut p, 8, &mut writes).unwrap(),
            Flush::Done
        ));
        assert_eq!(writes, 1);
        assert_eq!(p.got, b"onetwothree");
        assert_eq!((q.frames(), q.pending_bytes()), (0, 0));
    }

    #[test]
    fn partial_writes_resume_mid_frame() {
        let mut q = OutQueue::new(0);
        q.push((&b"hello"[..]).into());
        q.push((&b"world"[..]).into());
        let mut p = Pipe {
            got: vec![],
            room: 3,
            calls: 0,
        };
        let outcome = q.flush(&mut p, 8, &mut 0).unwrap();
        assert!(matches!(outcome, Flush::Blocked));
        assert_eq!(q.pending_bytes(), 7);
        p.room = 4;
        q.flush(&mut p, 8, &mut 0).unwrap();
        assert_eq!(q.pending_bytes(), 3);
        p.room = 100;
        let outcome = q.flush(&mut p, 8, &mut 0).unwrap();
        assert!(matches!(outcome, Flush::Done));
        assert_eq!(p.got, b"helloworld");
    }

    #[test]
    fn the_pool_reuses_emptied_queues_until_released() {
        let mut pool = QueuePool::default();
        let mut q = pool.take(5);
        q.push((&b"ab"[..]).into());
        let mut p = Pipe {
            got: vec![],
            room: 1,
            calls: 0,
        };
        // Put back half-written: it comes back empty, timed from the new `now`.
        q.flush(&mut p, 1, &mut 0).unwrap();
        let addr = &*q as *const OutQueue;
        pool.put(q);
        assert_eq!(pool.len(), 1);
        let q = pool.take(9);
        assert_eq!(&*q as *const OutQueue, addr, "the same allocation");
        assert!(q.is_empty());
        assert_eq!((q.since, q.head_written, q.frames()), (9, 0, 0));
        // A queue grown by a replay batch goes back to the allocator.
        let mut big = q;
        for _ in 0..100 {
            big.push((&b"x"[..]).into());
        }
        pool.put(big);
        assert!(pool.is_empty());
        // Release frees what was not taken since the last release.
        pool.release();
        for _ in 0..4 {
            pool.put(pool_queue());
        }
        pool.release(); // low water 0 before the puts: all four were "in use"
        assert_eq!(pool.len(), 4);
        let q = pool.take(1); // low water 3
        pool.release();
        assert_eq!(pool.len(), 0, "three never taken, and the fourth is out");
        pool.put(q);
        pool.release(); // low water 0 since the last release
        assert_eq!(pool.len(), 1);
        pool.release(); // untouched for a whole interval
        assert!(pool.is_empty());
    }

    fn pool_queue() -> Box<OutQueue> {
        Box::new(OutQueue::new(0))
    }
}
