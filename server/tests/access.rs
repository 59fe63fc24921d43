//! etcd's access controller on the client listener's HTTP paths: `--host-whitelist` refuses
//! plain-text requests for other host names (DNS rebinding), `--cors` answers with the
//! `Access-Control-*` headers and `OPTIONS` with 200.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{single_member, Member};

/// `method path` over HTTP/1.1 with `headers`; the whole response as text.
fn request(m: &Member, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", m.client_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn header<'a>(resp: &'a str, name: &str) -> Vec<&'a str> {
    let head = resp.split("\r\n\r\n").next().unwrap_or_default();
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_outside_the_whitelist_is_refused_and_a_listed_one_served() {
    let (_dir, m, _) = single_member(&["--host-whitelist", "localhost,etcd.example"]).await;
    let ok = request(&m, "GET", "/version", &[("Host", "etcd.example:2379")]);
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let refused = request(&m, "GET", "/version", &[("Host", "evil.example:2379")]);
    assert!(refused.starts_with("HTTP/1.1 421"), "{refused}");
    assert_eq!(header(&refused, "content-type"), ["text/plain; charset=utf-8"]);
    let body = refused.split_once("\r\n\r\n").unwrap().1;
    assert!(body.starts_with("\netcd received your request, but the Host header was unrecognized.\n"), "{body}");
    assert!(body.contains("  - e.g. etcd --host-whitelist \"evil.example\"\n"), "{body}");
    // the gateway too; gRPC is not an HTTP path of the controller
    let refused = request(&m, "POST", "/v3/kv/range", &[("Host", "127.0.0.1:2379")]);
    assert!(refused.starts_with("HTTP/1.1 421"), "{refused}");
    assert!(m.log_shows("rejecting HTTP request to prevent DNS rebinding attacks"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_headers_name_any_origin_by_default_and_only_listed_origins_otherwise() {
    let (_dir, any, _) = single_member(&[]).await;
    let resp = request(&any, "GET", "/health", &[("Host", "localhost")]);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(header(&resp, "access-control-allow-origin"), ["*"]);
    assert_eq!(header(&resp, "access-control-allow-methods"), ["POST, GET, OPTIONS, PUT, DELETE"]);
    assert_eq!(header(&resp, "access-control-allow-headers"), ["accept, content-type, authorization"]);
    let preflight = request(&any, "OPTIONS", "/v3/kv/put", &[("Host", "localhost"), ("Origin", "https://ui.example")]);
    assert!(preflight.starts_with("HTTP/1.1 200"), "{preflight}");
    assert_eq!(header(&preflight, "access-control-allow-origin"), ["*"]);

    let (_dir2, listed, _) = single_member(&["--cors", "https://ui.example:443"]).await;
    let resp = request(&listed, "GET", "/health", &[("Host", "localhost"), ("Origin", "https://ui.example:443")]);
    assert_eq!(header(&resp, "access-control-allow-origin"), ["https://ui.example:443"]);
    let resp = request(&listed, "GET", "/health", &[("Host", "localhost"), ("Origin", "https://other.example")]);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(header(&resp, "access-control-allow-origin").is_empty(), "{resp}");
}
