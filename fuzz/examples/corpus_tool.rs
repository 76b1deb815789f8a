//! Seeds and regression files for the fuzz targets (a plain program, not a fuzz target:
//! `cargo fuzz build` builds only the bins).
//!
//! ```text
//! cd fuzz
//! cargo run --release --example corpus_tool -- seed corpus
//!     writes realistic seed inputs into corpus/{http_request,ingest_line,sse_encoder}/
//! cargo run --release --example corpus_tool -- export-sse OUT_DIR FILE...
//!     turns raw sse_encoder inputs (fuzzer bytes) into the JSON regression files that
//!     tests/fuzz_regressions.rs replays (it has no `arbitrary` to decode raw bytes)
//! ```

use ssehub_fuzz::checks::SseCase;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("seed") if args.len() == 2 => seed(Path::new(&args[1])),
        Some("export-sse") if args.len() >= 2 => {
            export_sse(Path::new(&args[1]), args[2..].iter().map(PathBuf::from))
        }
        _ => {
            eprintln!("usage: corpus_tool seed CORPUS_DIR | export-sse OUT_DIR FILE...");
            std::process::exit(2);
        }
    }
}

/// Content-addressed file name, as libFuzzer names corpus files (here a 64-bit FNV-1a).
fn name_of(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("seed-{h:016x}")
}

fn write_all(dir: &Path, inputs: &[Vec<u8>]) {
    fs::create_dir_all(dir).expect("create corpus dir");
    for input in inputs {
        fs::write(dir.join(name_of(input)), input).expect("write seed");
    }
    println!("{}: {} seeds", dir.display(), inputs.len());
}

fn seed(corpus: &Path) {
    write_all(&corpus.join("http_request"), &http_seeds());
    write_all(&corpus.join("ingest_line"), &ingest_seeds());
    let sse: Vec<Vec<u8>> = sse_seeds()
        .iter()
        .map(|c| ssehub_fuzz::sse_input_bytes(c).unwrap_or_else(|| panic!("no bytes for {c:?}")))
        .collect();
    write_all(&corpus.join("sse_encoder"), &sse);
}

fn export_sse(out: &Path, files: impl Iterator<Item = PathBuf>) {
    fs::create_dir_all(out).expect("create output dir");
    let mut n = 0;
    for file in files {
        let bytes = fs::read(&file).expect("read input");
        // Inputs `arbitrary` cannot make an SseInput of are never run by the target.
        let Some(input) = ssehub_fuzz::sse_input(&bytes) else {
            continue;
        };
        let json = SseCase::from(input).to_json();
        let stem = file.file_name().and_then(|s| s.to_str()).unwrap_or("input");
        fs::write(out.join(format!("{stem}.json")), json).expect("write JSON");
        n += 1;
    }
    println!("{}: {n} JSON files", out.display());
}

// ---------------------------------------------------------------------------------------

