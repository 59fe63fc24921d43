//! Logging through tracing, shaped like etcd's: `--logger zap` writes one JSON object per line
//! (level, ts, msg and fields), `--logger capnslog` plain text; `--log-outputs` picks
//! stderr (default), stdout or a file path; `--log-level` filters.

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing_subscriber::fmt::writer::BoxMakeWriter;
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
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_target(true);
    match logger {
        "zap" => builder.json().flatten_event(true).with_current_span(false).init(),
        "capnslog" => builder.with_ansi(false).init(),
        other => return Err(format!("--logger: unknown logger {other:?} (zap or capnslog)")),
    }
    Ok(())
}
