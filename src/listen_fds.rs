//! Socket activation (`sd_listen_fds(3)`): listening sockets handed over by systemd as
//! descriptors 3, 4, ... with `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`. Each is
//! told apart by its names (`http`, `ingest`, `admin`) when present, else by socket family
//! (TCP: HTTP, Unix stream: ingest). Owns only that sorting; never binds anything.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// Listening sockets passed in by the service manager, by role.
#[derive(Debug, Default)]
pub struct Passed {
    pub http: Option<std::net::TcpListener>,
    pub admin: Option<std::net::TcpListener>,
    pub ingest: Option<UnixListener>,
    /// Descriptors that fit no role (logged and closed by the caller's drop).
    pub ignored: Vec<String>,
}

impl Passed {
    pub fn is_empty(&self) -> bool {
        self.http.is_none() && self.admin.is_none() && self.ingest.is_none()
    }
}

/// What a passed descriptor is, from `getsockname`/`SO_TYPE`/`SO_ACCEPTCONN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TcpListener,
    UnixStreamListener,
    Other,
}

/// Takes the descriptors systemd passed to this process, if any, and removes the three
/// variables from the environment. A `LISTEN_PID` that is not ours means they were meant
/// for another process: nothing is taken.
pub fn take_from_env() -> io::Result<Passed> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    // SAFETY (edition 2024 `unsafe` env mutation): called from `main` before any other
    // thread exists.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let Some(count) = passed_count(pid.as_deref(), fds.as_deref(), std::process::id()) else {
        return Ok(Passed::default());
    };
    let names: Vec<&str> = names
        .as_deref()
        .map_or(Vec::new(), |n| n.split(':').collect());
    let mut passed = Passed::default();
    for i in 0..count {
        let fd = FIRST_FD + i as RawFd;
        set_cloexec(fd)?;
        let kind = kind_of(fd);
        let name = names.get(i).copied().unwrap_or("");
        let role = role(name, kind);
        let what = format!("fd={fd} name={name:?} kind={kind:?}");
        // SAFETY: systemd passed us `fd` (LISTEN_PID is ours) and nothing else owns it;
        // each descriptor is wrapped exactly once, by the role matching its socket kind.
        match role {
            Some(Role::Http) if passed.http.is_none() => {
                passed.http = Some(unsafe { std::net::TcpListener::from_raw_fd(fd) });
            }
            Some(Role::Admin) if passed.admin.is_none() => {
                passed.admin = Some(unsafe { std::net::TcpListener::from_raw_fd(fd) });
            }
            Some(Role::Ingest) if passed.ingest.is_none() => {
                passed.ingest = Some(unsafe { UnixListener::from_raw_fd(fd) });
            }
            _ => {
                // SAFETY: as above; wrapping it closes it on drop, so it is not leaked.
                drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
                passed.ignored.push(what);
            }
        }
    }
    for l in [&passed.http, &passed.admin].into_iter().flatten() {
        l.set_nonblocking(true)?;
    }
    if let Some(l) = &passed.ingest {
        l.set_nonblocking(true)?;
    }
    Ok(passed)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Http,
    Admin,
    Ingest,
}

/// A descriptor's role: its name when it is one we know and fits the socket kind, else its
/// family (TCP: HTTP, Unix stream: ingest).
fn role(name: &str, kind: Kind) -> Option<Role> {
    match (name, kind) {
        ("http", Kind::TcpListener) => Some(Role::Http),
        ("admin", Kind::TcpListener) => Some(Role::Admin),
        ("ingest", Kind::UnixStreamListener) => Some(Role::Ingest),
        (_, Kind::TcpListener) => Some(Role::Http),
        (_, Kind::UnixStreamListener) => Some(Role::Ingest),
        (_, Kind::Other) => None,
    }
}

/// How many descriptors were passed to process `me`: `LISTEN_PID` must name it.
fn passed_count(pid: Option<&str>, fds: Option<&str>, me: u32) -> Option<usize> {
    let pid: u32 = pid?.trim().parse().ok()?;
    if pid != me {
        return None;
    }
    let n: usize = fds?.trim().parse().ok()?;
    // Descriptor numbers must stay in range; systemd never passes thousands.
    (n > 0 && n < 4096).then_some(n)
}

fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number only reads/changes its flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn kind_of(fd: RawFd) -> Kind {
    let int_opt = |level, name| {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`, which we own.
        let rc =
            unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &raw mut len) };
        (rc == 0).then_some(value)
    };
    if int_opt(libc::SOL_SOCKET, libc::SO_TYPE) != Some(libc::SOCK_STREAM)
        || int_opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN) != Some(1)
    {
        return Kind::Other;
    }
    // SAFETY: sockaddr_storage is plain data; getsockname writes at most `len` bytes.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: as above.
    if unsafe { libc::getsockname(fd, (&raw mut addr).cast(), &raw mut len) } != 0 {
        return Kind::Other;
    }
    match i32::from(addr.ss_family) {
        libc::AF_INET | libc::AF_INET6 => Kind::TcpListener,
        libc::AF_UNIX => Kind::UnixStreamListener,
        _ => Kind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn only_descriptors_meant_for_us() {
        assert_eq!(passed_count(Some("42"), Some("2"), 42), Some(2));
        assert_eq!(passed_count(Some("41"), Some("2"), 42), None);
        assert_eq!(passed_count(None, Some("2"), 42), None);
        assert_eq!(passed_count(Some("42"), Some("0"), 42), None);
        assert_eq!(passed_count(Some("42"), Some("x"), 42), None);
    }

    #[test]
    fn names_win_when_they_fit_the_socket_family_decides_otherwise() {
        use Kind::*;
        assert_eq!(role("http", TcpListener), Some(Role::Http));
        assert_eq!(role("admin", TcpListener), Some(Role::Admin));
        assert_eq!(role("ssehub.socket", TcpListener), Some(Role::Http));
        assert_eq!(role("", UnixStreamListener), Some(Role::Ingest));
        assert_eq!(role("http", UnixStreamListener), Some(Role::Ingest));
        assert_eq!(role("ingest", Other), None);
    }

    #[test]
    fn tells_socket_kinds_apart() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(kind_of(tcp.as_raw_fd()), Kind::TcpListener);
        let dir = tempfile::tempdir().unwrap();
        let unix = UnixListener::bind(dir.path().join("s")).unwrap();
        assert_eq!(kind_of(unix.as_raw_fd()), Kind::UnixStreamListener);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(kind_of(a.as_raw_fd()), Kind::Other, "not listening");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(kind_of(udp.as_raw_fd()), Kind::Other);
    }
}
