//! The Origin policy (protocol 4): which origins may read streams from a browser, and the CORS
//! headers their answers carry (errors included). Pure; an empty list means no Origin
//! check and no CORS headers. Also the keyed hash an open stream keeps of its `Origin`,
//! so that a reload can re-check it without storing the client's string.

use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;

/// `Access-Control-Max-Age` of a preflight answer, in seconds.
pub const PREFLIGHT_MAX_AGE: &str = "600";

#[derive(Debug, Clone, Default)]
pub struct Cors {
    allowed: Vec<String>,
    /// `origin_hash` of each entry of `allowed`, for `allows_hash`.
    hashes: Vec<u64>,
    /// `allowed` holds `"*"`.
    any: bool,
    credentials: bool,
}

/// A keyed 64-bit hash (SipHash, one random key per process) of an `Origin` value: what
/// an open stream keeps of its origin, 8 bytes whatever the client sent. The key is
/// secret, so a client cannot pick an origin that collides with an allowed one.
pub fn origin_hash(origin: &str) -> u64 {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    KEY.get_or_init(RandomState::new).hash_one(origin)
}

/// What the policy says about a request's `Origin`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// No Origin, or no policy: no CORS headers.
    NotCors,
    /// Allowed: echo this origin.
    Allowed(&'a str),
    /// Refused with 403.
    Refused,
}

impl Cors {
    pub fn new(allowed: &[String], credentials: bool) -> Cors {
        let allowed: Vec<String> = allowed
            .iter()
            .map(|o| o.trim_end_matches('/').to_string())
            .collect();
        Cors {
            hashes: allowed.iter().map(|a| origin_hash(a)).collect(),
            any: allowed.iter().any(|a| a == "*"),
            allowed,
            credentials,
        }
    }

    /// Whether a request whose `Origin` hashed to `hash` (`origin_hash`) would be served:
    /// the same decision as `verdict` (not `Refused`), from the hash alone.
    pub fn allows_hash(&self, hash: u64) -> bool {
        self.allowed.is_empty() || self.any || self.hashes.contains(&hash)
    }

    pub fn verdict<'a>(&self, origin: Option<&'a str>) -> Verdict<'a> {
        match origin {
            None => Verdict::NotCors,
            Some(_) if self.allowed.is_empty() => Verdict::NotCors,
            Some(o) if self.allowed.iter().any(|a| a == o || a == "*") => Verdict::Allowed(o),
            Some(_) => Verdict::Refused,
        }
    }

    /// Headers for an answer to an allowed origin.
    pub fn headers<'a>(&self, origin: &'a str, out: &mut Vec<(&'static str, &'a str)>) {
        out.push(("Access-Control-Allow-Origin", origin));
        out.push(("Vary", "Origin"));
        if self.credentials {
            out.push(("Access-Control-Allow-Credentials", "true"));
        }
    }

    /// Extra headers of the `OPTIONS` preflight answer.
    pub fn preflight_headers(out: &mut Vec<(&'static str, &'static str)>) {
        out.push(("Access-Control-Allow-Methods", "GET, HEAD"));
        out.push((
            "Access-Control-Allow-Headers",
            "Authorization, Last-Event-ID, Cache-Control",
        ));
        out.push(("Access-Control-Max-Age", PREFLIGHT_MAX_AGE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let none = Cors::new(&[], false);
        assert_eq!(none.verdict(Some("https://evil.example")), Verdict::NotCors);
        let c = Cors::new(
            &[
                "https://app.example".into(),
                "http://localhost:3000/".into(),
            ],
            true,
        );
        assert_eq!(c.verdict(None), Verdict::NotCors);
        assert_eq!(
            c.verdict(Some("https://app.example")),
            Verdict::Allowed("https://app.example")
        );
        assert_eq!(
            c.verdict(Some("http://localhost:3000")),
            Verdict::Allowed("http://localhost:3000")
        );
        assert_eq!(
            c.verdict(Some("https://app.example.evil")),
            Verdict::Refused
        );
        assert_eq!(c.verdict(Some("null")), Verdict::Refused);
        let mut h = Vec::new();
        c.headers("https://app.example", &mut h);
        assert_eq!(h.len(), 3);
        assert_eq!(h[2], ("Access-Control-Allow-Credentials", "true"));
    }

    /// `allows_hash` decides exactly what `verdict` does, for every policy shape.
    #[test]
    fn hash_check_matches_verdict() {
        let policies = [
            Cors::new(&[], false),
            Cors::new(&["https://app.example".into()], false),
            Cors::new(
                &[
                    "https://app.example/".into(),
                    "http://localhost:3000".into(),
                ],
                false,
            ),
            Cors::new(&["*".into()], false),
            Cors::new(&["https://app.example".into(), "*/".into()], true),
        ];
        let origins = [
            "https://app.example",
            "https://app.example/",
            "http://localhost:3000",
            "https://app.example.evil",
            "null",
            "*",
            "",
        ];
        for c in &policies {
            for o in origins {
                assert_eq!(
                    c.allows_hash(origin_hash(o)),
                    c.verdict(Some(o)) != Verdict::Refused,
                    "{c:?} {o:?}"
                );
            }
        }
        assert_eq!(origin_hash("a"), origin_hash("a"), "one key per process");
        assert_ne!(origin_hash("a"), origin_hash("b"));
    }
}
