//! Who may read a topic (SPEC 4): private topic patterns, where a request's token comes
//! from, and JWT verification (HS256 with a secret, RS256/ES256 with a public key; the
//! algorithm is pinned by the key, `none` never accepted). Pure decisions: request data in,
//! the token's expiry or a rejection out. Reasons never echo the token.

use crate::config;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

/// A topic pattern: exact, or a prefix when it ends with `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(Box<str>),
    Prefix(Box<str>),
}

impl Pattern {
    pub fn parse(text: &str) -> Pattern {
        match text.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.into()),
            None => Pattern::Exact(text.into()),
        }
    }

    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Exact(t) => **t == *topic,
            Pattern::Prefix(p) => topic.starts_with(&**p),
        }
    }
}

/// A rejected request: status (401 or 403) and a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub status: u16,
    pub reason: &'static str,
}

const MISSING: Denied = Denied {
    status: 401,
    reason: "a token is required for a private topic",
};

/// Where a request's token may come from, in order of precedence.
pub struct Credentials<'a> {
    pub authorization: Option<&'a str>,
    pub cookie_header: Option<&'a str>,
    pub query_token: Option<&'a str>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(default)]
    subscribe: Vec<String>,
    exp: u64,
}

pub struct Auth {
    private: Vec<Pattern>,
    key: Option<(DecodingKey, Algorithm)>,
    cookie: String,
    leeway_s: u64,
}

impl Auth {
    /// Builds the policy from `[auth]`; reads `public_key` (PEM) when set.
    pub fn from_config(c: &config::Auth) -> Result<Auth, String> {
        let key = match (c.secret.is_empty(), c.public_key.is_empty()) {
            (false, false) => return Err("auth: set either secret or public_key, not both".into()),
            (false, true) => Some((
                DecodingKey::from_secret(c.secret.as_bytes()),
                Algorithm::HS256,
            )),
            (true, false) => Some(read_public_key(&c.public_key)?),
            (true, true) => None,
        };
        if !c.private.is_empty() && key.is_none() {
            return Err("auth.private is set but neither auth.secret nor auth.public_key".into());
        }
        Ok(Auth {
            private: c.private.iter().map(|p| Pattern::parse(p)).collect(),
            key,
            cookie: c.cookie.clone(),
            leeway_s: c.leeway.as_secs(),
        })
    }

    pub fn leeway_s(&self) -> u64 {
        self.leeway_s
    }

    pub fn is_private(&self, topic: &str) -> bool {
        self.private.iter().any(|p| p.matches(topic))
    }

    /// Checks a stream request for `topics`. Public topics need nothing; when any topic is
    /// private the token must be valid and its `subscribe` claim must cover every private
    /// topic. Returns the token's `exp` (Unix seconds) when a token was checked.
    pub fn check(
        &self,
        topics: &[Box<str>],
        creds: &Credentials<'_>,
    ) -> Result<Option<u64>, Denied> {
        let private: Vec<&str> = topics
            .iter()
            .map(|t| &**t)
            .filter(|t| self.is_private(t))
            .collect();
        if private.is_empty() {
            return Ok(None);
        }
        let Some((key, alg)) = &self.key else {
            return Err(MISSING);
        };
        let token = self.token(creds)?;
        let mut validation = Validation::new(*alg);
        validation.leeway = self.leeway_s;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| Denied {
                status: 401,
                reason: describe(e.kind()),
            })?
            .claims;
        let patterns: Vec<Pattern> = claims.subscribe.iter().map(|p| Pattern::parse(p)).collect();
        if private
            .iter()
            .all(|t| patterns.iter().any(|p| p.matches(t)))
        {
            Ok(Some(claims.exp))
        } else {
            Err(Denied {
                status: 403,
                reason: "the token does not cover a requested topic",
            })
        }
    }

    /// The first credential present wins: an `Authorization` header that is not a valid
    /// bearer token is refused, never passed over for the cookie.
    fn token<'a>(&self, creds: &Credentials<'a>) -> Result<&'a str, Denied> {
        if let Some(header) = creds.authorization {
            // The scheme is case-insensitive (RFC 7235).
            let token = header
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim())
                .filter(|t| !t.is_empty());
            return token.ok_or(Denied {
                status: 401,
                reason: "Authorization must be a Bearer token",
            });
        }
        if let Some(token) = creds
            .cookie_header
            .and_then(|h| cookie_value(h, &self.cookie))
        {
            return Ok(token);
        }
        creds.query_token.filter(|t| !t.is_empty()).ok_or(MISSING)
    }
}

fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet",
        ErrorKind::InvalidSignature => "the token's signature is invalid",
        ErrorKind::InvalidAlgorithm => "the token's algorithm is not the configured one",
        ErrorKind::MissingRequiredClaim(_) => "the token has no exp claim",
        _ => "the token is malformed",
    }
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name && !v.is_empty()).then_some(v.trim_matches('"'))
    })
}

fn read_public_key(path: &str) -> Result<(DecodingKey, Algorithm), String> {
    let pem = std::fs::read(path).map_err(|e| format!("auth.public_key {path}: {e}"))?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((key, Algorithm::RS256));
    }
    DecodingKey::from_ec_pem(&pem)
        .map(|key| (key, Algorithm::ES256))
        .map_err(|_| format!("auth.public_key {path}: not an RSA or EC public key in PEM"))
}

