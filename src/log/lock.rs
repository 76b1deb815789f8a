//! The data-directory lock: one ssehub process per `history.data_dir`.
//!
//! Two processes appending to one log give one id to two events and, after a crash, make
//! recovery cut acknowledged records (issue 16). So `data_dir/lock` is locked with
//! `flock(LOCK_EX | LOCK_NB)` before anything in the directory is read or repaired, and the
//! holder's pid is written into it for the message a second process prints. The lock lives
//! as long as its descriptor: the `Log` owns it, so it is released when the process exits,
//! however it exits (a stale `lock` file left by a crash locks nothing).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const LOCK: &str = "lock";

/// An exclusive lock on a data directory, held until dropped.
#[derive(Debug)]
pub struct DirLock {
    dir: PathBuf,
    /// Kept open: closing it releases the lock.
    _file: File,
}

impl DirLock {
    /// Creates `dir` if needed and locks it. If another process holds the lock: an error
    /// (`ErrorKind::WouldBlock`) whose text is the one-line message for the operator.
    pub fn acquire(dir: &Path) -> io::Result<DirLock> {
        let context = |e: io::Error| {
            io::Error::new(e.kind(), format!("history.data_dir {}: {e}", dir.display()))
        };
        fs::create_dir_all(dir).map_err(context)?;
        // No truncation on open: the pid inside belongs to the holder until we hold the lock.
        // O_CLOEXEC (std sets it anyway): a child process must not inherit the lock.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_CLOEXEC)
            .mode(0o644)
            .open(dir.join(LOCK))
            .map_err(context)?;
        // SAFETY: `flock` only reads its two integer arguments; the descriptor comes from
        // `file`, which is alive (borrowed) for the whole call, so it cannot be closed or
        // reused meanwhile. No memory is passed to the kernel.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(context(io::Error::new(
                    e.kind(),
                    format!("cannot lock {}: {e}", LOCK),
                )));
            }
            let mut text = String::new();
            let holder = match (&file).take(64).read_to_string(&mut text) {
                Ok(_) => match text.trim().parse::<u32>() {
                    Ok(pid) => format!("pid {pid}"),
                    Err(_) => "pid unknown".to_string(),
                },
                Err(_) => "pid unknown".to_string(),
            };
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "history.data_dir {} is in use by another ssehub process ({holder}); one data directory serves one process",
                    dir.display()
                ),
            ));
        }
        // Ours now: record who holds it (best effort for the message; the lock is the flock).
        let write_pid = |f: &mut File| -> io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            f.write_all(format!("{}\n", std::process::id()).as_bytes())
        };
        write_pid(&mut file).map_err(context)?;
        Ok(DirLock {
            dir: dir.to_path_buf(),
            _file: file,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
