//! Logging through tracing, shaped like etcd's: `--logger zap` writes one JSON object per line
//! with etcd's keys in zap's order (`level`, `ts` with milliseconds, `logger` when set, `caller`,
//! `msg`, then the event's fields, durations and sizes written as Go and go-humanize write them),
//! or with `--log-format console` zap's tab-separated console line; `--logger capnslog` writes
//! plain text. `--log-outputs` lists stderr (default), stdout and files (outputs.rs, with
//! `--enable-log-rotation`); `--log-level` filters. Operator-facing events use etcd's `msg`
//! texts and field names, so dashboards and runbooks written for etcd find them.

mod outputs;

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

pub use outputs::{Rotation, DEFAULT_LOG_ROTATION_CONFIG};

/// `--log-format`: zap's two encoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Console,
}

impl Format {
    /// etcd's logutil.ConvertToZapFormat ("" is json).
    pub fn parse(s: &str) -> Result<Format, String> {
        match s {
            "json" | "" => Ok(Format::Json),
            "console" => Ok(Format::Console),
            other => Err(format!("unknown log format: {other}, supported values json, console")),
        }
    }
}

/// The logging flags, checked as etcd's setupLogging checks them.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub logger: String,
    pub outputs: Vec<String>,
    pub level: &'static str,
    pub format: Format,
    /// `--enable-log-rotation`: the settings of `--log-rotation-config-json`.
    pub rotation: Option<Rotation>,
}

impl LogConfig {
    pub fn from_flags(
        logger: &str,
        log_outputs: &str,
        log_level: &str,
        log_format: &str,
        enable_log_rotation: bool,
        rotation_json: &str,
    ) -> Result<LogConfig, String> {
        let level = match log_level {
            "debug" => "debug",
            "info" => "info",
            "warn" => "warn",
            "error" | "dpanic" | "panic" | "fatal" => "error",
            other => return Err(format!("--log-level: unknown level {other:?} (debug, info, warn, error, panic, fatal)")),
        };
        if !matches!(logger, "zap" | "capnslog") {
            return Err(format!("--logger: unknown logger {logger:?} (zap or capnslog)"));
        }
        let mut outputs: Vec<String> = log_outputs.split(',').map(str::trim).filter(|o| !o.is_empty()).map(String::from).collect();
        if outputs.is_empty() {
            outputs.push("default".into());
        }
        if outputs.len() > 1 && outputs.iter().any(|o| o == "default") {
            return Err("multi logoutput for \"default\" is not supported yet".into());
        }
        let format = Format::parse(log_format)?;
        let rotation = if enable_log_rotation { Some(Rotation::parse(&outputs, rotation_json)?) } else { None };
        Ok(LogConfig { logger: logger.to_string(), outputs, level, format, rotation })
    }
}

pub fn init(cfg: &LogConfig) -> Result<(), String> {
    // raft-rs is chatty at info; keep it one level quieter unless debugging.
    let level = cfg.level;
    let filter = EnvFilter::try_new(format!("{level},raft={}", if level == "debug" { "debug" } else { "warn" }))
        .map_err(|e| e.to_string())?;
    let writer = Mutex::new(outputs::Outputs::open(&cfg.outputs, cfg.rotation.as_ref())?);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match cfg.logger.as_str() {
        "zap" => builder.event_format(EtcdZap(cfg.format)).init(),
        _ => builder.with_ansi(false).with_target(true).init(),
    }
    Ok(())
}

/// etcd's zap encoders: one JSON object per event with etcd's key names, or (`--log-format
/// console`) zap's tab-separated console line.
pub struct EtcdZap(pub Format);

impl<S, N> FormatEvent<S, N> for EtcdZap
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let ts = now_iso8601();
        match self.0 {
            Format::Json => writeln!(writer, "{}", render(event, &ts)),
            Format::Console => writeln!(writer, "{}", render_console(event, &ts)),
        }
    }
}

/// An event's parts in zap's order: level, ts, logger (a `logger` field, e.g. "raft"), caller,
/// msg, then the event's fields.
struct Parts {
    level: String,
    logger: Option<serde_json::Value>,
    caller: String,
    msg: String,
    fields: serde_json::Map<String, serde_json::Value>,
}

fn parts(event: &Event<'_>) -> Parts {
    let meta = event.metadata();
    let caller = match (meta.file(), meta.line()) {
        (Some(f), Some(l)) => format!("{}:{l}", short_path(f)),
        _ => meta.target().to_string(),
    };
    let mut visitor = FieldsToJson::default();
    event.record(&mut visitor);
    let mut fields = serde_json::Map::new();
    let mut logger = None;
    for (k, v) in visitor.fields {
        if k == "logger" {
            logger = Some(v);
        } else {
            fields.insert(k, v);
        }
    }
    Parts {
        level: meta.level().as_str().to_ascii_lowercase(),
        logger,
        caller,
        msg: visitor.message.unwrap_or_default(),
        fields,
    }
}