/// Mints an HS256 token for `ssehub token`: `subscribe` patterns, expiring `ttl_s` from
/// `now_s`.
pub fn mint(secret: &str, subscribe: &[String], now_s: u64, ttl_s: u64) -> Result<String, String> {
    let claims = Claims {
        subscribe: subscribe.to_vec(),
        exp: now_s + ttl_s,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot mint a token: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn auth() -> Auth {
        let c = config::Auth {
            secret: "s3cret".into(),
            private: vec!["notifications:*".into(), "admin".into()],
            leeway: Duration::from_secs(30),
            ..config::Auth::default()
        };
        Auth::from_config(&c).unwrap()
    }

    fn topics(names: &[&str]) -> Vec<Box<str>> {
        names.iter().map(|n| (*n).into()).collect()
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    fn with_header(h: &str) -> Credentials<'_> {
        Credentials {
            authorization: Some(h),
            cookie_header: None,
            query_token: None,
        }
    }

    #[test]
    fn patterns() {
        assert!(Pattern::parse("a:*").matches("a:1"));
        assert!(Pattern::parse("a:*").matches("a:"));
        assert!(!Pattern::parse("a:*").matches("b:1"));
        assert!(Pattern::parse("a").matches("a"));
        assert!(!Pattern::parse("a").matches("ab"));
        assert!(Pattern::parse("*").matches("anything"));
    }

    #[test]
    fn public_topics_need_no_token() {
        let none = Credentials {
            authorization: None,
            cookie_header: None,
            query_token: None,
        };
        assert_eq!(auth().check(&topics(&["prices:AAPL"]), &none), Ok(None));
        assert_eq!(
            auth().check(&topics(&["notifications:1"]), &none),
            Err(MISSING)
        );
    }

    #[test]
    fn valid_token_covering_the_topics() {
        let token = mint("s3cret", &["notifications:42".into()], now(), 60).unwrap();
        let h = bearer(&token);
        let exp = auth().check(&topics(&["notifications:42", "public"]), &with_header(&h));
        assert!(
            matches!(exp, Ok(Some(e)) if e.abs_diff(now() + 60) <= 1),
            "{exp:?}"
        );
        let denied = auth()
            .check(&topics(&["notifications:43"]), &with_header(&h))
            .unwrap_err();
        assert_eq!(denied.status, 403);
    }

    #[test]
    fn bad_tokens_are_401_and_never_echoed() {
        let a = auth();
        let t = topics(&["admin"]);
        let wrong_key = mint("other", &["admin".into()], now(), 60).unwrap();
        let expired = mint("s3cret", &["admin".into()], now() - 100, 10).unwrap();
        let in_leeway = mint("s3cret", &["admin".into()], now() - 20, 10).unwrap();
        for token in [wrong_key.as_str(), expired.as_str(), "garbage", "a.b.c"] {
            let d = a.check(&t, &with_header(&bearer(token))).unwrap_err();
            assert_eq!(d.status, 401, "{token}");
            assert!(!d.reason.contains(token));
        }
        assert!(
            a.check(&t, &with_header(&bearer(&in_leeway))).is_ok(),
            "leeway honoured"
        );
        assert_eq!(
            a.check(&t, &with_header("Basic abc")).unwrap_err().status,
            401
        );
    }

    #[test]
    fn alg_none_is_refused() {
        // {"alg":"none"} . {"subscribe":["admin"],"exp":<future>} . (no signature)
        use std::fmt::Write;
        let b64 = |s: &str| {
            const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let bytes = s.as_bytes();
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let n = chunk.iter().fold(0u32, |acc, &b| acc << 8 | u32::from(b))
                    << (8 * (3 - chunk.len()));
                for i in 0..=chunk.len() {
                    let _ = out.write_char(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                }
            }
            out
        };
        let token = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&format!(
                r#"{{"subscribe":["admin"],"exp":{}}}"#,
                now() + 600
            ))
        );
        let d = auth()
            .check(&topics(&["admin"]), &with_header(&bearer(&token)))
            .unwrap_err();
        assert_eq!(d.status, 401);
    }

    #[test]
    fn token_sources_in_order() {
        let good = mint("s3cret", &["admin".into()], now(), 60).unwrap();
        let a = auth();
        let t = topics(&["admin"]);
        let cookie = format!("x=1; ssehub_token={good}");
        let from_cookie = Credentials {
            authorization: None,
            cookie_header: Some(&cookie),
            query_token: Some("bad"),
        };
        assert!(a.check(&t, &from_cookie).is_ok(), "cookie before query");
        let from_query = Credentials {
            authorization: None,
            cookie_header: Some("x=1"),
            query_token: Some(&good),
        };
        assert!(a.check(&t, &from_query).is_ok());
        let bad_header = Credentials {
            authorization: Some("Bearer nope"),
            cookie_header: Some(&cookie),
            query_token: None,
        };
        assert_eq!(
            a.check(&t, &bad_header).unwrap_err().status,
            401,
            "no fall-through to the cookie"
        );
    }

    #[test]
    fn config_errors() {
        let c = config::Auth {
            private: vec!["a".into()],
            ..config::Auth::default()
        };
        assert!(Auth::from_config(&c).is_err());
        let c = config::Auth {
            secret: "x".into(),
            public_key: "/nope".into(),
            ..config::Auth::default()
        };
        assert!(Auth::from_config(&c).is_err());
        let c = config::Auth {
            public_key: "/nonexistent.pem".into(),
            ..config::Auth::default()
        };
        assert!(Auth::from_config(&c).is_err());
    }
}
