//! etcd's access controller in front of the client listener's HTTP paths (gateway, `/health`,
//! `/version`, `/metrics`; gRPC calls are dispatched before it, as etcd serves them apart):
//!
//! - `--host-whitelist`: a plain-text request whose `Host` is not listed is refused with 421
//!   (DNS rebinding, CVE-2018-5702); TLS requests are not checked.
//! - a gateway call (`/v3/...`, `/v3beta/...`) on a TLS connection whose verified client
//!   certificate has a CommonName is refused with 400 while `--client-cert-auth` and auth are
//!   on: the gateway cannot act as that user, and etcd says so rather than ignore it.
//! - `--cors`: the `Access-Control-*` headers on every answer, and `OPTIONS` answered 200.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::etcd_server::EtcdServer;
use crate::tls::TlsConnectInfo;

/// A comma-separated allow list as etcd parses `--cors` / `--host-whitelist`: empty or
/// holding "*" allows everything.
#[derive(Debug, Clone, PartialEq)]
pub struct AllowList(Option<HashSet<String>>);

impl AllowList {
    pub fn parse(s: &str) -> AllowList {
        let set: HashSet<String> = s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect();
        if set.is_empty() || set.contains("*") {
            AllowList(None)
        } else {
            AllowList(Some(set))
        }
    }

    fn allows_all(&self) -> bool {
        self.0.is_none()
    }

    fn allows(&self, item: &str) -> bool {
        self.0.as_ref().is_none_or(|set| set.contains(item))
    }
}

/// What the controller checks, from the member's flags.
#[derive(Clone)]
pub struct AccessControl {
    pub cors: AllowList,
    pub hosts: AllowList,
    server: Arc<EtcdServer>,
}

impl AccessControl {
    pub fn new(server: Arc<EtcdServer>) -> AccessControl {
        let cfg = server.config();
        AccessControl { cors: AllowList::parse(&cfg.cors), hosts: AllowList::parse(&cfg.host_whitelist), server }
    }
}

/// The axum middleware (`from_fn_with_state`).
pub async fn control(State(ac): State<AccessControl>, req: Request, next: Next) -> Response {
    let tls = req.extensions().get::<TlsConnectInfo>().cloned();
    match &tls {
        None => {
            let host = hostname(&req);
            if !ac.hosts.allows(&host) {
                tracing::warn!(host = %host, "rejecting HTTP request to prevent DNS rebinding attacks");
                return go_http_error(StatusCode::MISDIRECTED_REQUEST, &dns_rebinding_text(&host));
            }
        }
        Some(info) => {
            let gateway = req.uri().path().starts_with("/v3/") || req.uri().path().starts_with("/v3beta/");
            let named_cert = info.client_cn.as_deref().is_some_and(|cn| !cn.is_empty());
            if gateway && named_cert && ac.server.config().client_tls.client_cert_auth && ac.server.auth_enabled() {
                return go_http_error(
                    StatusCode::BAD_REQUEST,
                    "CommonName of client sending a request against gateway will be ignored and not used as expected",
                );
            }
        }
    }
    let origin = if ac.cors.allows_all() {
        Some(HeaderValue::from_static("*"))
    } else {
        req.headers().get(header::ORIGIN).filter(|o| o.to_str().is_ok_and(|o| ac.cors.allows(o))).cloned()
    };
    let mut resp = if req.method() == axum::http::Method::OPTIONS { StatusCode::OK.into_response() } else { next.run(req).await };
    if let Some(origin) = origin {
        add_cors_headers(resp.headers_mut(), origin);
    }
    resp
}

fn add_cors_headers(h: &mut HeaderMap, origin: HeaderValue) {
    h.append("access-control-allow-methods", HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"));
    h.append("access-control-allow-origin", origin);
    h.append("access-control-allow-headers", HeaderValue::from_static("accept, content-type, authorization"));
}

/// The request's host name without the port (Go's `Request.Host`: the Host header in HTTP/1,
/// the :authority in HTTP/2).
fn hostname(req: &Request) -> String {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    split_host(&host).to_string()
}

/// Go's net.SplitHostPort host part, or the whole text when it has no port.
fn split_host(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((h, port)) = rest.split_once(']') {
            if port.starts_with(':') {
                return h;
            }
        }
        return host;
    }
    match host.rsplit_once(':') {
        Some((h, _)) if !h.contains(':') => h,
        _ => host,
    }
}

/// Go's http.Error: the text and a newline, as plain text, not sniffed.
fn go_http_error(status: StatusCode, text: &str) -> Response {
    let mut resp = (status, format!("{text}\n")).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    resp
}

/// etcd's answer to a host not in `--host-whitelist`, word for word.
fn dns_rebinding_text(host: &str) -> String {
    format!(
        "\netcd received your request, but the Host header was unrecognized.\n\n\
         To fix this, choose one of the following options:\n\
         - Enable TLS, then any HTTPS request will be allowed.\n\
         - Add the hostname you want to use to the whitelist in settings.\n  \
         - e.g. etcd --host-whitelist {host:?}\n\n\
         This requirement has been added to help prevent \"DNS Rebinding\" attacks (CVE-2018-5702).\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_are_read_as_etcd_reads_them() {
        assert!(AllowList::parse("*").allows_all());
        assert!(AllowList::parse("").allows_all());
        assert!(AllowList::parse("a.example, *").allows_all());
        let l = AllowList::parse("a.example,b.example");
        assert!(!l.allows_all());
        assert!(l.allows("b.example"));
        assert!(!l.allows("c.example"));
        assert!(!l.allows(""));
    }

    #[test]
    fn the_port_is_cut_off_the_host_as_go_splits_it() {
        assert_eq!(split_host("localhost:2379"), "localhost");
        assert_eq!(split_host("localhost"), "localhost");
        assert_eq!(split_host("[::1]:2379"), "::1");
        assert_eq!(split_host("::1"), "::1");
    }

    #[test]
    fn the_dns_rebinding_answer_names_the_host_quoted() {
        let t = dns_rebinding_text("evil.example");
        assert!(t.starts_with("\netcd received your request, but the Host header was unrecognized.\n\nTo fix this"));
        assert!(t.contains("  - e.g. etcd --host-whitelist \"evil.example\"\n\nThis requirement"));
    }
}
