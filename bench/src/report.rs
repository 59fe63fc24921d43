//! Printing a run: etcd benchmark's text summary, or one JSON line with `--json`.

use crate::histogram::Histogram;
use crate::runner::RunResult;
use serde_json::{json, Map, Value};

pub const QUANTILES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)];

fn ms(ns: f64) -> f64 {
    ns / 1e6
}

pub fn latency_json(h: &Histogram) -> Value {
    let mut m = Map::new();
    m.insert("count".into(), json!(h.count()));
    m.insert("avg".into(), json!(ms(h.mean())));
    m.insert("min".into(), json!(ms(h.min() as f64)));
    for (name, q) in QUANTILES {
        m.insert(name.into(), json!(ms(h.quantile(q) as f64)));
    }
    m.insert("max".into(), json!(ms(h.max() as f64)));
    Value::Object(m)
}

/// The load generator's CPU time per request it sent (ok or not), in microseconds.
fn cpu_us_per_request(r: &RunResult) -> f64 {
    let sent = r.latency.count() + r.error_count();
    r.cpu.as_secs_f64() * 1e6 / sent.max(1) as f64
}

/// The machine-readable line: throughput in requests/s, latencies in milliseconds.
pub fn to_json(workload: &str, r: &RunResult, extra: &Map<String, Value>) -> Value {
    let secs = r.elapsed.as_secs_f64();
    let mut m = Map::new();
    m.insert("workload".into(), json!(workload));
    m.insert("requests".into(), json!(r.latency.count()));
    m.insert("errors".into(), json!(r.error_count()));
    m.insert("conflicts".into(), json!(r.conflicts));
    m.insert("elapsed_s".into(), json!(secs));
    m.insert("throughput".into(), json!(r.latency.count() as f64 / secs.max(1e-9)));
    m.insert("latency_ms".into(), latency_json(&r.latency));
    m.insert("client_cpu_us_per_req".into(), json!(cpu_us_per_request(r)));
    if r.by_kind.len() > 1 {
        let kinds: Map<String, Value> = r.by_kind.iter().map(|(k, h)| (k.to_string(), latency_json(h))).collect();
        m.insert("kinds".into(), Value::Object(kinds));
    }
    if !r.errors.is_empty() {
        let errs: Map<String, Value> = r.errors.iter().map(|(k, n)| (k.clone(), json!(n))).collect();
        m.insert("error_kinds".into(), Value::Object(errs));
    }
    for (k, v) in extra {
        m.insert(k.clone(), v.clone());
    }
    Value::Object(m)
}

/// etcd tools/benchmark's summary layout (seconds), plus p99.9, errors and per-operation lines.
pub fn to_text(workload: &str, r: &RunResult, extra: &Map<String, Value>, precise: bool) -> String {
    let f = |ns: f64| if precise { format!("{}", ns / 1e9) } else { format!("{:.4}", ns / 1e9) };
    let h = &r.latency;
    let secs = r.elapsed.as_secs_f64();
    let mut s = format!("\n{workload} summary:\n");
    s += &format!("  Total:\t{} secs.\n", f(secs * 1e9));
    s += &format!("  Slowest:\t{} secs.\n", f(h.max() as f64));
    s += &format!("  Fastest:\t{} secs.\n", f(h.min() as f64));
    s += &format!("  Average:\t{} secs.\n", f(h.mean()));
    s += &format!("  Stddev:\t{} secs.\n", f(h.stddev()));
    s += &format!("  Requests/sec:\t{:.4}\n", h.count() as f64 / secs.max(1e-9));
    s += &format!("  Client CPU:\t{:.1} µs/request\n", cpu_us_per_request(r));
    s += &format!("  Requests:\t{} ok, {} errors, {} CAS conflicts\n", h.count(), r.error_count(), r.conflicts);
    s += "\nLatency distribution:\n";
    for (label, q) in [("10%", 0.1), ("25%", 0.25), ("50%", 0.5), ("75%", 0.75), ("90%", 0.9), ("95%", 0.95), ("99%", 0.99), ("99.9%", 0.999)] {
        s += &format!("  {label} in {} secs.\n", f(h.quantile(q) as f64));
    }
    if r.by_kind.len() > 1 {
        s += "\nBy operation (count, p50 / p99 / max secs):\n";
        for (k, h) in &r.by_kind {
            s += &format!("  {k}:\t{}\t{} / {} / {}\n", h.count(), f(h.quantile(0.5) as f64), f(h.quantile(0.99) as f64), f(h.max() as f64));
        }
    }
    if !r.errors.is_empty() {
        s += "\nError distribution:\n";
        for (e, n) in &r.errors {
            s += &format!("  [{n}]\t{e}\n");
        }
    }
    for (k, v) in extra {
        s += &format!("  {k}: {v}\n");
    }
    s
}