fn render(event: &Event<'_>, ts: &str) -> String {
    let p = parts(event);
    let mut obj = serde_json::Map::new();
    obj.insert("level".into(), p.level.into());
    obj.insert("ts".into(), ts.into());
    if let Some(l) = p.logger {
        obj.insert("logger".into(), l);
    }
    obj.insert("caller".into(), p.caller.into());
    obj.insert("msg".into(), p.msg.into());
    obj.extend(p.fields);
    serde_json::Value::Object(obj).to_string()
}

/// zap's console encoder: `ts<TAB>level<TAB>[logger<TAB>]caller<TAB>msg[<TAB>{fields}]`.
fn render_console(event: &Event<'_>, ts: &str) -> String {
    let p = parts(event);
    let mut line = format!("{ts}\t{}\t", p.level);
    if let Some(l) = p.logger {
        line.push_str(l.as_str().unwrap_or_default());
        line.push('\t');
    }
    line.push_str(&p.caller);
    line.push('\t');
    line.push_str(&p.msg);
    if !p.fields.is_empty() {
        line.push('\t');
        line.push_str(&serde_json::Value::Object(p.fields).to_string());
    }
    line
}

/// zap's ShortCallerEncoder keeps a file's package dir: `server/src/apply.rs` -> `server/apply.rs`,
/// `server/src/etcd_server/versions.rs` -> `etcd_server/versions.rs`.
fn short_path(file: &str) -> String {
    let parts: Vec<&str> = file.split('/').filter(|p| *p != "src").collect();
    match parts.as_slice() {
        [.., dir, name] => format!("{dir}/{name}"),
        [name] => name.to_string(),
        [] => file.to_string(),
    }
}

/// Marks a field's Debug text as JSON to embed as is.
const JSON_MARK: &str = "\u{1}json:";

/// A field value written into the JSON line as JSON (a list of URLs, as etcd's `zap.Strings`),
/// not as a string: `"added-peer-peer-urls" = ?logging::json(&urls)`.
pub struct JsonField(String);

pub fn json<T: serde::Serialize + ?Sized>(v: &T) -> JsonField {
    JsonField(serde_json::to_string(v).unwrap_or_else(|_| "null".into()))
}

impl fmt::Debug for JsonField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{JSON_MARK}{}", self.0)
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
        } else if let Some(json) = v.strip_prefix(JSON_MARK) {
            let value = serde_json::from_str(json).unwrap_or_else(|_| json.into());
            self.fields.push((field.name().to_string(), value));
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

/// A duration as Go's `time.Duration.String()` writes it, as etcd's zap logs durations
/// ("21.592µs", "8.416317ms", "8.536006821s", "1m30s", "7s").
pub fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    let frac = |whole: u128, rem: u128, digits: usize| -> String {
        let f = format!("{rem:0digits$}");
        let f = f.trim_end_matches('0');
        if f.is_empty() { whole.to_string() } else { format!("{whole}.{f}") }
    };
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}µs", frac(ns / 1_000, ns % 1_000, 3));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", frac(ns / 1_000_000, ns % 1_000_000, 6));
    }
    let secs = ns / 1_000_000_000;
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let s = format!("{}s", frac(s, ns % 1_000_000_000, 9));
    match (h, m) {
        (0, 0) => s,
        (0, m) => format!("{m}m{s}"),
        (h, m) => format!("{h}h{m}m{s}"),
    }
}

/// A byte count as go-humanize's `Bytes` writes it in etcd's logs ("9.6 kB", "25 kB").
pub fn human_bytes(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = (((n as f64).ln() / 1000f64.ln()).floor() as usize).min(UNITS.len() - 1);
    let val = ((n as f64) / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {}", UNITS[e])
    } else {
        format!("{val:.0} {}", UNITS[e])
    }
}

/// UTC timestamp with milliseconds, as etcd's zap encoder (ISO8601) writes it.
fn now_iso8601() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format_utc(d.as_secs() as i64, d.subsec_millis(), 3)
}

