//! Who may read a topic (protocol 4): private topic patterns, where a request's token comes
//! from, and JWT verification (HS256 with a secret, RS256/ES256/EdDSA with a public key; the
//! algorithm is pinned by the key, `none` never accepted; `crit` headers refused; `aud` and
//! `iss` checked when configured). Pure decisions: request data in, the token's expiry or a
//! rejection out; the clock is the caller's reading, passed in. Reasons never echo the token.

use crate::config;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Deserializer, Serialize};

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

/// The claims ssehub reads. Every field is optional here so that serde never refuses a
/// token for a missing claim: the validation's required-claim check (run after this
/// deserialization) then names the claim instead of "malformed".
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(default)]
    subscribe: Vec<String>,
    /// Topic patterns a publisher may publish to (minted by `ssehub token --publish`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    publish: Vec<String>,
    #[serde(
        default,
        deserialize_with = "numeric_date",
        skip_serializing_if = "Option::is_none"
    )]
    exp: Option<u64>,
    #[serde(
        default,
        deserialize_with = "lenient_numeric_date",
        skip_serializing_if = "Option::is_none"
    )]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<Audience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
}

/// `aud`: one string or an array of strings (RFC 7519 4.1.3).
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn holds(&self, wanted: &str) -> bool {
        match self {
            Audience::One(a) => a == wanted,
            Audience::Many(list) => list.iter().any(|a| a == wanted),
        }
    }
}

/// A NumericDate as the JWT validation reads it (a u64, or a finite non-negative float
/// below 2^64, rounded), so that both agree on every `exp` they accept; `null` is absent.
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => match numeric_value(&n) {
            Some(v) => Ok(Some(v)),
            None => Err(serde::de::Error::custom("exp is not a NumericDate")),
        },
    }
}

/// `nbf` by the same rules as `exp`, except that a value that is not a NumericDate is
/// absent rather than an error: jsonwebtoken checks only an `nbf` it can read (a token with
/// an unreadable one was accepted while the library compared the times), and so does `check`.
fn lenient_numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => Ok(numeric_value(&n)),
        _ => Ok(None),
    }
}

fn numeric_value(n: &serde_json::Number) -> Option<u64> {
    match (n.as_u64(), n.as_f64()) {
        (Some(v), _) => Some(v),
        (None, Some(f)) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
            Some(f.round() as u64)
        }
        _ => None,
    }
}

