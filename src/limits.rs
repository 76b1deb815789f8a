//! Connection caps (protocol 4): the per-client cap counted per IPv4 address or IPv6 /64, and
//! which address a connection counts for (the peer, or the `X-Forwarded-For` entry added
//! by a trusted proxy). Pure bookkeeping; the event loop answers `429`/`503`.

use std::collections::HashMap;
use std::net::IpAddr;

/// An IPv4 address, or the /64 prefix of an IPv6 address (one host's usual allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(u128);

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey(u128::from(u32::from(v4)) | (1 << 127)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::of(IpAddr::V4(v4)),
                None => ClientKey(u128::from(v6) & !((1u128 << 64) - 1)),
            },
        }
    }
}

/// How a connection is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    As(ClientKey),
    /// From a trusted proxy: counted once its request names the client.
    ViaProxy,
}

#[derive(Debug, Default)]
pub struct PerClient {
    max: usize,
    trusted: Vec<IpAddr>,
    open: HashMap<ClientKey, u32>,
}

impl PerClient {
    pub fn new(max: usize, trusted: &[IpAddr]) -> PerClient {
        PerClient {
            max,
            trusted: trusted.to_vec(),
            open: HashMap::new(),
        }
    }

    /// New limits from a configuration reload; connections already counted stay counted
    /// (and are uncounted as they close), so a lowered cap applies to new connections.
    pub fn reconfigure(&mut self, max: usize, trusted: &[IpAddr]) {
        self.max = max;
        self.trusted = trusted.to_vec();
    }

    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        self.trusted.contains(&peer)
    }

    /// Whether `try_add(key)` would count one more connection (below the cap). Lets the
    /// router (`http::route`) decide without counting; the loop counts what it decided.
    pub fn has_room(&self, key: ClientKey) -> bool {
        self.open.get(&key).map_or(0, |&n| n as usize) < self.max
    }

    /// Counts one more connection for `key`; false (and not counted) when at the cap.
    pub fn try_add(&mut self, key: ClientKey) -> bool {
        if !self.has_room(key) {
            return false;
        }
        *self.open.entry(key).or_insert(0) += 1;
        true
    }

    pub fn remove(&mut self, key: ClientKey) {
        if let Some(n) = self.open.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.open.remove(&key);
            }
        }
    }
}

/// The client address a trusted proxy reports: the last `X-Forwarded-For` entry (the one
/// that proxy added; earlier entries come from the client and prove nothing).
pub fn forwarded_client(forwarded_for: &str) -> Option<IpAddr> {
    forwarded_for
        .rsplit(',')
        .next()
        .and_then(|s| s.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let a = ClientKey::of("2001:db8:1:2::1".parse().unwrap());
        let b = ClientKey::of("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = ClientKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            ClientKey::of("::ffff:10.0.0.1".parse().unwrap()),
            ClientKey::of("10.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn cap_is_exact() {
        let mut p = PerClient::new(2, &[]);
        let k = ClientKey::of("127.0.0.1".parse().unwrap());
        assert!(p.try_add(k));
        assert!(p.try_add(k));
        assert!(!p.has_room(k));
        assert!(!p.try_add(k));
        p.remove(k);
        assert!(p.has_room(k));
        assert!(p.try_add(k));
    }

    #[test]
    fn forwarded_for_takes_the_proxy_entry() {
        assert_eq!(
            forwarded_client("1.2.3.4, 10.0.0.9"),
            Some("10.0.0.9".parse().unwrap())
        );
        assert_eq!(
            forwarded_client("203.0.113.7"),
            Some("203.0.113.7".parse().unwrap())
        );
        assert_eq!(forwarded_client("garbage"), None);
    }
}
