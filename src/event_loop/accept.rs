//! Accepting: HTTP clients (with the connection caps answered at accept, or deferred to
//! the request with `overload_as_retry`) and producers (capped by `ingest.max_producers`,
//! checked with `SO_PEERCRED`). Accepts until `WouldBlock`; out of descriptors, accepting
//! pauses and is retried on a timer, logged once per episode. Also binds the HTTP listener
//! and derives the descriptor caps.

use super::*;

impl Server {
    // ---- accept -------------------------------------------------------------------------

    pub(super) fn accept_http(&mut self) {
        if self.accept_paused {
            return;
        }
        loop {
            let Some(listener) = &self.http else { return };
            let (mut sock, peer) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_out_of_descriptors(&e) => return self.pause_accept(),
                Err(e) => {
                    debug!("accept failed: {e}");
                    continue;
                }
            };
            self.stats.accepted += 1;
            self.fd_shortage_over();
            let overload_as_retry = self.config.http.overload_as_retry;
            let mut over_cap = 0;
            let open = self.streams.len();
            if open >= self.max_connections
                && overload_as_retry
                && open < self.max_connections + OVERLOAD_SLOTS
            {
                // Read the request first: a stream request gets a retry-only stream.
                over_cap = flags::OVER_CAP;
            } else if open >= self.max_connections {
                self.refuse_at_accept(&mut sock, route::Cap::Global);
                continue;
            }
            let counted = if !self.per_client.enabled() || over_cap != 0 {
                None
            } else if self.per_client.is_trusted(peer.ip()) {
                Some(Counted::ViaProxy)
            } else {
                let client = ClientKey::of(peer.ip());
                let added = self.per_client.try_add(client);
                if added {
                    Some(Counted::As(client))
                } else if overload_as_retry && open < self.max_connections + OVERLOAD_SLOTS {
                    over_cap = flags::OVER_PER_IP;
                    None
                } else {
                    self.refuse_at_accept(&mut sock, route::Cap::PerClient);
                    continue;
                }
            };
            let session = match &self.tls_config {
                None => None,
                Some(config) => match tls::new_session(config) {
                    Ok(session) => Some(session),
                    Err(e) => {
                        warn!("tls session: {e}");
                        self.release_client_slot(counted);
                        continue;
                    }
                },
            };
            tune_stream_socket(&sock, &self.config.streams);
            if !self.register_next(&mut sock) {
                self.release_client_slot(counted);
                continue;
            }
            let deadline = self.now + self.request_timeout();
            let key = self
                .streams
                .insert(sock, self.now, over_cap, deadline, &mut self.wheel);
            if let Some(counted) = counted {
                self.streams.set_counted_as(key, counted);
            }
            if let (Some(session), Some(conn)) = (session, self.streams.get_mut(key)) {
                conn.tls = Some(session);
            }
        }
    }

    /// Registers an accepted socket under the key the stream table gives it next (both
    /// readable and writable, edge-triggered, once for its lifetime); false when that fails.
    pub(super) fn register_next(&mut self, sock: &mut TcpStream) -> bool {
        let key = self.streams.next_key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        match self
            .poll
            .registry()
            .register(sock, Token(key as usize), interest)
        {
            Ok(()) => true,
            Err(e) => {
                debug!("register failed: {e}");
                false
            }
        }
    }

    /// Answers a connection over a cap at once, before its request is read (one write
    /// into the fresh socket's empty buffer; it is closed when dropped).
    fn refuse_at_accept(&mut self, sock: &mut TcpStream, cap: route::Cap) {
        let (status, reason) = cap.status_reason();
        self.stats.rejected.count(status);
        let headers = [("Retry-After", route::RETRY_AFTER_S)];
        let answer = response::plain(status, reason, After::Close, &headers, false);
        let _ = io::Write::write(sock, &answer);
    }

    /// A connection counted by the per-client cap was not served after all.
    pub(super) fn release_client_slot(&mut self, counted: Option<Counted>) {
        if let Some(Counted::As(client)) = counted {
            self.per_client.remove(client);
        }
    }

    pub(super) fn accept_producers(&mut self) {
        loop {
            let Some(listener) = &self.ingest else { return };
            let (mut sock, _) = match listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_out_of_descriptors(&e) => return self.pause_accept(),
                Err(e) => {
                    warn!("ingest accept failed: {e}");
                    return;
                }
            };
            self.fd_shortage_over();
            if self.producers.len() >= self.max_producers {
                // Producers count against the descriptor budget like connections do: past
                // the cap they get a reason and are closed, so the log keeps its reserve.
                let reason = format!(
                    "too many producers connected (ingest.max_producers = {})",
                    self.max_producers
                );
                debug!("ingest connection refused: {reason}");
                self.stats.ingest_errors += 1;
                let mut answer = Vec::new();
                line::write_error(&mut answer, &reason);
                let _ = io::Write::write(&mut sock, &answer);
                continue;
            }
            let allowed = &self.config.ingest.allowed_uids;
            if !allowed.is_empty() {
                match ingest::peer_uid(&sock) {
                    Ok(uid) if allowed.contains(&uid) => {}
                    other => {
                        let reason = match other {
                            Ok(uid) => format!("uid {uid} may not publish (ingest.allowed_uids)"),
                            Err(e) => format!("cannot check the peer's uid: {e}"),
                        };
                        warn!("ingest connection refused: {reason}");
                        let mut answer = Vec::new();
                        line::write_error(&mut answer, &reason);
                        let _ = io::Write::write(&mut sock, &answer);
                        continue;
                    }
                }
            }
            let entry = self.producers.vacant_entry();
            let token = Token(PRODUCER_BASE + entry.key());
            if self
                .poll
                .registry()
                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
                .is_ok()
            {
                entry.insert(Producer::new(sock));
            }
        }
    }

    /// Out of descriptors: stop accepting (HTTP and ingest) and retry on a timer, since
    /// with edge-triggered readiness nobody would tell us again. Logged once per episode.
    pub(super) fn pause_accept(&mut self) {
        if !self.fd_shortage_logged {
            warn!(
                "accept paused: out of file descriptors connections={} producers={}; retrying every {ACCEPT_RETRY_MS} ms",
                self.streams.len(),
                self.producers.len()
            );
            self.fd_shortage_logged = true;
        }
        if !self.accept_paused {
            self.accept_paused = true;
            self.wheel
                .insert(self.now + ACCEPT_RETRY_MS, Due::ResumeAccept);
        }
    }

    /// An accept worked: an out-of-descriptors episode, if any, is over.
    pub(super) fn fd_shortage_over(&mut self) {
        if std::mem::take(&mut self.fd_shortage_logged) {
            info!(
                "accept resumed: descriptors available again connections={} producers={}",
                self.streams.len(),
                self.producers.len()
            );
        }
    }
}