pub struct Auth {
    private: Vec<Pattern>,
    key: Option<(DecodingKey, Algorithm)>,
    cookie: String,
    leeway_s: u64,
    /// `auth.audience` / `auth.issuer`; None when empty (not checked).
    audience: Option<String>,
    issuer: Option<String>,
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
        // A day is far beyond any clock skew (`check` saturates `now_s - leeway` and
        // `now_s + leeway`, so a larger one would not wrap either).
        if c.leeway > MAX_LEEWAY {
            return Err("auth.leeway must be at most 1d".into());
        }
        Ok(Auth {
            private: c.private.iter().map(|p| Pattern::parse(p)).collect(),
            key,
            cookie: c.cookie.clone(),
            leeway_s: c.leeway.as_secs(),
            audience: expected_claim("auth.audience", &c.audience)?,
            issuer: expected_claim("auth.issuer", &c.issuer)?,
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
    /// topic. `exp` and `nbf` are compared with `now_s` (Unix seconds, the caller's clock
    /// reading) as jsonwebtoken 9 would compare them with its own. Returns the token's `exp`
    /// (Unix seconds) when a token was checked.
    pub fn check(
        &self,
        topics: &[Box<str>],
        creds: &Credentials<'_>,
        now_s: u64,
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
        let (claims, exp) = self.verify(token, key, *alg, now_s)?;
        let patterns: Vec<Pattern> = claims.subscribe.iter().map(|p| Pattern::parse(p)).collect();
        if private
            .iter()
            .all(|t| patterns.iter().any(|p| p.matches(t)))
        {
            Ok(Some(exp))
        } else {
            Err(Denied {
                status: 403,
                reason: "the token does not cover a requested topic",
            })
        }
    }

    /// Verifies `token`'s signature and its time, audience and issuer claims; returns its
    /// claims and `exp`.
    fn verify(
        &self,
        token: &str,
        key: &DecodingKey,
        alg: Algorithm,
        now_s: u64,
    ) -> Result<(Claims, u64), Denied> {
        if has_crit_header(token) {
            return Err(unauthorized(
                "the token has critical header extensions this server does not support",
            ));
        }
        let mut validation = Validation::new(alg);
        // The library would read the system clock: `exp` and `nbf` are compared below with
        // the caller's `now_s` instead. It still requires `exp`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        // `aud` and `iss` are checked below, against `auth.audience` / `auth.issuer`.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| unauthorized(describe(e.kind())))?
            .claims;
        // The required-claim check above makes `exp` present; refuse rather than panic.
        let exp = claims
            .exp
            .ok_or(unauthorized("the token has no exp claim"))?;
        // jsonwebtoken 9's comparisons (`exp < now - leeway`, `nbf > now + leeway`, in this
        // order), saturating where it would wrap.
        if exp < now_s.saturating_sub(self.leeway_s) {
            return Err(unauthorized(describe(&ErrorKind::ExpiredSignature)));
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now_s.saturating_add(self.leeway_s))
        {
            return Err(unauthorized(describe(&ErrorKind::ImmatureSignature)));
        }
        if let Some(wanted) = &self.audience {
            match &claims.aud {
                None => return Err(unauthorized("the token has no aud claim")),
                Some(aud) if !aud.holds(wanted) => {
                    return Err(unauthorized("the token's audience is not accepted"));
                }
                Some(_) => {}
            }
        }
        if let Some(wanted) = &self.issuer {
            match &claims.iss {
                None => return Err(unauthorized("the token has no iss claim")),
                Some(iss) if iss != wanted => {
                    return Err(unauthorized("the token's issuer is not accepted"));
                }
                Some(_) => {}
            }
        }
        Ok((claims, exp))
    }

    /// Checks a `POST /publish` request's publisher token (`Authorization: Bearer` only:
    /// publishers are programs, not browsers) and returns its `publish` patterns; every
    /// topic of an event must match one (`covers`). Without a configured key no token can
    /// be checked: `403`, saying what to configure.
    pub fn check_publisher(
        &self,
        authorization: Option<&str>,
        now_s: u64,
    ) -> Result<Vec<Pattern>, Denied> {
        let Some((key, alg)) = &self.key else {
            return Err(Denied {
                status: 403,
                reason: PUBLISH_NEEDS_KEY,
            });
        };
        let creds = Credentials {
            authorization,
            cookie_header: None,
            query_token: None,
        };
        let token = self.token(&creds).map_err(|d| match d.status {
            401 if authorization.is_none() => unauthorized("a publisher token is required"),
            _ => d,
        })?;
        let (claims, _) = self.verify(token, key, *alg, now_s)?;
        if claims.publish.is_empty() {
            return Err(Denied {
                status: 403,
                reason: "the token has no publish claim",
            });
        }
        Ok(claims.publish.iter().map(|p| Pattern::parse(p)).collect())
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

/// Milliseconds a stream may live on a token with `exp` (seconds, the client's number, up
/// to u64::MAX) at `now_ms` (Unix): until `exp + leeway`, 0 when already past. Saturating
/// throughout, so a far-future `exp` never wraps around into an expired token.
pub fn ms_left(exp_s: u64, leeway_s: u64, now_ms: u64) -> u64 {
    exp_s
        .saturating_add(leeway_s)
        .saturating_mul(1000)
        .saturating_sub(now_ms)
}

/// `POST /publish` with no key to check publisher tokens with.
pub const PUBLISH_NEEDS_KEY: &str = "publishing over HTTP needs publisher tokens \
     (auth.secret or auth.public_key) or, on the admin listener, publish.admin_open = true";

/// Whether `patterns` cover `topic` (a publisher token's `publish` claim).
pub fn covers(patterns: &[Pattern], topic: &str) -> bool {
    patterns.iter().any(|p| p.matches(topic))
}

const MAX_LEEWAY: std::time::Duration = std::time::Duration::from_secs(86_400);

const fn unauthorized(reason: &'static str) -> Denied {
    Denied {
        status: 401,
        reason,
    }
}

/// `auth.audience` / `auth.issuer`: None when empty (not checked). A value with leading or
/// trailing whitespace could never equal a claim a sane issuer writes: refused as a typo.
fn expected_claim(key: &str, value: &str) -> Result<Option<String>, String> {
    if value.trim() != value {
        return Err(format!("{key} has leading or trailing whitespace"));
    }
    Ok((!value.is_empty()).then(|| value.to_owned()))
}

/// Whether the token's JOSE header has a `crit` member. ssehub understands no JWS
/// extension, and RFC 7515 4.1.11 says a recipient must then refuse the token; the
/// `jsonwebtoken` header type drops `crit`, so the header segment is read here. A header
/// that does not decode is left to the JWT library ("malformed").
fn has_crit_header(token: &str) -> bool {
    let Some((header, _)) = token.split_once('.') else {
        return false;
    };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&json)
        .is_ok_and(|h| h.contains_key("crit"))
}

fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet",
        ErrorKind::InvalidSignature => "the token's signature is invalid",
        ErrorKind::InvalidAlgorithm => "the token's algorithm is not the configured one",
        // Only `exp` is required of the library; `aud`/`iss` are checked by `check`.
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
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok((key, Algorithm::ES256));
    }
    DecodingKey::from_ed_pem(&pem)
        .map(|key| (key, Algorithm::EdDSA))
        .map_err(|_| {
            format!("auth.public_key {path}: not an RSA, EC (P-256) or Ed25519 public key in PEM")
        })
}

/// What `ssehub token` puts in a token besides its expiry.
#[derive(Debug, Default, Clone, Copy)]
pub struct MintClaims<'a> {
    pub subscribe: &'a [String],
    /// The `publish` claim; empty: left out.
    pub publish: &'a [String],
    /// `aud` / `iss`; empty: the claim is left out.
    pub audience: &'a str,
    pub issuer: &'a str,
}

