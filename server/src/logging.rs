//! Logging through tracing, shaped like etcd's: `--logger zap` writes one JSON object per line
//! with etcd's keys (`level`, `ts`, `caller`, `msg`, then the event's fields), so log shippers
//! and scripts written for etcd keep working; `--logger capnslog` writes plain text.
//! `--log-outputs` picks stderr (default), stdout or a file path; `--log-level` filters.

use std::fmt;
use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

pub fn init(logger: &str, log_outputs: &str, log_level: &str) -> Result<(), String> {
    let level = match log_level {
        "debug" => "debug",
        "info" => "info",
        "warn" => "warn",
        "error" | "dpanic" | "panic" | "fatal" => "error",
        other => return Err(format!("--log-level: unknown level {other:?} (debug, info, warn, error, panic, fatal)")),
    };
    // raft-rs is chatty at info; keep it one level quieter unless debugging.
    let filter = EnvFilter::try_new(format!("{level},raft={}", if level == "debug" { "debug" } else { "warn" }))
        .map_err(|e| e.to_string())?;
    let output = log_outputs.split(',').next().unwrap_or("default").trim();
    let writer = match output {
        "default" | "stderr" => BoxMakeWriter::new(std::io::stderr),
        "stdout" => BoxMakeWriter::new(std::io::stdout),
        path => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("--log-outputs: cannot open {path}: {e}"))?;
            BoxMakeWriter::new(Mutex::new(f))
        }
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match logger {
        "zap" => builder.event_format(EtcdJson).init(),
        "capnslog" => builder.with_ansi(false).with_target(true).init(),
        other => return Err(format!("--logger: unknown logger {other:?} (zap or capnslog)")),
    }
    Ok(())
}

/// One JSON object per event with etcd's (zap's) key names.
pub struct EtcdJson;

impl<S, N> FormatEvent<S, N> for EtcdJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        writeln!(writer, "{}", render(event, &now_rfc3339()))
    }
}

fn render(event: &Event<'_>, ts: &str) -> String {
    let meta = event.metadata();
    let mut obj = serde_json::Map::new();
    obj.insert("level".into(), meta.level().as_str().to_ascii_lowercase().into());
    obj.insert("ts".into(), ts.into());
    let caller = match (meta.file(), meta.line()) {
        (Some(f), Some(l)) => format!("{}:{l}", short_path(f)),
        _ => meta.target().to_string(),
    };
    obj.insert("caller".into(), caller.into());
    let mut fields = FieldsToJson::default();
    event.record(&mut fields);
    obj.insert("msg".into(), fields.message.unwrap_or_default().into());
    for (k, v) in fields.fields {
        obj.insert(k, v);
    }
    serde_json::Value::Object(obj).to_string()
}

/// "server/src/apply.rs" -> "apply.rs" inside its crate dir, like zap's short caller.
fn short_path(file: &str) -> String {
    let parts: Vec<&str> = file.rsplit('/').take(2).collect();
    match parts.as_slice() {
        [name, dir] => format!("{dir}/{name}"),
        [name] => name.to_string(),
        _ => file.to_string(),
    }
}

#[derive(Default)]
struct FieldsToJson {
    message: Option<String>,
    fields: Vec<(String, serde_json::Value)>,
}

impl Visit for FieldsToJson {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let v = format!("{value:?}");
        if field.name() == "message" {
            self.message = Some(v);
        } else {
            self.fields.push((field.name().to_string(), v.into()));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_string());
        } else {
            self.fields.push((field.name().to_string(), value.into()));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.push((field.name().to_string(), value.into()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.push((field.name().to_string(), value.into()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name().to_string(), value.into()));
    }
}

/// UTC timestamp with microseconds, as etcd's zap encoder writes it (ISO8601).
fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format_utc(d.as_secs() as i64, d.subsec_micros())
}

fn format_utc(secs: i64, micros: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{micros:06}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_utc(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(format_utc(1_795_282_957, 144_402), "2026-11-21T17:42:37.144402Z");
    }

    #[test]
    fn events_render_with_etcds_keys() {
        use std::sync::{Arc, Mutex as StdMutex};
        let out: Arc<StdMutex<Vec<String>>> = Arc::default();
        struct Capture(Arc<StdMutex<Vec<String>>>);
        impl<S: Subscriber> tracing_subscriber::Layer<S> for Capture {
            fn on_event(&self, event: &Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
                self.0.lock().unwrap().push(render(event, "T"));
            }
        }
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(Capture(out.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(member_id = "8e9e05c52164694d", index = 7u64, "published local member to cluster through raft");
        });
        let line = out.lock().unwrap()[0].clone();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "info");
        assert_eq!(v["ts"], "T");
        assert_eq!(v["msg"], "published local member to cluster through raft");
        assert_eq!(v["member_id"], "8e9e05c52164694d");
        assert_eq!(v["index"], 7);
        assert!(v["caller"].as_str().unwrap().starts_with("src/logging.rs:"), "{line}");
    }
}
