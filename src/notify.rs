//! systemd's notify protocol (`sd_notify(3)`), spoken directly: one datagram per message
//! to the socket named by `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//! Owns that socket and the watchdog interval; never blocks: a full receiver queue drops
//! the message (systemd re-reads STATUS on the next one, and a missed WATCHDOG is
//! covered by sending at half the interval).

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where and how to notify the service manager.
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
    /// Last `STATUS=` sent, so an unchanged status is not sent again.
    last_status: String,
}

impl Notifier {
    /// The notifier named by `NOTIFY_SOCKET`, if set (and usable). The variable is removed
    /// from the environment so that nothing started later talks to systemd as us.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        // SAFETY (edition 2024 `unsafe` env mutation): called from `main` before the
        // signal-handler thread or any other thread exists.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        match Notifier::connect_to(path.to_str()?) {
            Ok(n) => Some(n),
            Err(e) => {
                log::warn!("NOTIFY_SOCKET unusable, not notifying systemd: {e}");
                None
            }
        }
    }

    /// A notifier for `path`: a filesystem path, or `@name` for the abstract namespace.
    pub fn connect_to(path: &str) -> io::Result<Notifier> {
        let addr = socket_addr(path)?;
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        Ok(Notifier {
            sock,
            addr,
            last_status: String::new(),
        })
    }

    /// Sends one message (`KEY=value` lines). Errors are logged at debug and dropped:
    /// notification is best effort and must never stop the hub.
    pub fn send(&self, message: &str) {
        if let Err(e) = self.sock.send_to_addr(message.as_bytes(), &self.addr) {
            log::debug!("sd_notify {message:?} failed: {e}");
        }
    }

    /// `READY=1` with a first status line.
    pub fn ready(&mut self, status: &str) {
        self.last_status = status.to_string();
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// `STATUS=...`, only when it changed since the last one.
    pub fn status(&mut self, status: &str) {
        if self.last_status != status {
            self.last_status = status.to_string();
            self.send(&format!("STATUS={status}"));
        }
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    pub fn stopping(&mut self, status: &str) {
        self.last_status = status.to_string();
        self.send(&format!("STOPPING=1\nSTATUS={status}"));
    }
}

fn socket_addr(path: &str) -> io::Result<SocketAddr> {
    match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None if path.starts_with('/') => SocketAddr::from_pathname(path),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET {path:?} is neither an absolute path nor @abstract"),
        )),
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC` (as `sd_watchdog_enabled(3)`
/// advises), when the watchdog is on and meant for this process (`WATCHDOG_PID`, if set,
/// names us). Reads and then removes both variables.
pub fn watchdog_interval_from_env() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    // SAFETY: as in `Notifier::from_env`: single-threaded start-up.
    unsafe {
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
    }
    watchdog_interval(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// Pure part of `watchdog_interval_from_env`.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(me)
    {
        return None;
    }
    // At least 1 ms, so a silly WATCHDOG_USEC cannot make the loop spin.
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_is_half_the_interval_and_only_for_us() {
        let half = Some(Duration::from_secs(10));
        assert_eq!(watchdog_interval(Some("20000000"), None, 7), half);
        assert_eq!(watchdog_interval(Some("20000000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval(Some("20000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval(None, Some("7"), 7), None);
        assert_eq!(
            watchdog_interval(Some("1"), None, 7),
            Some(Duration::from_millis(1))
        );
    }

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let mut n = Notifier::connect_to(path.to_str().unwrap()).unwrap();
        n.ready("up");
        n.status("up");
        n.status("busy");
        let mut buf = [0u8; 256];
        let got = |rx: &UnixDatagram, buf: &mut [u8]| {
            let len = rx.recv(buf).unwrap();
            String::from_utf8(buf[..len].to_vec()).unwrap()
        };
        assert_eq!(got(&rx, &mut buf), "READY=1\nSTATUS=up");
        assert_eq!(
            got(&rx, &mut buf),
            "STATUS=busy",
            "unchanged status not resent"
        );

        use std::os::linux::net::SocketAddrExt;
        let name = format!("ssehub-notify-test-{}", std::process::id());
        let abstract_rx =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let n = Notifier::connect_to(&format!("@{name}")).unwrap();
        n.watchdog();
        assert_eq!(got(&abstract_rx, &mut buf), "WATCHDOG=1");
    }

    #[test]
    fn refuses_relative_paths() {
        assert!(Notifier::connect_to("relative/notify").is_err());
    }
}