/// Mints an HS256 token for `ssehub token`, expiring `ttl_s` from `now_s` (saturating: a
/// huge `--ttl` gives a token that never expires rather than one that wrapped around).
pub fn mint(secret: &str, what: MintClaims<'_>, now_s: u64, ttl_s: u64) -> Result<String, String> {
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let claims = Claims {
        subscribe: what.subscribe.to_vec(),
        publish: what.publish.to_vec(),
        exp: Some(now_s.saturating_add(ttl_s)),
        nbf: None,
        aud: non_empty(what.audience).map(Audience::One),
        iss: non_empty(what.issuer),
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

    fn mint_for(secret: &str, subscribe: &[String], now_s: u64, ttl_s: u64) -> String {
        let what = MintClaims {
            subscribe,
            ..MintClaims::default()
        };
        mint(secret, what, now_s, ttl_s).unwrap()
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
        assert_eq!(
            auth().check(&topics(&["prices:AAPL"]), &none, now()),
            Ok(None)
        );
        assert_eq!(
            auth().check(&topics(&["notifications:1"]), &none, now()),
            Err(MISSING)
        );
    }

    #[test]
    fn valid_token_covering_the_topics() {
        let token = mint_for("s3cret", &["notifications:42".into()], now(), 60);
        let h = bearer(&token);
        let exp = auth().check(
            &topics(&["notifications:42", "public"]),
            &with_header(&h),
            now(),
        );
        assert!(
            matches!(exp, Ok(Some(e)) if e.abs_diff(now() + 60) <= 1),
            "{exp:?}"
        );
        let denied = auth()
            .check(&topics(&["notifications:43"]), &with_header(&h), now())
            .unwrap_err();
        assert_eq!(denied.status, 403);
    }

    #[test]
    fn bad_tokens_are_401_and_never_echoed() {
        let a = auth();
        let t = topics(&["admin"]);
        let wrong_key = mint_for("other", &["admin".into()], now(), 60);
        let expired = mint_for("s3cret", &["admin".into()], now() - 100, 10);
        let in_leeway = mint_for("s3cret", &["admin".into()], now() - 20, 10);
        for token in [wrong_key.as_str(), expired.as_str(), "garbage", "a.b.c"] {
            let d = a
                .check(&t, &with_header(&bearer(token)), now())
                .unwrap_err();
            assert_eq!(d.status, 401, "{token}");
            assert!(!d.reason.contains(token));
        }
        assert!(
            a.check(&t, &with_header(&bearer(&in_leeway)), now())
                .is_ok(),
            "leeway honoured"
        );
        assert_eq!(
            a.check(&t, &with_header("Basic abc"), now())
                .unwrap_err()
                .status,
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
            .check(&topics(&["admin"]), &with_header(&bearer(&token)), now())
            .unwrap_err();
        assert_eq!(d.status, 401);
    }

    #[test]
    fn token_sources_in_order() {
        let good = mint_for("s3cret", &["admin".into()], now(), 60);
        let a = auth();
        let t = topics(&["admin"]);
        let cookie = format!("x=1; ssehub_token={good}");
        let from_cookie = Credentials {
            authorization: None,
            cookie_header: Some(&cookie),
            query_token: Some("bad"),
        };
        assert!(
            a.check(&t, &from_cookie, now()).is_ok(),
            "cookie before query"
        );
        let from_query = Credentials {
            authorization: None,
            cookie_header: Some("x=1"),
            query_token: Some(&good),
        };
        assert!(a.check(&t, &from_query, now()).is_ok());
        let bad_header = Credentials {
            authorization: Some("Bearer nope"),
            cookie_header: Some(&cookie),
            query_token: None,
        };
        assert_eq!(
            a.check(&t, &bad_header, now()).unwrap_err().status,
            401,
            "no fall-through to the cookie"
        );
    }

    /// `base64url(header).base64url(claims).signature`, HS256 with `secret`, whatever the
    /// header and claims say (the library's `Header` cannot carry `crit`).
    fn signed(secret: &str, header: &str, claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let input = format!("{}.{}", b64(header), b64(claims));
        let key = EncodingKey::from_secret(secret.as_bytes());
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{input}.{sig}")
    }

    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    fn check_claims(a: &Auth, claims: &str) -> Result<Option<u64>, Denied> {
        let token = signed("s3cret", HS256, claims);
        a.check(&topics(&["admin"]), &with_header(&bearer(&token)), now())
    }

    fn reason(r: Result<Option<u64>, Denied>) -> &'static str {
        match r {
            Ok(exp) => panic!("accepted, exp {exp:?}"),
            Err(d) => {
                assert_eq!(d.status, 401, "{d:?}");
                d.reason
            }
        }
    }

    #[test]
    fn a_token_without_exp_is_told_so() {
        let a = auth();
        let no_exp = "the token has no exp claim";
        assert_eq!(
            reason(check_claims(&a, r#"{"subscribe":["admin"]}"#)),
            no_exp
        );
        assert_eq!(
            reason(check_claims(&a, r#"{"subscribe":["admin"],"exp":null}"#)),
            no_exp
        );
        assert_eq!(reason(check_claims(&a, r#"{"exp":null}"#)), no_exp);
        assert_eq!(
            reason(check_claims(&a, r#"{"subscribe":["admin"],"exp":"soon"}"#)),
            "the token is malformed"
        );
        // A float NumericDate is read as the validation reads it (rounded).
        let float = format!(r#"{{"subscribe":["admin"],"exp":{}.4}}"#, now() + 600);
        assert_eq!(check_claims(&a, &float), Ok(Some(now() + 600)));
    }

    /// The clock is the caller's: `exp` and `nbf` are compared with `now_s` alone, by
    /// jsonwebtoken 9's rules (`exp < now - leeway` expired, `nbf > now + leeway` immature;
    /// the leeway here is 30 s).
    #[test]
    fn the_clock_is_the_parameter() {
        let a = auth();
        let at = |claims: &str, now_s: u64| {
            let token = signed("s3cret", HS256, claims);
            a.check(&topics(&["admin"]), &with_header(&bearer(&token)), now_s)
        };
        let expired = Err(unauthorized(describe(&ErrorKind::ExpiredSignature)));
        let immature = Err(unauthorized(describe(&ErrorKind::ImmatureSignature)));
        let exp_1000 = r#"{"subscribe":["admin"],"exp":1000}"#;
        assert_eq!(at(exp_1000, 900), Ok(Some(1000)));
        assert_eq!(
            at(exp_1000, 1030),
            Ok(Some(1000)),
            "exp + leeway is still in"
        );
        assert_eq!(at(exp_1000, 1031), expired);
        assert_eq!(at(exp_1000, 2000), expired);
        // A clock before the leeway: `now - leeway` saturates instead of wrapping.
        assert_eq!(at(exp_1000, 0), Ok(Some(1000)));
        assert_eq!(at(r#"{"subscribe":["admin"],"exp":0}"#, 30), Ok(Some(0)));
        // `nbf` in the future is refused; within the leeway it is accepted.
        let nbf_500 = r#"{"subscribe":["admin"],"exp":1000,"nbf":500}"#;
        assert_eq!(at(nbf_500, 100), immature);
        assert_eq!(at(nbf_500, 469), immature);
        assert_eq!(at(nbf_500, 470), Ok(Some(1000)), "nbf - leeway is in");
        assert_eq!(at(nbf_500, 500), Ok(Some(1000)));
        assert_eq!(at(nbf_500, 900), Ok(Some(1000)));
        // `exp` is checked first, as the library did.
        let both = r#"{"subscribe":["admin"],"exp":1000,"nbf":5000}"#;
        assert_eq!(at(both, 2000), expired);
        assert_eq!(at(both, 900), immature);
        // `nbf` is read as `exp` is (a float is rounded; null is absent), and one that is not
        // a NumericDate is not checked, as the library left it.
        let float = r#"{"subscribe":["admin"],"exp":1000,"nbf":500.4}"#;
        assert_eq!(at(float, 469), immature);
        assert_eq!(at(float, 470), Ok(Some(1000)));
        for nbf in ["null", r#""later""#, "-1", "1e30"] {
            let claims = format!(r#"{{"subscribe":["admin"],"exp":1000,"nbf":{nbf}}}"#);
            assert_eq!(at(&claims, 0), Ok(Some(1000)), "{claims}");
        }
        // (An array is beyond the library's own claim reader: malformed, as it always was.)
        let array = r#"{"subscribe":["admin"],"exp":1000,"nbf":[5000]}"#;
        assert_eq!(reason(at(array, 0)), "the token is malformed");
        // The system clock plays no part: a token minted for the far past verifies then.
        let token = mint_for("s3cret", &["admin".into()], 1000, 60);
        let t = topics(&["admin"]);
        assert_eq!(
            a.check(&t, &with_header(&bearer(&token)), 1050),
            Ok(Some(1060))
        );
        assert_eq!(a.check(&t, &with_header(&bearer(&token)), 1091), expired);
    }

    #[test]
    fn far_future_exp_saturates_instead_of_wrapping() {
        let a = auth();
        let max = format!(r#"{{"subscribe":["admin"],"exp":{}}}"#, u64::MAX);
        assert_eq!(check_claims(&a, &max), Ok(Some(u64::MAX)));
        let big_float = r#"{"subscribe":["admin"],"exp":1.8e19}"#;
        assert_eq!(
            check_claims(&a, big_float),
            Ok(Some(18_000_000_000_000_000_000))
        );
        let too_big = r#"{"subscribe":["admin"],"exp":1e30}"#;
        assert_eq!(reason(check_claims(&a, too_big)), "the token is malformed");
        assert_eq!(
            ms_left(u64::MAX, 30, 1_700_000_000_000),
            u64::MAX - 1_700_000_000_000
        );
        assert_eq!(ms_left(u64::MAX - 1, u64::MAX, 0), u64::MAX);
        assert_eq!(ms_left(100, 30, 130_000), 0);
        assert_eq!(ms_left(100, 30, 129_000), 1000);
        // `ssehub token --ttl` with an absurd lifetime: no overflow either.
        let what = MintClaims {
            subscribe: &["admin".into()],
            ..MintClaims::default()
        };
        let token = mint("s3cret", what, now(), u64::MAX).unwrap();
        assert_eq!(
            a.check(&topics(&["admin"]), &with_header(&bearer(&token)), now()),
            Ok(Some(u64::MAX))
        );
    }

    /// `ssehub token --publish`: the patterns land in a `publish` claim, left out when none.
    #[test]
    fn minted_publish_claim() {
        let decode = |token: &str| {
            let mut v = Validation::new(Algorithm::HS256);
            v.validate_aud = false;
            jsonwebtoken::decode::<serde_json::Value>(
                token,
                &DecodingKey::from_secret(b"s3cret"),
                &v,
            )
            .unwrap()
            .claims
        };
        let publish = ["a".to_string(), "b*".to_string()];
        let what = MintClaims {
            publish: &publish,
            ..MintClaims::default()
        };
        let claims = decode(&mint("s3cret", what, now(), 60).unwrap());
        assert_eq!(claims["publish"], serde_json::json!(["a", "b*"]));
        let both = MintClaims {
            subscribe: &["s".into()],
            publish: &["p:*".into()],
            ..MintClaims::default()
        };
        let claims = decode(&mint("s3cret", both, now(), 60).unwrap());
        assert_eq!(claims["subscribe"], serde_json::json!(["s"]));
        assert_eq!(claims["publish"], serde_json::json!(["p:*"]));
        let plain = decode(&mint_for("s3cret", &["s".into()], now(), 60));
        assert!(plain.get("publish").is_none(), "{plain}");
    }

    fn auth_with(audience: &str, issuer: &str) -> Auth {
        let c = config::Auth {
            secret: "s3cret".into(),
            private: vec!["admin".into()],
            audience: audience.into(),
            issuer: issuer.into(),
            ..config::Auth::default()
        };
        Auth::from_config(&c).unwrap()
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let exp = now() + 600;
        let with = |extra: &str| format!(r#"{{"subscribe":["admin"],"exp":{exp}{extra}}}"#);
        let a = auth_with("https://events.example", "https://login.example");
        let aud_iss = r#","iss":"https://login.example","aud""#;
        for aud in [
            r#""https://events.example""#,
            r#"["x","https://events.example"]"#,
        ] {
            let claims = with(&format!("{aud_iss}:{aud}"));
            assert_eq!(check_claims(&a, &claims), Ok(Some(exp)), "{claims}");
        }
        let iss = r#","iss":"https://login.example""#;
        let aud = r#","aud":"https://events.example""#;
        for (extra, why) in [
            (iss.to_string(), "the token has no aud claim"),
            (format!(r#"{iss},"aud":null"#), "the token has no aud claim"),
            (
                format!(r#"{iss},"aud":"https://other""#),
                "the token's audience is not accepted",
            ),
            (
                format!(r#"{iss},"aud":[]"#),
                "the token's audience is not accepted",
            ),
            (
                format!(r#"{iss},"aud":["https://EVENTS.example"]"#),
                "the token's audience is not accepted",
            ),
            (format!(r#"{iss},"aud":7"#), "the token is malformed"),
            (aud.to_string(), "the token has no iss claim"),
            (
                format!(r#"{aud},"iss":"https://login.example/""#),
                "the token's issuer is not accepted",
            ),
            (
                format!(r#"{aud},"iss":["https://login.example"]"#),
                "the token is malformed",
            ),
        ] {
            let claims = with(&extra);
            let r = check_claims(&a, &claims);
            assert_eq!(reason(r), why, "{claims}");
            assert!(!why.contains("example"), "never echoed");
        }
        // Not configured: not checked, whatever the token says.
        let open = auth_with("", "");
        let claims = with(r#","aud":"anything","iss":"anyone""#);
        assert_eq!(check_claims(&open, &claims), Ok(Some(exp)));
        // Only the audience configured: `iss` is free.
        let aud_only = auth_with("api", "");
        assert_eq!(
            check_claims(&aud_only, &with(r#","aud":"api""#)),
            Ok(Some(exp))
        );
        // Tokens from `ssehub token --audience --issuer` pass.
        let what = MintClaims {
            subscribe: &["admin".into()],
            audience: "https://events.example",
            issuer: "https://login.example",
            ..MintClaims::default()
        };
        let token = mint("s3cret", what, now(), 60).unwrap();
        assert!(
            a.check(&topics(&["admin"]), &with_header(&bearer(&token)), now())
                .is_ok()
        );
        let plain = mint_for("s3cret", &["admin".into()], now(), 60);
        assert_eq!(
            a.check(&topics(&["admin"]), &with_header(&bearer(&plain)), now()),
            Err(unauthorized("the token has no aud claim"))
        );
    }

    #[test]
    fn crit_headers_are_refused() {
        let a = auth();
        let claims = format!(r#"{{"subscribe":["admin"],"exp":{}}}"#, now() + 600);
        let crit = "the token has critical header extensions this server does not support";
        for header in [
            r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
            r#"{"alg":"HS256","typ":"JWT","crit":["b64"],"b64":false}"#,
            r#"{"alg":"HS256","crit":[]}"#,
            r#"{"crit":null,"alg":"HS256"}"#,
        ] {
            let token = signed("s3cret", header, &claims);
            let d = a.check(&topics(&["admin"]), &with_header(&bearer(&token)), now());
            assert_eq!(d, Err(unauthorized(crit)), "{header}");
        }
        // Without `crit` the same token is fine; a header that does not decode is malformed.
        let token = signed("s3cret", r#"{"alg":"HS256","kid":"crit"}"#, &claims);
        assert!(
            a.check(&topics(&["admin"]), &with_header(&bearer(&token)), now())
                .is_ok()
        );
        assert!(!has_crit_header("%%%.x.y"));
        assert!(!has_crit_header("no-dots-at-all"));
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
        let c = config::Auth {
            secret: "x".into(),
            leeway: Duration::from_secs(86_401),
            ..config::Auth::default()
        };
        assert_eq!(
            Auth::from_config(&c).err().as_deref(),
            Some("auth.leeway must be at most 1d")
        );
        let c = config::Auth {
            leeway: MAX_LEEWAY,
            ..c
        };
        assert!(Auth::from_config(&c).is_ok());
        for (audience, issuer) in [(" api", ""), ("", "https://i\n")] {
            let c = config::Auth {
                secret: "x".into(),
                audience: audience.into(),
                issuer: issuer.into(),
                ..config::Auth::default()
            };
            assert!(Auth::from_config(&c).is_err(), "{audience:?} {issuer:?}");
        }
    }
}
