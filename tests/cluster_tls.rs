//! Cluster mode over TLS (`rediss://`, SPEC 7) against a real `redis-server` with a TLS
//! port and a certificate signed by a CA made in the test. A node that trusts the CA
//! (`SSL_CERT_FILE`, which the Redis client's rustls reads with the system roots) stores
//! events in Redis through TLS and delivers them with Redis's ids; a node that does not
//! trust it reports Redis down and refuses publishes with the certificate error, and
//! accepts nothing it could lose.
mod common;
use common::redis::{Redis, free_port, metric, redis_up};
use common::*;
use std::path::Path;
use std::time::Duration;

/// Redis with its usual plain port (for `redis-cli`) and a TLS port (for the nodes);
/// returns it, the TLS port and the CA certificate.
fn tls_redis(dir: &Path) -> (Redis, u16, std::path::PathBuf) {
    let (ca, cert, key) = common::certs::ca_and_leaf(dir);
    let tls_port = free_port();
    let port = tls_port.to_string();
    let redis = Redis::start(&[
        "--tls-port",
        &port,
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-ca-cert-file",
        ca.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ]);
    (redis, tls_port, ca)
}

/// A cluster node on `url` whose Redis client trusts only the certificates in `roots`.
fn node_trusting(url: &str, roots: &Path) -> Server {
    let cluster = format!("redis = {url:?}\nconnect_timeout = \"500ms\"");
    Server::start_with_command(&[("cluster", cluster.as_str())], |config| {
        let mut cmd = serve_command(config);
        cmd.env("SSL_CERT_FILE", roots);
        cmd
    })
}

#[test]
fn a_node_publishes_and_delivers_through_redis_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (redis, tls_port, ca) = tls_redis(dir.path());
    // The leaf is for 127.0.0.1 and localhost: the name in the URL is verified.
    let url = format!("rediss://localhost:{tls_port}/0");
    let node = node_trusting(&url, &ca);
    assert!(
        wait_for(Duration::from_secs(10), || redis_up(&node) == Some(true)),
        "node did not reach Redis over TLS: {}",
        node.log_text()
    );
    let mut c = node.subscribe("topic=t");
    let mut p = node.producer();
    let ids: Vec<u64> = (0..3).map(|i| p.publish("t", &format!("e{i}"))).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for (i, id) in ids.iter().enumerate() {
        let block = c.read_event();
        assert_eq!(event_id(&block), Some(*id), "{block}");
        assert_eq!(event_data(&block), format!("e{i}"));
    }
    // Stored in Redis (read back over the plain port): the events went through it.
    let prefix = redis.cli(&["--scan", "--pattern", "*{ev}"]);
    assert!(!prefix.is_empty(), "no stream key in Redis");
    assert_eq!(
        redis.cli(&["XLEN", prefix.lines().next().unwrap()]),
        "3",
        "three entries in {prefix}"
    );
    assert_eq!(metric(&node, "ssehub_redis_errors_total"), Some(0));
}

#[test]
fn a_node_that_does_not_trust_the_certificate_refuses_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let (redis, tls_port, _ca) = tls_redis(dir.path());
    let url = format!("rediss://localhost:{tls_port}/0");
    // It trusts some other certificate, not the CA that signed Redis's.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (stranger, _) = common::certs::self_signed(&other, "someone else");
    let node = node_trusting(&url, &stranger);
    // Give it time for a few connect attempts: it must never come up.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(redis_up(&node), Some(false), "{}", node.log_text());
    let answer = node.producer().request(r#"{"topic":"t","data":"x"}"#);
    assert!(
        answer.starts_with("{\"ok\":false,\"error\":\"not stored: redis unavailable: "),
        "a publish without Redis is refused: {answer}"
    );
    assert!(
        wait_for(Duration::from_secs(5), || node
            .log_text()
            .to_lowercase()
            .contains("certificate")),
        "the log says why: {}",
        node.log_text()
    );
    assert_eq!(redis.cli(&["DBSIZE"]), "0", "nothing reached Redis");
}
