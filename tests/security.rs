//! protocol 4 over real sockets against the real binary: private topics and their tokens (every
//! source, every refusal, `nbf`, `alg: none`, RS256/ES256 with `auth.public_key`, expiry
//! closing a live stream), and the Origin policy with its CORS headers and preflight.
//!
//! Valid HS256 tokens are minted by `ssehub token`; tokens the CLI cannot make (expired,
//! `nbf`, no `exp`, `alg: none`, RS256, ES256) are signed here with the `openssl` command,
//! independently of the server's JWT library.
mod common;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECRET: &str = "test-secret-0123456789";
const PRIVATE: &str = "private = [\"notifications:*\", \"admin\"]";
const ALLOWED: &str = "http://allowed.test";
const EVIL: &str = "http://evil.test";

// ---- fixtures ------------------------------------------------------------------------------

/// A server with HS256 auth on `notifications:*` and `admin`, plus `extra` `[auth]` lines.
fn auth_server(extra: &str) -> Server {
    let auth = format!("secret = {SECRET:?}\n{PRIVATE}\n{extra}");
    Server::start_with(&[("auth", &auth)])
}

/// A server with HS256 auth and the Origin policy `[cors] allowed_origins = [ALLOWED]`.
fn cors_server(credentials: bool) -> Server {
    let auth = format!("secret = {SECRET:?}\n{PRIVATE}");
    let cors = format!("allowed_origins = [{ALLOWED:?}]\nallow_credentials = {credentials}");
    Server::start_with(&[("auth", &auth), ("cors", &cors)])
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Mints a token with the real `ssehub token` command.
fn mint(secret: &str, patterns: &[&str], ttl: &str) -> String {
    let mut args = vec!["token".to_string(), "--secret".into(), secret.into()];
    for p in patterns {
        args.push("--subscribe".into());
        args.push((*p).into());
    }
    args.push("--ttl".into());
    args.push(ttl.into());
    let out = run_bin(&args, b"", Duration::from_secs(10));
    assert_eq!(out.code, Some(0), "ssehub token failed: {}", out.stderr);
    let token = out.stdout.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token:?}");
    token
}