/// `reuse_port` (`http.reuse_port`): `SO_REUSEPORT`, so several processes share the port
/// and the kernel spreads new connections over them.
pub(super) fn bind_http(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    // Accepted sockets inherit TCP_NODELAY: events leave at once, and coalescing is ours.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Socket options of an accepted HTTP connection (public or admin listener, plain or TLS),
/// from `[streams]` (protocol 2.3): `SO_SNDBUF` from `send_buffer` (0: the kernel's default and
/// autotuning), so the kernel holds at most about twice that for a stalled stream before
/// `max_pending_bytes` and `write_timeout` apply; `TCP_USER_TIMEOUT` from `write_timeout`,
/// so a peer that stops acknowledging (gone without a FIN or RST) or keeps its window shut
/// is given up by the kernel after that long instead of ~15 minutes of retransmissions.
/// Failures are logged and the connection is served with the kernel's defaults.
pub(super) fn tune_stream_socket(sock: &TcpStream, streams: &crate::config::Streams) {
    let sock = socket2::SockRef::from(sock);
    if streams.send_buffer > 0
        && let Err(e) = sock.set_send_buffer_size(streams.send_buffer)
    {
        debug!("SO_SNDBUF {}: {e}", streams.send_buffer);
    }
    // The kernel takes milliseconds in an int; 0 would mean its default.
    let timeout = streams.write_timeout.clamp(
        Duration::from_millis(1),
        Duration::from_millis(i32::MAX as u64),
    );
    if let Err(e) = sock.set_tcp_user_timeout(Some(timeout)) {
        debug!("TCP_USER_TIMEOUT {timeout:?}: {e}");
    }
}

pub(super) fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// Descriptors no cap may use: listeners, the poll and its waker, the data directory's
/// lock, segment and directory files, a reload's file reads, a refused connection's
/// moment between accept and close.
const DESCRIPTOR_RESERVE: usize = 64;

/// `(max_connections, max_producers)`: the configured values, or derived from the
/// descriptor limit where 0, so that connections, producers and the reserve together fit.
pub(super) fn descriptor_caps(config: &Config) -> (usize, usize) {
    let (soft, _) = crate::rlimit::nofile();
    let soft = soft as usize;
    let producers = match config.ingest.max_producers {
        0 => (soft / 16).clamp(1, 256),
        n => n,
    };
    let connections = match config.http.max_connections {
        0 => soft.saturating_sub(DESCRIPTOR_RESERVE + producers).max(1),
        n => n,
    };
    (connections, producers)
}
