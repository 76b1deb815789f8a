//! The one helper thread for blocking disk work: fsync of segment files (and of the
//! directory), the atomic `meta` write, and segment deletion. Jobs run one at a time in the
//! order they were sent; each result is sent back and the event loop is woken through its
//! `mio::Waker`, upon which it calls `Log::poll_sync`.

use super::meta;
use mio::Waker;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::{self, JoinHandle};

pub enum Job {
    /// fdatasync every file, then the directory when `dir` is set.
    Sync {
        seq: u64,
        files: Vec<Arc<File>>,
        dir: bool,
    },
    Meta {
        first_id: u64,
        horizon: u64,
    },
    Delete {
        paths: Vec<PathBuf>,
    },
}

pub enum Done {
    Sync { seq: u64, result: io::Result<()> },
    Meta(io::Result<()>),
    Delete(io::Result<()>),
}

/// Fault injection for tests; empty otherwise.
#[derive(Clone, Default)]
pub struct Faults {
    /// The next N syncs fail with EIO.
    #[cfg(test)]
    pub fail_syncs: Arc<std::sync::atomic::AtomicU32>,
}

pub struct Helper {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
}

impl Helper {
    pub fn spawn(dir: PathBuf, waker: Arc<Waker>, faults: Faults) -> io::Result<Helper> {
        let (job_tx, job_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let worker = Worker { dir, waker, faults };
        let thread = thread::Builder::new()
            .name("ssehub-log".into())
            .spawn(move || worker.run(job_rx, done_tx))?;
        Ok(Helper {
            jobs: Some(job_tx),
            done: done_rx,
            thread: Some(thread),
        })
    }

    /// Queues a job; `false` when the thread is gone.
    pub fn send(&self, job: Job) -> bool {
        self.jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok())
    }

    pub fn try_recv(&self) -> Result<Done, TryRecvError> {
        self.done.try_recv()
    }

    /// Lets queued jobs finish, then joins the thread.
    pub fn shutdown(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Worker {
    dir: PathBuf,
    waker: Arc<Waker>,
    #[cfg_attr(not(test), allow(dead_code))]
    faults: Faults,
}

impl Worker {
    fn run(self, jobs: Receiver<Job>, done: Sender<Done>) {
        while let Ok(job) = jobs.recv() {
            let result = match job {
                Job::Sync { seq, files, dir } => Done::Sync {
                    seq,
                    result: self.sync(&files, dir),
                },
                Job::Meta { first_id, horizon } => {
                    Done::Meta(meta::write(&self.dir, first_id, horizon))
                }
                Job::Delete { paths } => Done::Delete(self.delete(&paths)),
            };
            if done.send(result).is_err() {
                break;
            }
            let _ = self.waker.wake();
        }
    }

    fn sync(&self, files: &[Arc<File>], dir: bool) -> io::Result<()> {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering;
            let failing =
                self.faults
                    .fail_syncs
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if failing.is_ok() {
                return Err(io::Error::from_raw_os_error(5)); // EIO
            }
        }
        for f in files {
            f.sync_data()?;
        }
        if dir {
            meta::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn delete(&self, paths: &[PathBuf]) -> io::Result<()> {
        let mut first_err = None;
        for p in paths {
            match std::fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        // Not needed for correctness (a segment that comes back after a crash is deleted
        // again), but keeps the directory in step with what was reported.
        let synced = meta::sync_dir(&self.dir);
        match first_err {
            Some(e) => Err(e),
            None => synced,
        }
    }
}