// ---- a tiny JWT signer (base64url + openssl) -----------------------------------------------

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding.
fn b64url(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn b64url_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = B64.iter().position(|&b| b == c).expect("base64url") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// The `exp` claim of a token (read back from its payload).
fn exp_of(token: &str) -> u64 {
    let payload = token.split('.').nth(1).expect("payload");
    let claims: serde_json::Value =
        serde_json::from_slice(&b64url_decode(payload)).expect("JSON claims");
    claims["exp"].as_u64().expect("exp")
}

/// Runs `openssl ARGS` with `input` on stdin; its stdout.
fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write to openssl");
    let out = child.wait_with_output().expect("openssl output");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

enum Sign<'a> {
    /// HMAC-SHA256 with this key.
    Hs256(&'a [u8]),
    /// RSASSA-PKCS1-v1_5 SHA-256 with this PEM private key.
    Rs256(&'a Path),
    /// ECDSA P-256 SHA-256 with this PEM private key (raw r||s, as JWS wants).
    Es256(&'a Path),
    /// Ed25519 (JWS `EdDSA`) with this PEM private key.
    EdDsa(&'a Path),
    /// No signature at all.
    Unsigned,
}

/// `base64url(header).base64url(claims).base64url(signature)`.
fn jwt(header: &str, claims: &str, sign: Sign<'_>) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.as_bytes()),
        b64url(claims.as_bytes())
    );
    let sig = match sign {
        Sign::Hs256(key) => {
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            let macopt = format!("hexkey:{hex}");
            openssl(
                &[
                    "dgst", "-sha256", "-mac", "HMAC", "-macopt", &macopt, "-binary",
                ],
                input.as_bytes(),
            )
        }
        Sign::Rs256(key) => openssl(
            &["dgst", "-sha256", "-binary", "-sign", path_str(key)],
            input.as_bytes(),
        ),
        Sign::Es256(key) => ecdsa_der_to_raw(&openssl(
            &["dgst", "-sha256", "-binary", "-sign", path_str(key)],
            input.as_bytes(),
        )),
        Sign::EdDsa(key) => {
            // Ed25519 signs the message itself (no digest first), in one shot: openssl
            // wants it in a file.
            let message = key.with_extension("msg");
            std::fs::write(&message, &input).expect("write the signing input");
            let args = ["pkeyutl", "-sign", "-rawin", "-inkey", path_str(key), "-in"];
            let mut args = args.to_vec();
            args.push(path_str(&message));
            openssl(&args, b"")
        }
        Sign::Unsigned => Vec::new(),
    };
    format!("{input}.{}", b64url(&sig))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// DER `SEQUENCE { INTEGER r, INTEGER s }` → the 64-byte `r || s` of JWS ES256.
fn ecdsa_der_to_raw(der: &[u8]) -> Vec<u8> {
    assert_eq!(der[0], 0x30, "not a DER sequence");
    assert!(der[1] < 0x80, "P-256 signatures use a short length");
    let mut i = 2;
    let mut out = Vec::with_capacity(64);
    for _ in 0..2 {
        assert_eq!(der[i], 0x02, "not a DER integer");
        let len = der[i + 1] as usize;
        let mut int = &der[i + 2..i + 2 + len];
        while int.len() > 32 && int[0] == 0 {
            int = &int[1..];
        }
        assert!(int.len() <= 32, "integer too long for P-256");
        out.resize(out.len() + 32 - int.len(), 0);
        out.extend_from_slice(int);
        i += 2 + len;
    }
    out
}

const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
const RS256: &str = r#"{"alg":"RS256","typ":"JWT"}"#;
const ES256: &str = r#"{"alg":"ES256","typ":"JWT"}"#;
const EDDSA: &str = r#"{"alg":"EdDSA","typ":"JWT"}"#;

fn claims(subscribe: &[&str], exp: Option<u64>, nbf: Option<u64>) -> String {
    let list: Vec<String> = subscribe.iter().map(|s| format!("{s:?}")).collect();
    let mut c = format!(r#"{{"subscribe":[{}]"#, list.join(","));
    if let Some(exp) = exp {
        c.push_str(&format!(r#","exp":{exp}"#));
    }
    if let Some(nbf) = nbf {
        c.push_str(&format!(r#","nbf":{nbf}"#));
    }
    c.push('}');
    c
}

/// A key pair made with the `openssl` command: (private PEM, public PEM).
fn key_pair(dir: &Path, kind: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{kind}-private.pem"));
    let public = dir.join(format!("{kind}-public.pem"));
    let opt = match kind {
        "rsa" => ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        "ec" => ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "ed25519" => ["-algorithm", "ED25519", "", ""],
        _ => unreachable!(),
    };
    let mut args = vec!["genpkey"];
    args.extend(opt.into_iter().filter(|a| !a.is_empty()));
    args.extend(["-out", path_str(&private)]);
    openssl(&args, b"");
    openssl(
        &[
            "pkey",
            "-in",
            path_str(&private),
            "-pubout",
            "-out",
            path_str(&public),
        ],
        b"",
    );
    (private, public)
}

// ---- HTTP helpers ---------------------------------------------------------------------------

/// Opens a stream that must be served: `200`, then the `retry:` line. Returns the head.
fn open_stream(server: &Server, query: &str, headers: &str) -> (Client, String) {
    let (mut c, head) = server.request_stream(query, headers);
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\n"),
        "expected a stream for ?{query} with {headers:?}, got {head:?}"
    );
    let retry = c.read_line();
    assert!(retry.starts_with("retry: "), "{retry:?}");
    (c, head)
}

/// Publishes to `topic` and checks the stream receives that event.
fn receives(server: &Server, c: &mut Client, topic: &str) {
    let id = server.producer().publish(topic, "for your eyes only");
    let block = c.read_event();
    assert_eq!(event_id(&block), Some(id), "{block:?}");
    assert_eq!(event_data(&block), "for your eyes only");
}

/// Sends a stream request that must be refused with `status`; checks the answer is one plain
/// line that echoes none of `secrets` (nor any long part of them). Returns (head, reason).
fn refused(
    server: &Server,
    query: &str,
    headers: &str,
    status: u16,
    secrets: &[&str],
) -> (String, String) {
    let mut c = Client::connect(server.addr);
    c.send(&format!(
        "GET /events?{query} HTTP/1.1\r\nHost: test\r\n{headers}\r\n"
    ));
    let (head, reason) = read_plain(&mut c, status);
    for secret in secrets {
        let parts = std::iter::once(*secret).chain(secret.split('.'));
        for part in parts.filter(|p| p.len() >= 8) {
            assert!(
                !head.contains(part) && !reason.contains(part),
                "answer echoes the token: {head:?} {reason:?}"
            );
        }
    }
    if status == 401 {
        let www = header_of(&head, "www-authenticate").expect("401 without WWW-Authenticate");
        assert!(www.starts_with("Bearer"), "{www:?}");
    }
    (head, reason)
}

// ---- tokens -------------------------------------------------------------------------------

#[test]
fn public_topic_needs_no_token() {
    let server = auth_server("");
    let (mut c, _) = open_stream(&server, "topic=prices:AAPL", "");
    receives(&server, &mut c, "prices:AAPL");
    // Tokens are checked only when a private topic is requested: junk is ignored here.
    let (mut c, _) = open_stream(
        &server,
        "topic=prices:AAPL&token=junk",
        "Authorization: Bearer junk\r\nCookie: ssehub_token=junk\r\n",
    );
    receives(&server, &mut c, "prices:AAPL");
}

#[test]
fn private_topic_without_token_is_401_with_bearer_challenge() {
    let server = auth_server("");
    let (_, reason) = refused(&server, "topic=notifications:42", "", 401, &[]);
    assert!(reason.contains("token"), "{reason:?}");
    // An exact private name, and a private topic among public ones.
    refused(&server, "topic=admin", "", 401, &[]);
    refused(
        &server,
        "topic=prices:AAPL&topic=notifications:1",
        "",
        401,
        &[],
    );
    // Empty credentials are no credentials.
    refused(
        &server,
        "topic=notifications:42&token=",
        "Cookie: ssehub_token=\r\n",
        401,
        &[],
    );
    // HEAD runs the same checks.
    let mut c = Client::connect(server.addr);
    c.send("HEAD /events?topic=notifications:42 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 401 "), "{head:?}");
    assert!(header_of(&head, "www-authenticate").is_some(), "{head:?}");
    let rest = c.read_to_close(Duration::from_secs(5)).expect("closed");
    assert!(rest.is_empty(), "HEAD answer with a body: {rest:?}");
}

#[test]
fn valid_token_from_each_source_opens_a_stream_that_receives_events() {
    let server = auth_server("");
    let token = mint(SECRET, &["notifications:*"], "1h");
    let sources = [
        (
            "topic=notifications:42",
            format!("Authorization: Bearer {token}\r\n"),
        ),
        (
            "topic=notifications:42",
            format!("Cookie: ssehub_token={token}\r\n"),
        ),
        (
            "topic=notifications:42",
            format!("Cookie: theme=dark; ssehub_token={token}; lang=en\r\n"),
        ),
        (
            &*format!("topic=notifications:42&token={token}"),
            String::new(),
        ),
    ];
    for (query, headers) in &sources {
        let (mut c, _) = open_stream(&server, query, headers);
        receives(&server, &mut c, "notifications:42");
    }
    // A private topic and a public one on one stream.
    let (mut c, _) = open_stream(
        &server,
        "topic=notifications:7&topic=prices:AAPL",
        &format!("Authorization: Bearer {token}\r\n"),
    );
    receives(&server, &mut c, "prices:AAPL");
    receives(&server, &mut c, "notifications:7");
}

#[test]
fn configured_cookie_name_is_the_one_read() {
    let server = auth_server("cookie = \"sess\"");
    let token = mint(SECRET, &["notifications:*"], "1h");
    let (mut c, _) = open_stream(
        &server,
        "topic=notifications:42",
        &format!("Cookie: a=1; sess={token}\r\n"),
    );
    receives(&server, &mut c, "notifications:42");
    refused(
        &server,
        "topic=notifications:42",
        &format!("Cookie: ssehub_token={token}\r\n"),
        401,
        &[&token],
    );
}

#[test]
fn the_first_credential_present_is_used_without_fall_through() {
    let server = auth_server("");
    let good = mint(SECRET, &["notifications:*"], "1h");
    let bad = mint("some-other-secret", &["notifications:*"], "1h");
    let cookie = format!("Cookie: ssehub_token={good}\r\n");
    // An invalid header token is 401 even with a valid cookie or query token.
    for header in [
        format!("Authorization: Bearer {bad}\r\n"),
        "Authorization: Bearer not.a.jwt\r\n".to_string(),
        "Authorization: Basic dXNlcjpwYXNz\r\n".to_string(),
        "Authorization: Bearer \r\n".to_string(),
    ] {
        refused(
            &server,
            &format!("topic=notifications:42&token={good}"),
            &format!("{header}{cookie}"),
            401,
            &[&good, &bad],
        );
    }
    // An invalid cookie token is 401 even with a valid query token.
    refused(
        &server,
        &format!("topic=notifications:42&token={good}"),
        &format!("Cookie: ssehub_token={bad}\r\n"),
        401,
        &[&good, &bad],
    );
    // A valid header token wins over junk in the cookie and the query.
    let (mut c, _) = open_stream(
        &server,
        "topic=notifications:42&token=junk",
        &format!("Authorization: Bearer {good}\r\nCookie: ssehub_token=junk\r\n"),
    );
    receives(&server, &mut c, "notifications:42");
}

/// The auth-scheme is case-insensitive (RFC 7235 section 2.1): `BEARER` is `Bearer`.
#[test]
fn bearer_scheme_is_case_insensitive() {
    let server = auth_server("");
    let token = mint(SECRET, &["notifications:*"], "1h");
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let (mut c, _) = open_stream(
            &server,
            "topic=notifications:42",
            &format!("Authorization: {scheme} {token}\r\n"),
        );
        receives(&server, &mut c, "notifications:42");
    }
}

#[test]
fn expired_token_is_401_but_leeway_is_honoured() {
    let server = auth_server("");
    let key = SECRET.as_bytes();
    let expired = jwt(
        HS256,
        &claims(&["notifications:*"], Some(now_s() - 3600), None),
        Sign::Hs256(key),
    );
    let (_, reason) = refused(
        &server,
        "topic=notifications:42",
        &format!("Authorization: Bearer {expired}\r\n"),
        401,
        &[&expired],
    );
    assert!(reason.contains("expired"), "{reason:?}");
    // Expired 5 s ago: within the default 30 s leeway.
    let recent = jwt(
        HS256,
        &claims(&["notifications:*"], Some(now_s() - 5), None),
        Sign::Hs256(key),
    );
    let (mut c, _) = open_stream(
        &server,
        "topic=notifications:42",
        &format!("Authorization: Bearer {recent}\r\n"),
    );
    receives(&server, &mut c, "notifications:42");
}

#[test]
fn token_signed_with_another_secret_is_401() {
    let server = auth_server("");
    let token = mint("not-the-configured-secret", &["notifications:*"], "1h");
    for (query, headers) in [
        (
            "topic=notifications:42".to_string(),
            format!("Authorization: Bearer {token}\r\n"),
        ),
        (
            "topic=notifications:42".to_string(),
            format!("Cookie: ssehub_token={token}\r\n"),
        ),
        (
            format!("topic=notifications:42&token={token}"),
            String::new(),
        ),
    ] {
        let (_, reason) = refused(&server, &query, &headers, 401, &[&token]);
        assert!(reason.contains("signature"), "{reason:?}");
    }
    // A tampered payload under a genuine signature.
    let good = mint(SECRET, &["notifications:1"], "1h");
    let parts: Vec<&str> = good.split('.').collect();
    let widened = b64url(claims(&["notifications:*"], Some(now_s() + 3600), None).as_bytes());
    let forged = format!("{}.{widened}.{}", parts[0], parts[2]);
    refused(
        &server,
        "topic=notifications:42",
        &format!("Authorization: Bearer {forged}\r\n"),
        401,
        &[&forged],
    );
}

#[test]
fn token_not_covering_a_requested_topic_is_403() {
    let server = auth_server("");
    let one = mint(SECRET, &["notifications:1"], "1h");
    let (head, reason) = refused(
        &server,
        "topic=notifications:2",
        &format!("Authorization: Bearer {one}\r\n"),
        403,
        &[&one],
    );
    assert!(!reason.is_empty(), "{head:?}");
    // Covering one private topic of two is not enough.
    let all_notifications = mint(SECRET, &["notifications:*"], "1h");
    refused(
        &server,
        "topic=notifications:1&topic=admin",
        &format!("Authorization: Bearer {all_notifications}\r\n"),
        403,
        &[&all_notifications],
    );
    // A token that lists no pattern covers nothing.
    let empty = jwt(
        HS256,
        &claims(&[], Some(now_s() + 3600), None),
        Sign::Hs256(SECRET.as_bytes()),
    );
    refused(
        &server,
        "topic=admin",
        &format!("Authorization: Bearer {empty}\r\n"),
        403,
        &[&empty],
    );
    // Exact and prefix patterns together cover what they name.
    let both = mint(SECRET, &["notifications:1", "adm*"], "1h");
    let (mut c, _) = open_stream(
        &server,
        &format!("topic=notifications:1&topic=admin&topic=prices:X&token={both}"),
        "",
    );
    receives(&server, &mut c, "admin");
}

#[test]
fn token_with_nbf_in_the_future_is_401() {
    let server = auth_server("");
    let key = SECRET.as_bytes();
    let later = now_s() + 3600;
    let token = jwt(
        HS256,
        &claims(&["notifications:*"], Some(later + 3600), Some(later)),
        Sign::Hs256(key),
    );
    let (_, reason) = refused(
        &server,
        "topic=notifications:42",
        &format!("Authorization: Bearer {token}\r\n"),
        401,
        &[&token],
    );
    assert!(reason.contains("not valid yet"), "{reason:?}");
    // nbf 5 s ahead is within the 30 s leeway; nbf in the past is fine.
    for nbf in [now_s() + 5, now_s() - 60] {
        let token = jwt(
            HS256,
            &claims(&["notifications:*"], Some(now_s() + 3600), Some(nbf)),
            Sign::Hs256(key),
        );
        let (mut c, _) = open_stream(
            &server,
            "topic=notifications:42",
            &format!("Authorization: Bearer {token}\r\n"),
        );
        receives(&server, &mut c, "notifications:42");
    }
}

#[test]
fn alg_none_and_tokens_without_exp_are_401() {
    let server = auth_server("");
    let body = claims(&["notifications:*"], Some(now_s() + 3600), None);
    let mut bad = Vec::new();
    for alg in ["none", "None", "NONE"] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
        bad.push(jwt(&header, &body, Sign::Unsigned));
        // Signed anyway: the header still says none.
        bad.push(jwt(&header, &body, Sign::Hs256(SECRET.as_bytes())));
    }
    // Correctly signed but without the required exp.
    bad.push(jwt(
        HS256,
        &claims(&["notifications:*"], None, None),
        Sign::Hs256(SECRET.as_bytes()),
    ));
    // Not a JWT at all.
    bad.push("x".repeat(40));
    for token in &bad {
        refused(
            &server,
            "topic=notifications:42",
            &format!("Authorization: Bearer {token}\r\n"),
            401,
            &[token],
        );
    }
}

/// Checks a server configured with a public key: tokens signed by its private key are served,
/// everything else is 401.
fn check_public_key_server(kind: &str, header: &str, sign: fn(&Path) -> Sign<'_>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (private, public) = key_pair(dir.path(), kind);
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).expect("mkdir");
    let (other_private, _) = key_pair(&other_dir, kind);
    let auth = format!("public_key = {:?}\n{PRIVATE}", path_str(&public));
    let server = Server::start_with(&[("auth", &auth)]);
    let later = Some(now_s() + 3600);

    let good = jwt(header, &claims(&["admin"], later, None), sign(&private));
    let (mut c, _) = open_stream(
        &server,
        "topic=admin",
        &format!("Authorization: Bearer {good}\r\n"),
    );
    receives(&server, &mut c, "admin");
    let (mut c, _) = open_stream(&server, &format!("topic=admin&token={good}"), "");
    receives(&server, &mut c, "admin");
    refused(
        &server,
        "topic=notifications:1",
        &format!("Authorization: Bearer {good}\r\n"),
        403,
        &[&good],
    );

    let public_pem = std::fs::read(&public).unwrap();
    let mut bad = vec![
        // Signed by another key of the same kind.
        jwt(
            header,
            &claims(&["admin"], later, None),
            sign(&other_private),
        ),
        // Expired.
        jwt(
            header,
            &claims(&["admin"], Some(now_s() - 3600), None),
            sign(&private),
        ),
        // HS256 with the public key as the HMAC secret (algorithm confusion).
        jwt(
            HS256,
            &claims(&["admin"], later, None),
            Sign::Hs256(&public_pem),
        ),
        // HS256 with the secret other servers use.
        mint(SECRET, &["admin"], "1h"),
    ];
    // The other asymmetric algorithm, with the header lying about it.
    let other_header = if header == RS256 { ES256 } else { RS256 };
    bad.push(jwt(
        other_header,
        &claims(&["admin"], later, None),
        sign(&private),
    ));
    for token in &bad {
        refused(
            &server,
            "topic=admin",
            &format!("Authorization: Bearer {token}\r\n"),
            401,
            &[token],
        );
    }
}

#[test]
fn rs256_with_a_public_key() {
    check_public_key_server("rsa", RS256, |k| Sign::Rs256(k));
}

#[test]
fn es256_with_a_public_key() {
    check_public_key_server("ec", ES256, |k| Sign::Es256(k));
}

/// Ed25519 (`EdDSA`), as Mercure and Centrifugo accept and identity providers issue;
/// pinned by the key's type like RS256 and ES256.
#[test]
fn eddsa_with_an_ed25519_public_key() {
    check_public_key_server("ed25519", EDDSA, |k| Sign::EdDsa(k));
}

#[test]
fn token_expiry_closes_a_live_stream_and_public_streams_stay() {
    let server = auth_server("leeway = \"1s\"");
    let token = mint(SECRET, &["notifications:*"], "2s");
    let exp = exp_of(&token);
    let (mut private, _) = open_stream(
        &server,
        "topic=notifications:42",
        &format!("Authorization: Bearer {token}\r\n"),
    );
    let (mut public, _) = open_stream(&server, "topic=prices:AAPL", "");
    receives(&server, &mut private, "notifications:42");

    let rest = private
        .read_to_close(Duration::from_secs(8))
        .expect("the stream outlived its token by seconds");
    let closed_ms = now_ms();
    let due_ms = (exp + 1) * 1000; // exp + leeway
    assert!(
        closed_ms + 100 >= due_ms,
        "closed {} ms before exp + leeway",
        due_ms - closed_ms
    );
    assert!(
        closed_ms <= due_ms + 1500,
        "closed {} ms after exp + leeway",
        closed_ms - due_ms
    );
    assert!(
        !String::from_utf8_lossy(&rest).contains("data:"),
        "an event after expiry? {rest:?}"
    );
    // The public stream on the same server is untouched.
    receives(&server, &mut public, "prices:AAPL");
}

/// A request made just after `exp + leeway` (within the same second) is refused with `401`
/// like any expired token: not accepted and then dropped without an answer.
#[test]
fn token_just_past_exp_plus_leeway_is_401() {
    let server = auth_server("leeway = \"1s\"");
    let token = mint(SECRET, &["notifications:*"], "1s");
    let due_ms = (exp_of(&token) + 1) * 1000;
    std::thread::sleep(Duration::from_millis(due_ms + 20 - now_ms().min(due_ms)));
    assert!(now_ms() < due_ms + 500, "test too slow to hit the window");
    let (_, reason) = refused(
        &server,
        "topic=notifications:42",
        &format!("Authorization: Bearer {token}\r\n"),
        401,
        &[&token],
    );
    assert!(reason.contains("expired"), "{reason:?}");
}

// ---- token edge cases (issue 16): what the docs say is what the server answers -------------

fn bearer_header(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

fn hs256(claims: &str) -> String {
    jwt(HS256, claims, Sign::Hs256(SECRET.as_bytes()))
}

/// A correctly signed token without `exp` is told so (it used to get "the token is
/// malformed": the claims failed to deserialize before the required-claim check).
#[test]
fn token_without_exp_gets_the_documented_reason() {
    let server = auth_server("");
    for body in [
        claims(&["notifications:*"], None, None),
        r#"{"subscribe":["notifications:*"],"exp":null}"#.to_string(),
    ] {
        let token = hs256(&body);
        let (_, reason) = refused(
            &server,
            "topic=notifications:42",
            &bearer_header(&token),
            401,
            &[&token],
        );
        assert_eq!(reason, "the token has no exp claim", "{body}");
    }
}

/// `exp` near u64::MAX: `exp + leeway` used to wrap (release: refused as expired) or panic
/// the event loop (overflow checks). Now such a token is valid for as long as it says, and
/// the server stays up.
#[test]
fn far_future_exp_is_served_without_overflow() {
    let mut server = auth_server("");
    let mut streams = Vec::new();
    let exps = [
        u64::MAX.to_string(),
        (u64::MAX - 29).to_string(), // + the 30 s leeway is exactly 2^64
        (u64::MAX / 1000 + 1).to_string(),
        "1.8e19".to_string(),
    ];
    for (i, exp) in exps.iter().enumerate() {
        let token = hs256(&format!(
            r#"{{"subscribe":["notifications:*"],"exp":{exp}}}"#
        ));
        // A topic of its own each, plus one they all share.
        let topic = format!("notifications:{i}");
        let query = format!("topic={topic}&topic=notifications:all");
        let (mut c, _) = open_stream(&server, &query, &bearer_header(&token));
        receives(&server, &mut c, &topic);
        streams.push(c);
    }
    // Still open a while later (no deadline wrapped into the past), and still delivering.
    std::thread::sleep(Duration::from_millis(1500));
    let id = server.producer().publish("notifications:all", "later");
    for c in &mut streams {
        let block = c.read_event();
        assert_eq!(event_id(&block), Some(id), "{block:?}");
    }
    assert!(
        server.child.try_wait().expect("try_wait").is_none(),
        "the server exited"
    );
    // An `exp` beyond what a NumericDate can be is malformed, not a crash.
    let token = hs256(r#"{"subscribe":["notifications:*"],"exp":1e30}"#);
    let (_, reason) = refused(
        &server,
        "topic=notifications:42",
        &bearer_header(&token),
        401,
        &[&token],
    );
    assert_eq!(reason, "the token is malformed");
}

/// A JOSE header with `crit` names extensions that must be understood; ssehub supports
/// none, so such a token is refused (it used to be accepted, `crit` ignored).
#[test]
fn tokens_with_a_crit_header_are_401() {
    let server = auth_server("");
    let body = claims(&["notifications:*"], Some(now_s() + 3600), None);
    for header in [
        r#"{"alg":"HS256","typ":"JWT","crit":["exp"],"exp":1}"#,
        r#"{"alg":"HS256","crit":["b64"],"b64":false}"#,
        r#"{"alg":"HS256","crit":[]}"#,
    ] {
        let token = jwt(header, &body, Sign::Hs256(SECRET.as_bytes()));
        let (_, reason) = refused(
            &server,
            "topic=notifications:42",
            &bearer_header(&token),
            401,
            &[&token],
        );
        assert_eq!(
            reason, "the token has critical header extensions this server does not support",
            "{header}"
        );
    }
    let token = jwt(HS256, &body, Sign::Hs256(SECRET.as_bytes()));
    let (mut c, _) = open_stream(&server, "topic=notifications:42", &bearer_header(&token));
    receives(&server, &mut c, "notifications:42");
}

/// `auth.audience` / `auth.issuer`: checked when set, with a reason for each refusal;
/// `ssehub token` writes them (from `--config`, or the flags); both reload.
#[test]
fn audience_and_issuer_are_checked_when_configured() {
    const AUD_ISS: &str = "audience = \"https://events.test\"\nissuer = \"https://login.test\"";
    let server = auth_server(AUD_ISS);
    let exp = now_s() + 3600;
    let with = |extra: &str| format!(r#"{{"subscribe":["notifications:*"],"exp":{exp}{extra}}}"#);
    let iss = r#","iss":"https://login.test""#;
    let aud = r#","aud":"https://events.test""#;
    for extra in [
        format!("{iss}{aud}"),
        format!(r#"{iss},"aud":["https://other.test","https://events.test"]"#),
    ] {
        let (mut c, _) = open_stream(
            &server,
            "topic=notifications:42",
            &bearer_header(&hs256(&with(&extra))),
        );
        receives(&server, &mut c, "notifications:42");
    }
    for (extra, why) in [
        (iss.to_string(), "the token has no aud claim"),
        (
            format!(r#"{iss},"aud":"https://other.test""#),
            "the token's audience is not accepted",
        ),
        (
            format!(r#"{iss},"aud":["https://other.test"]"#),
            "the token's audience is not accepted",
        ),
        (aud.to_string(), "the token has no iss claim"),
        (
            format!(r#"{aud},"iss":"https://evil.test""#),
            "the token's issuer is not accepted",
        ),
    ] {
        let token = hs256(&with(&extra));
        let (_, reason) = refused(
            &server,
            "topic=notifications:42",
            &bearer_header(&token),
            401,
            &[&token, "https://other.test", "https://evil.test"],
        );
        assert_eq!(reason, why, "{extra}");
    }
    // Public topics still need nothing.
    let (mut c, _) = open_stream(&server, "topic=prices:AAPL", "");
    receives(&server, &mut c, "prices:AAPL");

    // `ssehub token --config` takes the audience and issuer from the file; with `--secret`
    // they are left out unless given as flags.
    let config = server.config.clone();
    let token_with = |args: &[&str]| {
        let mut all = vec!["token", "--subscribe", "notifications:*"];
        all.extend_from_slice(args);
        let out = run_bin(&all, b"", Duration::from_secs(10));
        assert_eq!(out.code, Some(0), "ssehub token {args:?}: {}", out.stderr);
        out.stdout.trim().to_string()
    };
    let from_config = token_with(&["--config", path_str(&config)]);
    let from_flags = token_with(&[
        "--secret",
        SECRET,
        "--audience",
        "https://events.test",
        "--issuer",
        "https://login.test",
    ]);
    for token in [&from_config, &from_flags] {
        let (mut c, _) = open_stream(&server, "topic=notifications:42", &bearer_header(token));
        receives(&server, &mut c, "notifications:42");
    }
    let plain = mint(SECRET, &["notifications:*"], "1h");
    let (_, reason) = refused(
        &server,
        "topic=notifications:42",
        &bearer_header(&plain),
        401,
        &[&plain],
    );
    assert_eq!(reason, "the token has no aud claim");
    let check = run_bin(
        &["check-config", path_str(&config)],
        b"",
        Duration::from_secs(10),
    );
    assert_eq!(check.code, Some(0), "{check:?}");

    // Reload without them: the plain token is served, the keys are named as changed.
    let auth = format!("secret = {SECRET:?}\n{PRIVATE}");
    std::fs::write(
        &config,
        config_with_socket(&server.socket, &[("auth", &auth)]),
    )
    .expect("rewrite config");
    let answer = server.producer().request(r#"{"admin":"reload"}"#);
    assert_eq!(
        answer,
        r#"{"ok":true,"changed":["auth.audience","auth.issuer"],"needs_restart":[]}"#
    );
    let (mut c, _) = open_stream(&server, "topic=notifications:42", &bearer_header(&plain));
    receives(&server, &mut c, "notifications:42");
}

// ---- Origin policy and CORS ------------------------------------------------------------------

/// Whether a head carries any `Access-Control-*` header.
fn has_cors_headers(head: &str) -> bool {
    head.to_ascii_lowercase().contains("\r\naccess-control-")
}

fn assert_cors(head: &str, credentials: bool) {
    assert_eq!(
        header_of(head, "access-control-allow-origin").as_deref(),
        Some(ALLOWED),
        "{head:?}"
    );
    let vary = header_of(head, "vary").unwrap_or_default();
    assert!(
        vary.split(',')
            .any(|v| v.trim().eq_ignore_ascii_case("origin")),
        "Vary: Origin missing: {head:?}"
    );
    assert_eq!(
        header_of(head, "access-control-allow-credentials").as_deref(),
        credentials.then_some("true"),
        "{head:?}"
    );
}

#[test]
fn disallowed_origin_is_403() {
    let server = cors_server(false);
    for origin in [
        EVIL,
        "null",
        "http://allowed.test.evil.test",
        "https://allowed.test",
    ] {
        let (head, _) = refused(
            &server,
            "topic=prices:AAPL",
            &format!("Origin: {origin}\r\n"),
            403,
            &[],
        );
        assert!(!has_cors_headers(&head), "{head:?}");
    }
    // The Origin check comes before the token check, and the token is not looked at.
    let token = mint(SECRET, &["notifications:*"], "1h");
    refused(
        &server,
        "topic=notifications:42",
        &format!("Origin: {EVIL}\r\nCookie: ssehub_token={token}\r\n"),
        403,
        &[&token],
    );
    refused(
        &server,
        "topic=notifications:42",
        &format!("Origin: {EVIL}\r\n"),
        403,
        &[],
    );
}

#[test]
fn allowed_origin_is_served_with_cors_headers() {
    let server = cors_server(false);
    let (mut c, head) = open_stream(
        &server,
        "topic=prices:AAPL",
        &format!("Origin: {ALLOWED}\r\n"),
    );
    assert_cors(&head, false);
    receives(&server, &mut c, "prices:AAPL");
    // A cookie-authenticated private stream from the allowed origin.
    let token = mint(SECRET, &["notifications:*"], "1h");
    let (mut c, head) = open_stream(
        &server,
        "topic=notifications:42",
        &format!("Origin: {ALLOWED}\r\nCookie: ssehub_token={token}\r\n"),
    );
    assert_cors(&head, false);
    receives(&server, &mut c, "notifications:42");
}

#[test]
fn allow_credentials_is_sent_when_configured() {
    let server = cors_server(true);
    let (mut c, head) = open_stream(
        &server,
        "topic=prices:AAPL",
        &format!("Origin: {ALLOWED}\r\n"),
    );
    assert_cors(&head, true);
    receives(&server, &mut c, "prices:AAPL");
    let (head, _) = refused(
        &server,
        "topic=notifications:42",
        &format!("Origin: {ALLOWED}\r\n"),
        401,
        &[],
    );
    assert_cors(&head, true);
}

#[test]
fn error_answers_to_an_allowed_origin_carry_the_cors_headers() {
    let server = cors_server(false);
    let origin = format!("Origin: {ALLOWED}\r\n");
    // 404 and 405 (connection kept), 400 (closed).
    for (request, status) in [
        ("GET /nope HTTP/1.1", 404),
        ("DELETE /events?topic=a HTTP/1.1", 405),
        ("GET /events?topic=bad%20name HTTP/1.1", 400),
        ("GET /events HTTP/1.1", 400),
    ] {
        let mut c = Client::connect(server.addr);
        c.send(&format!("{request}\r\nHost: t\r\n{origin}\r\n"));
        let (head, _) = read_plain(&mut c, status);
        assert_cors(&head, false);
    }
    // 401 and 403 from the token check.
    let (head, _) = refused(&server, "topic=notifications:42", &origin, 401, &[]);
    assert_cors(&head, false);
    let other = mint(SECRET, &["admin"], "1h");
    let (head, _) = refused(
        &server,
        "topic=notifications:42",
        &format!("{origin}Authorization: Bearer {other}\r\n"),
        403,
        &[&other],
    );
    assert_cors(&head, false);
}

#[test]
fn preflight_from_an_allowed_origin_needs_no_token() {
    let server = cors_server(false);
    let mut c = Client::connect(server.addr);
    c.send(&format!(
        "OPTIONS /events?topic=notifications:42 HTTP/1.1\r\nHost: t\r\nOrigin: {ALLOWED}\r\n\
         Access-Control-Request-Method: GET\r\n\
         Access-Control-Request-Headers: authorization\r\n\r\n"
    ));
    let head = c.read_head();
    assert!(head.starts_with("HTTP/1.1 204 "), "{head:?}");
    assert_cors(&head, false);
    assert_eq!(
        header_of(&head, "access-control-allow-methods").as_deref(),
        Some("GET, HEAD")
    );
    assert_eq!(
        header_of(&head, "access-control-allow-headers").as_deref(),
        Some("Authorization, Last-Event-ID, Cache-Control")
    );
    let max_age: u64 = header_of(&head, "access-control-max-age")
        .expect("Access-Control-Max-Age")
        .parse()
        .expect("a number of seconds");
    assert!(max_age > 0);
    assert!(header_of(&head, "www-authenticate").is_none(), "{head:?}");
    // The request the preflight was for: GET with Authorization from the allowed origin.
    let token = mint(SECRET, &["notifications:*"], "1h");
    let (mut s, head) = open_stream(
        &server,
        "topic=notifications:42",
        &format!("Origin: {ALLOWED}\r\nAuthorization: Bearer {token}\r\n"),
    );
    assert_cors(&head, false);
    receives(&server, &mut s, "notifications:42");
    // A preflight from a disallowed origin is refused.
    let mut c = Client::connect(server.addr);
    c.send(&format!(
        "OPTIONS /events?topic=a HTTP/1.1\r\nHost: t\r\nOrigin: {EVIL}\r\n\
         Access-Control-Request-Method: GET\r\n\r\n"
    ));
    let (head, _) = read_plain(&mut c, 403);
    assert!(!has_cors_headers(&head), "{head:?}");
}

#[test]
fn no_origin_header_is_served_without_cors_headers() {
    let server = cors_server(true);
    let (mut c, head) = open_stream(&server, "topic=prices:AAPL", "");
    assert!(!has_cors_headers(&head), "{head:?}");
    receives(&server, &mut c, "prices:AAPL");
    let (head, _) = refused(&server, "topic=notifications:1", "", 401, &[]);
    assert!(!has_cors_headers(&head), "{head:?}");
}

#[test]
fn without_allowed_origins_any_origin_is_served_without_cors_headers() {
    let server = auth_server("");
    for origin in [EVIL, "null", ALLOWED] {
        let (mut c, head) = open_stream(
            &server,
            "topic=prices:AAPL",
            &format!("Origin: {origin}\r\n"),
        );
        assert!(!has_cors_headers(&head), "{head:?}");
        receives(&server, &mut c, "prices:AAPL");
    }
    let (head, _) = refused(
        &server,
        "topic=notifications:1",
        &format!("Origin: {EVIL}\r\n"),
        401,
        &[],
    );
    assert!(!has_cors_headers(&head), "{head:?}");
}

// ---- configuration ---------------------------------------------------------------------------

/// `ssehub check-config` refuses an `[auth]` section that `ssehub serve` refuses to start
/// with, so that a bad key setup is caught before a restart.
#[test]
fn check_config_refuses_auth_settings_that_serve_refuses() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("ingest.sock");
    let missing_pem = dir.path().join("missing.pem");
    let cases = [
        ("a private pattern without a key", PRIVATE.to_string()),
        (
            "both a secret and a public key",
            format!(
                "secret = {SECRET:?}\npublic_key = {:?}\n{PRIVATE}",
                path_str(&missing_pem)
            ),
        ),
        (
            "a public key file that does not exist",
            format!("public_key = {:?}\n{PRIVATE}", path_str(&missing_pem)),
        ),
        (
            "a leeway over a day",
            format!("secret = {SECRET:?}\n{PRIVATE}\nleeway = \"25h\""),
        ),
        (
            "an audience with leading whitespace",
            format!("secret = {SECRET:?}\n{PRIVATE}\naudience = \" https://events.test\""),
        ),
        (
            "an issuer with trailing whitespace",
            format!("secret = {SECRET:?}\n{PRIVATE}\nissuer = \"https://login.test \""),
        ),
    ];
    for (what, auth) in cases {
        let config = dir.path().join("ssehub.toml");
        std::fs::write(&config, config_with_socket(&socket, &[("auth", &auth)])).unwrap();
        let serve = run_bin(
            &["serve", "--config", path_str(&config)],
            b"",
            Duration::from_secs(10),
        );
        assert_eq!(serve.code, Some(1), "serve started with {what}: {serve:?}");
        let check = run_bin(
            &["check-config", path_str(&config)],
            b"",
            Duration::from_secs(10),
        );
        assert_ne!(
            check.code,
            Some(0),
            "check-config accepts {what}, which serve refuses: {check:?}"
        );
    }
}

#[test]
fn a_public_key_rotated_in_place_is_a_key_change_on_reload() {
    // The key file is replaced at the same path (what a secret manager does) and the
    // configuration file is not touched: the reload must load the new key, say so, and end
    // the streams opened with tokens of the old key.
    let dir = tempfile::tempdir().expect("temp dir");
    let (old_private, public) = key_pair(dir.path(), "ec");
    let next = dir.path().join("next");
    std::fs::create_dir(&next).expect("mkdir");
    let (new_private, new_public) = key_pair(&next, "ec");
    let auth = format!("public_key = {:?}\n{PRIVATE}", path_str(&public));
    let server = Server::start_with(&[("auth", &auth)]);
    let later = Some(now_s() + 3600);
    let old = jwt(
        ES256,
        &claims(&["admin"], later, None),
        Sign::Es256(&old_private),
    );
    let (mut c, _) = open_stream(
        &server,
        "topic=admin",
        &format!("Authorization: Bearer {old}\r\n"),
    );
    receives(&server, &mut c, "admin");

    std::fs::copy(&new_public, &public).expect("rotate the key file");
    let out = run_bin(
        &["reload", "--socket", path_str(&server.socket)],
        b"",
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(0), "{} {}", out.stdout, out.stderr);
    assert!(out.stdout.contains("\"auth.public_key\""), "{}", out.stdout);

    // The old stream gets a retry: and ends; its token is refused from now on.
    let rest = c
        .read_to_close(Duration::from_secs(5))
        .expect("stream ended");
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("retry: "), "{rest:?}");
    refused(
        &server,
        "topic=admin",
        &format!("Authorization: Bearer {old}\r\n"),
        401,
        &[&old],
    );
    let new = jwt(
        ES256,
        &claims(&["admin"], later, None),
        Sign::Es256(&new_private),
    );
    let (mut c, _) = open_stream(
        &server,
        "topic=admin",
        &format!("Authorization: Bearer {new}\r\n"),
    );
    receives(&server, &mut c, "admin");
}
