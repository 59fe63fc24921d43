//! The HTTP endpoints a load balancer or kubelet probes, served on the client port and on every
//! `--listen-metrics-urls` listener: `/metrics`, `/health`, `/livez`, `/readyz` (etcd 3.5.11+).
//!
//! What each answers is etcd 3.5's (the release etcd-rs reports):
//! - `/health`: an alarm not named by `?exclude=` fails it ("ALARM NOSPACE"), then no leader
//!   ("RAFT NO LEADER"), then a range read ("RANGE ERROR:..."). `?serializable=true` (3.5.3+)
//!   skips the leader check and reads locally, so a member cut off from quorum stays healthy.
//!   JSON `{"health":"true","reason":""}` (3.4's `{"health":"true"}` when `--etcd-api-version`
//!   reports a 3.4 release); 503 with the JSON and a newline when unhealthy.
//! - `/livez`: `serializable_read`; `/readyz`: `data_corruption`, `serializable_read`,
//!   `linearizable_read`. `?exclude=<check>` skips a check, `/<endpoint>/<check>` runs one,
//!   `?verbose` lists the checks before `ok`. A failure is 503 with the list of checks. etcd
//!   runs and lists them in Go map order (random); etcd-rs in the order of [`Probe::checks`].
//! - only GET: anything else is 405 with `Allow: GET`.

use std::sync::{Arc, LazyLock};

use axum::extract::RawQuery;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use etcd_proto::etcdserverpb::{AlarmType, RangeRequest};
use prometheus::{register_int_counter, register_int_counter_vec, register_int_gauge_vec, IntCounter, IntCounterVec, IntGaugeVec};

use crate::etcd_server::EtcdServer;

static HEALTH_SUCCESS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("etcd_server_health_success", "The total number of successful health checks")
        .expect("metric registers once")
});
static HEALTH_FAILED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("etcd_server_health_failures", "The total number of failed health checks")
        .expect("metric registers once")
});
static HEALTHCHECK: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!("etcd_server_healthcheck", "The result of each kind of healthcheck.", &["type", "name"])
        .expect("metric registers once")
});
static HEALTHCHECKS_TOTAL: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "etcd_server_healthchecks_total",
        "The total number of each kind of healthcheck.",
        &["type", "name", "status"]
    )
    .expect("metric registers once")
});

/// Registers the health metrics, so they are listed from the first scrape.
pub fn register_metrics() {
    LazyLock::force(&HEALTH_SUCCESS);
    LazyLock::force(&HEALTH_FAILED);
    LazyLock::force(&HEALTHCHECK);
    LazyLock::force(&HEALTHCHECKS_TOTAL);
}

/// The routes: `/metrics`, `/health`, `/livez[/<check>]`, `/readyz[/<check>]`.
pub fn router(server: Arc<EtcdServer>) -> Router {
    let (s1, s2, s3, s4, s5) = (server.clone(), server.clone(), server.clone(), server.clone(), server);
    let mut router = Router::new()
        .route(
            "/metrics",
            any(move || {
                let s = s1.clone();
                async move {
                    let body = crate::metrics::render(&s);
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
                }
            }),
        )
        .route(
            "/health",
            any(move |method: Method, q: RawQuery| {
                let s = s2.clone();
                async move {
                    if method != Method::GET {
                        return method_not_allowed();
                    }
                    health(&s, &Query::parse(q.0.as_deref())).await
                }
            }),
        )
        .route(
            "/livez",
            any(move |method: Method, q: RawQuery| checks(s3.clone(), Probe::Livez, method, q.0, None)),
        )
        .route(
            "/readyz",
            any(move |method: Method, q: RawQuery| checks(s4.clone(), Probe::Readyz, method, q.0, None)),
        );
    // one route per check: a catch-all would shadow gRPC calls to unknown services
    for probe in [Probe::Livez, Probe::Readyz] {
        for check in probe.checks() {
            let s = s5.clone();
            router = router.route(
                &format!("/{}/{check}", probe.name()),
                any(move |method: Method, q: RawQuery| checks(s.clone(), probe, method, q.0, Some(check))),
            );
        }
    }
    router
}

