//! What the load generator reads from the operating system: a clock shared by every
//! process of a run, descriptor limits, and the server's memory, CPU time, write calls and
//! open descriptors from `/proc` (summed over the server's process and its children, so a
//! master/worker server such as nginx is measured the same way as a single process).

use serde::Serialize;
use std::time::Duration;

/// `CLOCK_MONOTONIC` in nanoseconds. One clock for the whole machine, so a timestamp
/// written into a payload by the publisher is comparable with a receipt time taken in a
/// worker process.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into the struct we pass, which lives on our stack.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until `CLOCK_MONOTONIC` reaches `t` (ns); returns at once when it has.
pub fn sleep_until_ns(t: u64) {
    let now = mono_ns();
    if t > now {
        std::thread::sleep(Duration::from_nanos(t - now));
    }
}

/// Moves the calling thread to `SCHED_FIFO` (priority 10) or back to `SCHED_OTHER`. A
/// publisher thread at real-time priority is woken the moment its answer arrives instead of
/// waiting for the scheduler to preempt the worker processes reading deliveries on the same
/// core, so its round trip measures the server, not the load generator's core.
pub fn set_realtime(on: bool) -> std::io::Result<()> {
    let (policy, priority) = if on {
        (libc::SCHED_FIFO, 10)
    } else {
        (libc::SCHED_OTHER, 0)
    };
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: sched_setscheduler only reads the struct we pass, which lives on our stack;
    // pid 0 is the calling thread.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// (soft, hard) `RLIMIT_NOFILE`.
pub fn nofile() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass, which lives on our stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return (1024, 1024);
    }
    (lim.rlim_cur, lim.rlim_max)
}

/// Raises the soft descriptor limit to the hard one; returns the soft limit in force.
pub fn raise_nofile() -> u64 {
    let (soft, hard) = nofile();
    if soft < hard {
        let lim = libc::rlimit {
            rlim_cur: hard as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: setrlimit only reads the struct we pass, which lives on our stack.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
    nofile().0
}

/// Streams one process may hold: its descriptor limit less a reserve for the poll, pipes,
/// the publisher and the standard streams.
pub fn streams_per_process() -> usize {
    (raise_nofile() as usize).saturating_sub(64).max(1)
}

/// Clock ticks per second of `/proc/PID/stat` times.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn field_kib(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The `Slab:` line of `/proc/meminfo` (kernel memory), in KiB.
pub fn slab_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo").map_or(0, |t| field_kib(&t, "Slab:"))
}

/// `pid` and every process whose parent is `pid` (nginx: master and workers).
pub fn process_group(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if child != pid && stat_fields(child).is_some_and(|f| f.ppid == pid) {
                pids.push(child);
            }
        }
    }
    pids
}

struct StatFields {
    ppid: u32,
    ticks: u64,
}

fn stat_fields(pid: u32) -> Option<StatFields> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12).
    Some(StatFields {
        ppid: f.get(1)?.parse().ok()?,
        ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    })
}

/// One reading of a server (all processes of its group).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ServerSample {
    /// `Private_Clean + Private_Dirty` from `smaps_rollup`, KiB.
    pub private_kib: u64,
    /// utime + stime, seconds.
    pub cpu_s: f64,
    /// Write-family system calls (`syscw` of `/proc/PID/io`: write, writev, ...).
    pub syscw: u64,
    /// Open descriptors.
    pub fds: u64,
    pub processes: u32,
}

/// Reads memory, CPU, write calls and descriptors of `pid` and its children.
pub fn server_sample(pid: u32) -> ServerSample {
    let mut s = ServerSample::default();
    let tck = clk_tck();
    for p in process_group(pid) {
        s.processes += 1;
        if let Ok(t) = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")) {
            s.private_kib += field_kib(&t, "Private_Clean:") + field_kib(&t, "Private_Dirty:");
        }
        if let Some(f) = stat_fields(p) {
            s.cpu_s += f.ticks as f64 / tck;
        }
        if let Ok(t) = std::fs::read_to_string(format!("/proc/{p}/io")) {
            s.syscw += t
                .lines()
                .find_map(|l| l.strip_prefix("syscw:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(d) = std::fs::read_dir(format!("/proc/{p}/fd")) {
            s.fds += d.count() as u64;
        }
    }
    s
}

/// Only the private memory of the group, KiB (cheaper than a full sample).
pub fn private_kib(pid: u32) -> u64 {
    process_group(pid)
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
        .map(|t| field_kib(&t, "Private_Clean:") + field_kib(&t, "Private_Dirty:"))
        .sum()
}

/// CPU seconds this process has used (all threads).
pub fn self_cpu_s() -> f64 {
    stat_fields(std::process::id()).map_or(0.0, |f| f.ticks as f64 / clk_tck())
}

/// The first three fields of `/proc/loadavg`, as `uptime` shows them.
pub fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The machine a result was measured on.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    pub load_avg: String,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(String::new, |(_, v)| v.trim().to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .map_or(0, |t| field_kib(&t, "MemTotal:")) as f64
        / (1024.0 * 1024.0);
    let (soft, hard) = nofile();
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        kernel,
        memory_gib: (memory_gib * 10.0).round() / 10.0,
        nofile_soft: soft,
        nofile_hard: hard,
        load_avg: load_avg(),
    }
}

/// Sets `IP_BIND_ADDRESS_NO_PORT`: a socket bound to a source address picks its port at
/// `connect`, by the whole 4-tuple, so one source address serves far more than 28,000
/// connections to different ports and closed connections' ports come back sooner.
pub fn bind_address_no_port(fd: i32) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live stack value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_measurable() {
        let s = server_sample(std::process::id());
        assert!(s.private_kib > 0);
        assert!(s.fds > 0);
        assert_eq!(s.processes, 1);
    }

    #[test]
    fn clock_moves_forward() {
        let a = mono_ns();
        let b = mono_ns();
        assert!(b >= a);
    }
}
