//! The coordinator's side of a run: how many worker processes, which source addresses each
//! gets, spawning them (this same binary, `worker` subcommand), talking to them, and the
//! hard deadline that ends a run that hangs.

use crate::proto::{FromWorker, Ready, ToWorker, WorkerConfig, WorkerResult};
use crate::sys;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Splits `streams` over worker processes of at most `max_per_worker` streams each (at
/// least `min_workers`), as evenly as possible.
pub fn split(streams: usize, max_per_worker: usize, min_workers: usize) -> Vec<usize> {
    let max = max_per_worker.max(1);
    let n = streams.div_ceil(max).max(min_workers).max(1);
    (0..n)
        .map(|i| streams * (i + 1) / n - streams * i / n)
        .collect()
}

/// Source addresses of worker `w`: the user's list shared out round-robin, or else four
/// addresses of its own, `127.1.w.1`–`127.1.w.4` (all of 127.0.0.0/8 is loopback).
pub fn sources(w: usize, workers: usize, user: &[IpAddr]) -> Vec<IpAddr> {
    if !user.is_empty() {
        let mine: Vec<IpAddr> = user
            .iter()
            .enumerate()
            .filter(|(j, _)| j % workers == w)
            .map(|(_, a)| *a)
            .collect();
        if mine.is_empty() {
            return vec![user[w % user.len()]];
        }
        return mine;
    }
    let hi = 1 + (w / 256) as u8;
    let mid = (w % 256) as u8;
    (1..=4)
        .map(|lo| IpAddr::V4(Ipv4Addr::new(127, hi, mid, lo)))
        .collect()
}

/// What the deadline watchdog knows: the workers to kill and the stage to name.
#[derive(Clone, Default)]
pub struct Watch {
    pids: Arc<Mutex<Vec<u32>>>,
    stage: Arc<Mutex<String>>,
}

impl Watch {
    /// Past `deadline_ns` the run is over: kill our workers, say where it stuck, exit 3.
    pub fn start(deadline_ns: u64, total_s: f64) -> Watch {
        let w = Watch::default();
        let w2 = w.clone();
        std::thread::spawn(move || {
            sys::sleep_until_ns(deadline_ns);
            let stage = w2.stage.lock().map(|s| s.clone()).unwrap_or_default();
            eprintln!(
                "ssehub-loadtest: hard deadline of {total_s:.0} s passed during {stage}; \
                 stopping the workers and giving up"
            );
            w2.kill_all();
            std::process::exit(3);
        });
        w
    }

    pub fn stage(&self, s: &str) {
        if let Ok(mut g) = self.stage.lock() {
            *g = s.to_string();
        }
        eprintln!("stage: {s}");
    }

    fn kill_all(&self) {
        if let Ok(pids) = self.pids.lock() {
            for &pid in pids.iter() {
                // SAFETY: kill has no memory effects; the pids are our own children.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

/// The running worker processes.
pub struct Fleet {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    rx: mpsc::Receiver<(usize, Option<FromWorker>)>,
    pub pids: Vec<u32>,
}

impl Fleet {
    pub fn spawn(configs: &[WorkerConfig], watch: &Watch) -> io::Result<Fleet> {
        let exe = std::env::current_exe()?;
        let (tx, rx) = mpsc::channel();
        let mut fleet = Fleet {
            children: Vec::new(),
            stdins: Vec::new(),
            rx,
            pids: Vec::new(),
        };
        for (w, cfg) in configs.iter().enumerate() {
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            let pid = child.id();
            if let Ok(mut p) = watch.pids.lock() {
                p.push(pid);
            }
            fleet.pids.push(pid);
            let mut stdin = child.stdin.take().expect("piped stdin");
            writeln!(stdin, "{}", serde_json::to_string(cfg).expect("config"))?;
            let stdout = child.stdout.take().expect("piped stdout");
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str::<FromWorker>(&line) {
                        Ok(msg) => {
                            let _ = tx.send((w, Some(msg)));
                        }
                        Err(e) => eprintln!("worker {w}: unreadable report: {e}"),
                    }
                }
                let _ = tx.send((w, None));
            });
            fleet.stdins.push(Some(stdin));
            fleet.children.push(child);
        }
        Ok(fleet)
    }

    fn next(&self) -> Result<(usize, FromWorker), String> {
        match self.rx.recv() {
            Ok((w, Some(msg))) => Ok((w, msg)),
            Ok((w, None)) => Err(format!("worker {w} exited without reporting")),
            Err(_) => Err("workers gone".into()),
        }
    }

    /// Waits until every worker has opened its streams (or given up on some).
    pub fn wait_ready(&self) -> Result<Vec<Ready>, String> {
        let mut ready: Vec<Option<Ready>> = (0..self.children.len()).map(|_| None).collect();
        while ready.iter().any(Option::is_none) {
            match self.next()? {
                (w, FromWorker::Ready(r)) => ready[w] = Some(r),
                (w, FromWorker::Result(_)) => return Err(format!("worker {w} ended early")),
            }
        }
        Ok(ready.into_iter().flatten().collect())
    }

    pub fn send_all(&mut self, cmd: &ToWorker) {
        let line = serde_json::to_string(cmd).expect("command");
        for s in self.stdins.iter_mut().flatten() {
            let _ = writeln!(s, "{line}");
            let _ = s.flush();
        }
    }

    pub fn wait_results(&self) -> Result<Vec<WorkerResult>, String> {
        let mut results: Vec<Option<WorkerResult>> =
            (0..self.children.len()).map(|_| None).collect();
        while results.iter().any(Option::is_none) {
            match self.rx.recv() {
                Ok((w, Some(FromWorker::Result(r)))) => results[w] = Some(*r),
                Ok((w, Some(FromWorker::Ready(_)))) => {
                    return Err(format!("worker {w} said ready twice"));
                }
                // A worker closes its output after its result: only an end before it counts.
                Ok((w, None)) if results[w].is_some() => {}
                Ok((w, None)) => return Err(format!("worker {w} exited without reporting")),
                Err(_) => return Err("workers gone".into()),
            }
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// Closes the workers' stdin and waits for them to exit (their sockets close with them).
    pub fn finish(mut self) {
        self.stdins.clear();
        for c in &mut self.children {
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_evenly_within_the_limit() {
        assert_eq!(split(15_000, 19_936, 0), vec![15_000]);
        assert_eq!(split(50_000, 19_936, 0), vec![16_666, 16_667, 16_667]);
        assert_eq!(split(10, 100, 2), vec![5, 5]);
        assert_eq!(split(0, 100, 0), vec![0]);
        assert!(split(100_001, 19_936, 0).iter().all(|&n| n <= 19_936));
    }

    #[test]
    fn sources_are_loopback_and_disjoint() {
        let a = sources(0, 3, &[]);
        let b = sources(1, 3, &[]);
        assert!(a.iter().chain(&b).all(IpAddr::is_loopback));
        assert!(a.iter().all(|x| !b.contains(x)));
        let user: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()];
        assert_eq!(sources(0, 2, &user), vec![user[0]]);
        assert_eq!(sources(1, 2, &user), vec![user[1]]);
        assert_eq!(sources(2, 3, &user), vec![user[0]]);
    }
}