/// What a `--listen-metrics-urls` listener serves: these endpoints only, 404 for anything else.
pub fn metrics_listener_routes(server: Arc<EtcdServer>) -> tonic::service::Routes {
    let router = router(server).fallback(|| async { http_error(StatusCode::NOT_FOUND, "404 page not found") });
    tonic::service::Routes::from(router)
}

/// The query parameters the health endpoints read (Go's url.Query: repeated keys, %-decoding).
#[derive(Default)]
struct Query {
    exclude: Vec<String>,
    serializable: bool,
    verbose: bool,
}

impl Query {
    fn parse(q: Option<&str>) -> Query {
        let mut out = Query::default();
        let mut serializable_seen = false;
        for pair in q.unwrap_or("").split(['&', ';']).filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (percent_decode(k), percent_decode(v));
            match k.as_str() {
                "exclude" if !v.is_empty() => out.exclude.push(v),
                // url.Values.Get: the first value counts
                "serializable" if !serializable_seen => {
                    serializable_seen = true;
                    out.serializable = v == "true";
                }
                "verbose" => out.verbose = true,
                _ => {}
            }
        }
        out
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
}

/// Go's http.Error: the message and a newline, as plain text.
fn http_error(status: StatusCode, msg: &str) -> Response {
    let mut resp = (status, format!("{msg}\n")).into_response();
    text_headers(&mut resp);
    resp
}

fn method_not_allowed() -> Response {
    let mut resp = http_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
    resp
}

/// A local (serializable) or linearizable read of one key, as etcd's health probes read.
async fn read_check(server: &EtcdServer, serializable: bool) -> Result<(), String> {
    let probe = RangeRequest { key: b"health".to_vec(), keys_only: true, limit: 1, serializable, ..Default::default() };
    match tokio::time::timeout(server.request_timeout(), server.range(probe, None)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(crate::errors::ServerError::Timeout.to_string()),
    }
}

fn alarm_name(alarm: i32) -> &'static str {
    match AlarmType::try_from(alarm) {
        Ok(AlarmType::Nospace) => "NOSPACE",
        Ok(AlarmType::Corrupt) => "CORRUPT",
        _ => "UNKNOWN",
    }
}

async fn health(server: &EtcdServer, q: &Query) -> Response {
    let raised = server
        .alarms()
        .get(AlarmType::None as i32)
        .into_iter()
        .find(|m| {
            let name = AlarmType::try_from(m.alarm).map(|a| a.as_str_name()).unwrap_or("UNKNOWN");
            !q.exclude.iter().any(|x| x == name)
        });
    let reason = if let Some(m) = raised {
        Some(format!("ALARM {}", alarm_name(m.alarm)))
    } else if !q.serializable && !server.has_leader() {
        Some("RAFT NO LEADER".to_string())
    } else {
        read_check(server, q.serializable).await.err().map(|e| format!("RANGE ERROR:{e}"))
    };
    let ok = reason.is_none();
    let body = health_body(ok, reason.as_deref(), &server.config().etcd_api_version);
    if ok {
        HEALTH_SUCCESS.inc();
        let mut resp = (StatusCode::OK, body).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        resp
    } else {
        HEALTH_FAILED.inc();
        tracing::warn!(output = %body, "/health error");
        http_error(StatusCode::SERVICE_UNAVAILABLE, &body)
    }
}

/// `/health`'s JSON as the reported etcd version writes it: 3.4 has no `reason` field.
fn health_body(ok: bool, reason: Option<&str>, api_version: &str) -> String {
    if api_version.starts_with("3.4.") {
        serde_json::json!({"health": ok.to_string()}).to_string()
    } else {
        serde_json::json!({"health": ok.to_string(), "reason": reason.unwrap_or_default()}).to_string()
    }
}