fn http_seeds() -> Vec<Vec<u8>> {
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWJzY3JpYmUiOlsibm90aWZpY2F0aW9uczo0MiJdLCJleHAiOjE5MDAwMDAwMDB9.c2lnbmF0dXJlLWJ5dGVz";
    let browser = "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-GB,en;q=0.9\r\nSec-Fetch-Mode: cors\r\nSec-Fetch-Site: same-site\r\nSec-Fetch-Dest: empty\r\n";
    let mut s: Vec<String> = vec![
        // EventSource in a browser, first connection and reconnection.
        format!("GET /events?topic=notifications%3A42 HTTP/1.1\r\nHost: hub.example.com\r\nConnection: keep-alive\r\n{browser}Origin: https://app.example.com\r\nCookie: ssehub_token={jwt}; theme=dark\r\n\r\n"),
        format!("GET /events?topic=notifications%3A42&topic=activity%3Auser%3A7 HTTP/1.1\r\nHost: hub.example.com\r\n{browser}Last-Event-ID: 1718000000000123\r\nOrigin: https://app.example.com\r\n\r\n"),
        format!("GET /events?topic=prices%3AAAPL&topic=prices%3AALL&lastEventId=1718000000000000&token={jwt} HTTP/1.1\r\nHost: localhost:8080\r\n\r\n"),
        format!("GET /events?topic=notifications:42 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {jwt}\r\nAccept: text/event-stream\r\n\r\n"),
        // curl and the README.
        "GET /events?topic=progress%3Aexport-19 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n".into(),
        "GET /events?topic=chat HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: text/event-stream\r\nLast-Event-ID: not-a-number\r\n\r\n".into(),
        // nginx upstream: HTTP/1.0, X-Forwarded-For.
        "GET /events?topic=activity%3Auser%3A7 HTTP/1.0\r\nHost: ssehub_upstream\r\nConnection: close\r\nX-Real-IP: 203.0.113.7\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 10.0.0.2, 10.0.0.3\r\nAccept: text/event-stream\r\n\r\n".into(),
        "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /metrics HTTP/1.0\r\n\r\n".into(),
        // Absolute-form targets.
        "GET http://hub.example.com:8080/events?topic=a%2Fb%40c.d_e HTTP/1.1\r\nHost: hub.example.com:8080\r\n\r\n".into(),
        "GET HTTPS://hub.example.com?topic=x HTTP/1.1\r\nHost: hub.example.com\r\n\r\n".into(),
        "GET http://user@hub/events?topic=x HTTP/1.1\r\nHost: hub\r\n\r\n".into(),
        "GET http:///events HTTP/1.1\r\nHost: hub\r\n\r\n".into(),
        // CORS preflight, OPTIONS *, HEAD.
        "OPTIONS /events?topic=notifications%3A42 HTTP/1.1\r\nHost: hub.example.com\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: authorization,last-event-id\r\n\r\n".into(),
        "OPTIONS * HTTP/1.1\r\nHost: hub\r\n\r\n".into(),
        "HEAD /events?topic=a HTTP/1.1\r\nHost: hub\r\n\r\nHEAD /healthz HTTP/1.1\r\nHost: hub\r\n\r\n".into(),
        // Pipelined keep-alive requests, then a stream.
        "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /metrics HTTP/1.1\r\nHost: a\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\n\r\nPUT /events HTTP/1.1\r\nHost: a\r\n\r\nGET /events?topic=t HTTP/1.1\r\nHost: a\r\n\r\n".into(),
        "GET /healthz HTTP/1.1\nHost: a\n\nGET /healthz HTTP/1.1\nHost: a\nConnection: close\n\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n".into(),
        "\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n".into(),
        // Bodies, framing headers.
        "POST /events?topic=a HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"data\":\"x\"}\n".into(),
        "GET /events?topic=a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into(),
        "GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 0, 0\r\n\r\n".into(),
        "GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".into(),
        "GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n".into(),
        // Topics and query edge cases.
        "GET /events?topic=b&topic=a&topic=b&topic=a%3A1&%74opic=a&lastEventId=&token=&x=y&&flag HTTP/1.1\r\nHost: a\r\n\r\n".into(),
        "GET /events?topic=a%zz HTTP/1.1\r\nHost: a\r\n\r\n".into(),
        "GET /events?topic=a+b&topic=%C3%A9&lastEventId=%FF HTTP/1.1\r\nHost: a\r\n\r\n".into(),
        "GET /events?topic HTTP/1.1\r\nHost: a\r\n\r\n".into(),
        "GET /events#frag HTTP/1.1\r\nHost: a\r\n\r\n".into(),
        "GET /events HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(),
        "GET /events?topic=a HTTP/1.1\r\n\r\n".into(),
        "GET /events?topic=a HTTP/2.0\r\nHost: a\r\n\r\n".into(),
        "GET /events?topic=a HTTP/1.1\r\nHost: a\r\nOrigin: https://a\r\nOrigin: https://b\r\n\r\n".into(),
        // Partial heads, as a first read may deliver them.
        "GET /events?topic=a HTTP/1.1\r\nHost: a\r\n".into(),
        "GET /eve".into(),
    ];
    let many_topics = |n: usize| {
        (0..n)
            .map(|i| format!("topic=t{i}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    s.push(format!(
        "GET /events?{} HTTP/1.1\r\nHost: a\r\n\r\n",
        many_topics(32)
    ));
    s.push(format!(
        "GET /events?{} HTTP/1.1\r\nHost: a\r\n\r\n",
        many_topics(33)
    ));
    s.push(format!(
        "GET /events?topic={} HTTP/1.1\r\nHost: a\r\n\r\n",
        "x".repeat(201)
    ));
    let headers = |n: usize| (0..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>();
    s.push(format!(
        "GET /healthz HTTP/1.1\r\nHost: a\r\n{}\r\n",
        headers(63)
    ));
    s.push(format!(
        "GET /healthz HTTP/1.1\r\nHost: a\r\n{}\r\n",
        headers(64)
    ));
    // Long headers around the 8 KiB limit: a big cookie within it, a head just over it (431),
    // and a request line over it (414).
    s.push(format!(
        "GET /events?topic=a HTTP/1.1\r\nHost: a\r\nCookie: ssehub_token={jwt}; big={}\r\n\r\n",
        "c".repeat(7000)
    ));
    s.push(format!(
        "GET /events?topic=a HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(8200)
    ));
    s.push(format!(
        "GET /events?topic={} HTTP/1.1\r\nHost: a\r\n\r\n",
        "a".repeat(8200)
    ));
    let mut out: Vec<Vec<u8>> = s.into_iter().map(String::into_bytes).collect();
    // Raw bytes that are not UTF-8 text.
    out.push(b"GET /events?topic=\xff HTTP/1.1\r\nHost: a\r\n\r\n".to_vec());
    out.push(
        b"GET /events?topic=a HTTP/1.1\r\nHost: a\r\nLast-Event-ID: \xff\xfe\r\nOrigin: \xc3\x28\r\nCookie: a=1\r\nCookie: \r\nCookie: b=2\r\n\r\n"
            .to_vec(),
    );
    out.push(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec()); // a TLS ClientHello
    out.push(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec());
    out
}

fn ingest_seeds() -> Vec<Vec<u8>> {
    let lines: &[&str] = &[
        // SPEC 3.
        r#"{"topic": "notifications:42", "event": "notification", "data": "{\"title\":\"Hi\"}"}"#,
        r#"{"topics": ["prices:AAPL", "prices:ALL"], "data": 187.12}"#,
        r#"{"topic": "progress:export-19", "event": "done", "data": "100", "final": true}"#,
        r#"{"admin":"reload"}"#,
        // Accepted lines from the tests.
        r#"{"topic":"t","data":""}"#,
        r#"{"topic":"e","event":"notification:new","data":"a\nb"}"#,
        r#"{"topic":"u","data":"\u00e9\u2713\ud83d\ude80"}"#,
        r#"{"topic":"t","event":"with space é","data":1}"#,
        r#"{"topic":"t","data":{ "a" : "x y" , "b":[1, 2e-3, -0, 1E+400] }}"#,
        r#"{"topic":"t","data":[{"s":"a  b\n c","n":2.50}, null, true, "\\"  ,  "\u0041 \n"]}"#,
        r#"{"topics":["b","a","b","c","a"],"data":1,"final":false}"#,
        "\t{ \"topic\" : \"a/b@c.d_e\" ,\r\n \"data\" : \"x\" } \t",
        // Refused lines from the tests.
        r#"{"topic":"t","event":"reset","data":1}"#,
        r#"{"topic":"t","event":"a\rb","data":1}"#,
        r#"{"topic":"t","event":"a\u0000b","data":1}"#,
        r#"{"topic":"t","data":1,"colour":"red"}"#,
        r#"{"topic":"t","data":1,"data":2}"#,
        r#"{"topic":"a","topics":["b"],"data":1}"#,
        r#"{"topics":[],"data":1}"#,
        r#"{"topics":["ok","a\nb"],"data":1}"#,
        r#"{"topic":"t","data":"\ud800"}"#,
        r#"{"topic":"t","data":"\udc00\ud83d"}"#,
        r#"{"topic":"t","data":01}"#,
        r#"{"topic":"t","data":[1,]}"#,
        r#"{"topic":"t","data":1,"final":"yes"}"#,
        r#"{"topic":null,"data":1}"#,
        r#"{"admin":"reload","topic":"t"}"#,
        r#"{"admin":"rel\u006fad"}"#,
        r#"{"topic":"t" "data":1}"#,
        r#"["not","an","object"]"#,
        "",
        "   \t\r",
    ];
    let mut out: Vec<Vec<u8>> = lines.iter().map(|l| l.as_bytes().to_vec()).collect();
    let event64 = "e".repeat(64);
    out.push(format!(r#"{{"topic":"t","event":"{event64}","data":1}}"#).into_bytes());
    out.push(format!(r#"{{"topic":"t","event":"{event64}x","data":1}}"#).into_bytes());
    let topics33: Vec<String> = (0..33).map(|i| format!("\"t{i}\"")).collect();
    out.push(format!(r#"{{"topics":[{}],"data":1}}"#, topics33.join(",")).into_bytes());
    out.push(format!(r#"{{"topic":"{}","data":1}}"#, "x".repeat(201)).into_bytes());
    out.push(
        format!(
            r#"{{"topic":"t","data":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        )
        .into_bytes(),
    );
    out.push(b"{\"topic\":\"t\",\"data\":\"\xff\xfe\"}".to_vec());
    // A producer's pipelined stream: many lines, LF and CRLF ends, an unfinished last line.
    let mut stream = Vec::new();
    for l in lines.iter().take(12) {
        stream.extend_from_slice(l.as_bytes());
        stream.extend_from_slice(if stream.len() % 2 == 0 {
            b"\n"
        } else {
            b"\r\n"
        });
    }
    stream.extend_from_slice(br#"{"topic":"t","data":"unfinis"#);
    out.push(stream);
    out
}

fn sse_seeds() -> Vec<SseCase> {
    let id = 1_718_000_000_000_123;
    let case = |event: Option<&str>, data: &str| SseCase {
        id,
        earliest: Some(id - 1000),
        event: event.map(str::to_owned),
        data: data.to_owned(),
    };
    let mut cases = vec![
        case(None, "hello"),
        case(Some("notification"), r#"{"title":"Hi"}"#),
        case(Some("message"), "187.12"),
        case(Some("done"), "100"),
        case(Some("reset"), "producers cannot use reset"),
        case(Some("price\r\nupdate\0"), "x"),
        case(Some(" leading space:colon"), ""),
        case(Some("événement ✓"), "héllo ✓ 🚀"),
        case(Some(&"e".repeat(70)), "long type"),
        case(None, ""),
        case(None, "\n"),
        case(None, "\r\n\r\n"),
        case(None, "x\r"),
        case(None, "line one\nline two\r\nline three\rline four"),
        case(None, "a\r\rb\n\r\nc\n\n"),
        case(
            None,
            "x\n\nid: 99\r\nevent: evil\rretry: 1\n:comment\ndata: injected",
        ),
        case(None, "\u{feff}bom at the start"),
        case(None, "tab\tand\0nul and \u{2028} and \u{85}"),
        case(None, &"0123456789abcdef\n".repeat(120)),
        SseCase {
            id: 0,
            earliest: None,
            event: None,
            data: r#"{"lastEventId":"5","earliestId":null}"#.into(),
        },
        SseCase {
            id: u64::MAX,
            earliest: Some(u64::MAX),
            event: Some("update".into()),
            data: "\"quoted\" and \\ backslash".into(),
        },
    ];
    cases.push(case(None, &"é".repeat(300)));
    cases
}