/// `2006-01-02T15:04:05.000Z`: `frac` written with `digits` digits.
fn format_utc(secs: i64, frac: u32, digits: usize) -> String {
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
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{frac:0digits$}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting_has_zaps_millisecond_precision() {
        assert_eq!(format_utc(0, 0, 3), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc(951_782_400, 5, 3), "2000-02-29T00:00:00.005Z");
        assert_eq!(format_utc(1_795_282_957, 144, 3), "2026-11-21T17:42:37.144Z");
    }

    #[test]
    fn durations_and_sizes_are_written_as_go_and_humanize_write_them() {
        for (d, want) in [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(21_592), "21.592µs"),
            (Duration::from_nanos(8_416_317), "8.416317ms"),
            (Duration::from_millis(100), "100ms"),
            (Duration::from_nanos(8_536_006_821), "8.536006821s"),
            (Duration::from_secs(7), "7s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::from_nanos(500), "500ns"),
        ] {
            assert_eq!(go_duration(d), want);
        }
        for (n, want) in [(0, "0 B"), (9587, "9.6 kB"), (24576, "25 kB"), (34163, "34 kB"), (1_500_000, "1.5 MB")] {
            assert_eq!(human_bytes(n), want);
        }
    }

    #[test]
    fn logging_flags_are_checked_with_etcds_messages() {
        let cfg = |outputs: &str, format: &str, rotate: bool, json: &str| LogConfig::from_flags("zap", outputs, "info", format, rotate, json);
        assert_eq!(cfg("stderr", "", false, "").unwrap().format, Format::Json);
        assert_eq!(cfg("stderr", "console", false, "").unwrap().format, Format::Console);
        assert_eq!(cfg("stderr", "text", false, "").unwrap_err(), "unknown log format: text, supported values json, console");
        assert_eq!(cfg("default,/tmp/x.log", "json", false, "").unwrap_err(), "multi logoutput for \"default\" is not supported yet");
        assert_eq!(cfg("stderr,/tmp/x.log", "json", false, "").unwrap().outputs, ["stderr", "/tmp/x.log"]);
        assert_eq!(cfg("stderr", "json", true, DEFAULT_LOG_ROTATION_CONFIG).unwrap_err(), outputs::ERR_ROTATION_INVALID_OUTPUT);
        assert!(cfg("/tmp/x.log", "json", true, DEFAULT_LOG_ROTATION_CONFIG).unwrap().rotation.is_some());
        // the rotation settings are read only with --enable-log-rotation, as etcd
        assert!(cfg("/tmp/x.log", "json", false, "{bad").unwrap().rotation.is_none());
    }

    fn capture(f: impl FnOnce()) -> Vec<(String, String)> {
        use std::sync::{Arc, Mutex as StdMutex};
        let out: Arc<StdMutex<Vec<(String, String)>>> = Arc::default();
        struct Capture(Arc<StdMutex<Vec<(String, String)>>>);
        impl<S: Subscriber> tracing_subscriber::Layer<S> for Capture {
            fn on_event(&self, event: &Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
                self.0.lock().unwrap().push((render(event, "T"), render_console(event, "T")));
            }
        }
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(Capture(out.clone()));
        tracing::subscriber::with_default(subscriber, f);
        let v = out.lock().unwrap().clone();
        v
    }

    #[test]
    fn events_render_with_etcds_keys_in_zaps_order() {
        let lines = capture(|| {
            let urls = vec!["http://127.0.0.1:2380".to_string()];
            tracing::info!("local-member-id" = "8e9e05c52164694d", index = 7u64, "added-peer-peer-urls" = ?json(&urls), "added member");
            tracing::info!(logger = "raft", "raft.node: 1 elected leader 2 at term 3");
        });
        let (line, console) = &lines[0];
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["level"], "info");
        assert_eq!(v["ts"], "T");
        assert_eq!(v["msg"], "added member");
        assert_eq!(v["local-member-id"], "8e9e05c52164694d");
        assert_eq!(v["index"], 7);
        assert_eq!(v["added-peer-peer-urls"], serde_json::json!(["http://127.0.0.1:2380"]));
        assert!(v["caller"].as_str().unwrap().starts_with("server/logging.rs:"), "{line}");
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys[..4], ["level", "ts", "caller", "msg"]);
        let cols: Vec<&str> = console.split('\t').collect();
        assert_eq!(cols[..2], ["T", "info"]);
        assert!(cols[2].starts_with("server/logging.rs:"));
        assert_eq!(cols[3], "added member");
        assert_eq!(cols[4], r#"{"local-member-id":"8e9e05c52164694d","index":7,"added-peer-peer-urls":["http://127.0.0.1:2380"]}"#);
        let (raft, raft_console) = &lines[1];
        let v: serde_json::Value = serde_json::from_str(raft).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["level", "ts", "logger", "caller", "msg"]);
        assert_eq!(raft_console.split('\t').nth(2), Some("raft"));
    }
}