#[derive(Clone, Copy)]
enum Probe {
    Livez,
    Readyz,
}

impl Probe {
    fn name(self) -> &'static str {
        match self {
            Probe::Livez => "livez",
            Probe::Readyz => "readyz",
        }
    }

    /// The checks, in the order they run and are listed.
    fn checks(self) -> &'static [&'static str] {
        match self {
            // a member that lost its leader is alive: restarting it would not bring one back
            Probe::Livez => &["serializable_read"],
            Probe::Readyz => &["data_corruption", "serializable_read", "linearizable_read"],
        }
    }
}

async fn run_check(server: &EtcdServer, check: &str) -> Result<(), String> {
    match check {
        "data_corruption" => {
            if server.alarms().get(AlarmType::Corrupt as i32).is_empty() {
                Ok(())
            } else {
                Err("alarm activated: CORRUPT".to_string())
            }
        }
        "serializable_read" => read_check(server, true).await,
        "linearizable_read" => read_check(server, false).await,
        other => Err(format!("unknown check {other}")),
    }
}

/// `/livez`, `/readyz` (all their checks but the excluded ones) or one check (`only`).
async fn checks(server: Arc<EtcdServer>, probe: Probe, method: Method, query: Option<String>, only: Option<&'static str>) -> Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    let q = Query::parse(query.as_deref());
    let names: Vec<&str> = match &only {
        Some(one) => vec![one],
        None => {
            let unknown: Vec<&String> = q.exclude.iter().filter(|x| !probe.checks().contains(&x.as_str())).collect();
            if !unknown.is_empty() {
                tracing::warn!(missing_health_checks = ?unknown, "some health checks cannot be excluded");
            }
            probe.checks().iter().copied().filter(|c| !q.exclude.iter().any(|x| x == c)).collect()
        }
    };
    let mut reason = String::new();
    let mut failed = false;
    for name in names {
        let status = match run_check(&server, name).await {
            Ok(()) => {
                reason.push_str(&format!("[+]{name} ok\n"));
                "success"
            }
            Err(e) => {
                failed = true;
                reason.push_str(&format!("[-]{name} failed: {e}\n"));
                "error"
            }
        };
        HEALTHCHECK.with_label_values(&[probe.name(), name]).set(i64::from(status == "success"));
        HEALTHCHECKS_TOTAL.with_label_values(&[probe.name(), name, status]).inc();
    }
    if failed {
        tracing::error!(path = %format!("/{}", probe.name()), reason = %reason, "Health check error");
        return http_error(StatusCode::SERVICE_UNAVAILABLE, &reason);
    }
    let body = if q.verbose { format!("{reason}ok\n") } else { "ok\n".to_string() };
    let mut resp = (StatusCode::OK, body).into_response();
    text_headers(&mut resp);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_read_as_go_reads_it() {
        let q = Query::parse(Some("exclude=NOSPACE&serializable=true&exclude=&exclude=CORRUPT&verbose"));
        assert_eq!(q.exclude, ["NOSPACE", "CORRUPT"]);
        assert!(q.serializable && q.verbose);
        let q = Query::parse(Some("serializable=false&serializable=true&exclude=linearizable%5Fread"));
        assert!(!q.serializable && !q.verbose);
        assert_eq!(q.exclude, ["linearizable_read"]);
        let q = Query::parse(None);
        assert!(q.exclude.is_empty() && !q.serializable);
    }

    #[test]
    fn health_body_has_a_reason_from_3_5_on() {
        assert_eq!(health_body(true, None, "3.5.17"), r#"{"health":"true","reason":""}"#);
        assert_eq!(health_body(false, Some("RAFT NO LEADER"), "3.5.1"), r#"{"health":"false","reason":"RAFT NO LEADER"}"#);
        assert_eq!(health_body(true, None, "3.4.23"), r#"{"health":"true"}"#);
        assert_eq!(health_body(false, Some("RAFT NO LEADER"), "3.4.23"), r#"{"health":"false"}"#);
    }
}
