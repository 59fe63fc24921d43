//! `etcdutl-rs`: what `etcdutl` does offline, for etcd-rs: `snapshot status|restore`, `defrag`,
//! `hashkv` (etcd 3.6), `version`, with etcdutl's flags, output formats, error texts and exit
//! codes; `backup` and `migrate` refuse, saying why; `export-etcd-data-dir` (etcd-rs only)
//! writes an etcd data dir from a stopped etcd-rs member's. The work is in
//! `etcd_server::{backup, restore, etcdutl}`; this file parses flags and prints.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use etcd_server::backup::{snapshot_status, SnapshotStatus};
use etcd_server::config::{ETCD_API_VERSION, ETCD_RS_VERSION};
use etcd_server::etcdutl::export::{export_etcd_data_dir, ExportConfig};
use etcd_server::etcdutl::hashkv::{hash_kv_file, HashKv};
use etcd_server::etcdutl::{defrag::defrag_data_dir, stat, EtcdutlError};
use etcd_server::restore::{restore, RestoreConfig};

#[derive(Parser)]
#[command(name = "etcdutl-rs", about = "An administrative command line tool for etcd-rs data (as etcdutl)")]
struct Cli {
    /// set the output format (fields, json, protobuf, simple, table)
    #[arg(short = 'w', long = "write-out", global = true, default_value = "simple")]
    write_out: String,
    /// time to wait to obtain the lock on a member's db file, 0 to block indefinitely
    #[arg(long, global = true, default_value = "10s", value_parser = parse_go_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// [legacy] offline backup of etcd directory (refused on etcd-rs data dirs: see the message)
    Backup {
        #[arg(long = "data-dir", default_value = "")]
        data_dir: String,
        #[arg(long = "backup-dir", default_value = "")]
        backup_dir: String,
        #[arg(long = "wal-dir", default_value = "")]
        wal_dir: String,
        #[arg(long = "backup-wal-dir", default_value = "")]
        backup_wal_dir: String,
        #[arg(long = "with-v3", num_args = 0..=1, default_missing_value = "true", default_value = "true")]
        with_v3: bool,
    },
    /// Defragments the storage of the etcd-rs member
    Defrag {
        /// Required. Defragments a data directory not in use by etcd-rs.
        #[arg(long = "data-dir", required = true)]
        data_dir: PathBuf,
    },
    /// Prints the KV history hash of a given file
    Hashkv {
        /// an etcd-rs db (member/snap/db) or an etcd snapshot / bbolt db
        filename: PathBuf,
        /// maximum revision to hash (default: latest revision)
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        rev: i64,
    },
    /// Migrates etcd's storage schema (etcd 3.6; refused on etcd-rs data dirs: see the message)
    Migrate {
        #[arg(long = "data-dir", default_value = "")]
        data_dir: String,
        #[arg(long = "wal-dir", default_value = "")]
        wal_dir: String,
        #[arg(long = "target-version", default_value = "")]
        target_version: String,
        #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
        force: bool,
    },
    /// Manages etcd node snapshots
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Prints the version of etcdutl
    Version,
    /// etcd-rs only: writes an etcd data dir (etcd's WAL, snap file and bbolt db) from a
    /// stopped etcd-rs member's data dir, for going back to etcd 3.4/3.5
    ExportEtcdDataDir {
        /// the stopped etcd-rs member's data dir
        #[arg(long = "data-dir", required = true)]
        data_dir: PathBuf,
        /// the member's WAL dir, when it was started with --wal-dir
        #[arg(long = "wal-dir")]
        wal_dir: Option<PathBuf>,
        /// the etcd data dir to write (must not exist)
        #[arg(long = "output-data-dir", required = true)]
        output_data_dir: PathBuf,
        /// write etcd's WAL here instead of <output-data-dir>/member/wal (must not exist)
        #[arg(long = "output-wal-dir")]
        output_wal_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Gets backend snapshot status of a given file
    Status { filename: PathBuf },
    /// Restores an etcd member snapshot to an etcd-rs directory
    Restore {
        filename: PathBuf,
        /// Path to the output data directory
        #[arg(long = "data-dir", required = true)]
        data_dir: PathBuf,
        /// Path to the WAL directory (use --data-dir if none given)
        #[arg(long = "wal-dir")]
        wal_dir: Option<PathBuf>,
        /// Human-readable name for this member
        #[arg(long, default_value = "default")]
        name: String,
        /// Initial cluster configuration for restore bootstrap
        #[arg(long = "initial-cluster", default_value = "default=http://localhost:2380")]
        initial_cluster: String,
        /// Initial cluster token for the etcd cluster during restore bootstrap
        #[arg(long = "initial-cluster-token", default_value = "etcd-cluster")]
        initial_cluster_token: String,
        /// List of this member's peer URLs to advertise to the rest of the cluster
        #[arg(long = "initial-advertise-peer-urls", default_value = "http://localhost:2380")]
        initial_advertise_peer_urls: String,
        /// Ignore snapshot integrity hash value (required if copied from data directory)
        #[arg(long = "skip-hash-check", num_args = 0..=1, default_missing_value = "true", default_value = "false")]
        skip_hash_check: bool,
    },
}

/// etcdutl's exit codes (cobrautl): a failed command, and a valid flag with an unsupported value.
const EXIT_ERROR: u8 = 1;
const EXIT_BAD_FEATURE: u8 = 4;

/// A failure and the exit code etcdutl gives it.
struct Failure(u8, String);

impl From<EtcdutlError> for Failure {
    fn from(e: EtcdutlError) -> Self {
        Failure(EXIT_ERROR, e.to_string())
    }
}

/// An output format etcdutl knows; `protobuf` is known but prints nothing these commands have.
#[derive(Clone, Copy)]
enum WriteOut {
    Fields,
    Json,
    Simple,
    Table,
}

/// etcdutl's printer choice: an unknown name and `protobuf` both fail with exit code 4.
fn write_out(name: &str) -> Result<WriteOut, Failure> {
    match name {
        "fields" => Ok(WriteOut::Fields),
        "json" => Ok(WriteOut::Json),
        "simple" => Ok(WriteOut::Simple),
        "table" => Ok(WriteOut::Table),
        "protobuf" => Err(Failure(EXIT_BAD_FEATURE, "protobuf not supported as output format".into())),
        _ => Err(Failure(EXIT_BAD_FEATURE, "unsupported output format".into())),
    }
}

/// Go's `time.ParseDuration` for the forms a `--timeout` takes ("10s", "1m30s", "500ms", "0").
fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("time: invalid duration {s:?}");
    if s.is_empty() {
        return Err(bad());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// go-humanize's `Bytes`: SI units, one decimal below 10.
fn humanize_bytes(s: u64) -> String {
    const SIZES: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if s < 10 {
        return format!("{s} B");
    }
    let e = ((s as f64).ln() / 1000f64.ln()).floor();
    let suffix = SIZES[(e as usize).min(SIZES.len() - 1)];
    let val = ((s as f64) / 1000f64.powf(e) * 10.0 + 0.5).floor() / 10.0;
    if val < 10.0 {
        format!("{val:.1} {suffix}")
    } else {
        format!("{val:.0} {suffix}")
    }
}

/// An ASCII table as etcdctl's tablewriter draws it: centered headers, right-aligned cells.
fn table(header: &[&str], row: &[String]) -> String {
    let widths: Vec<usize> = header.iter().zip(row).map(|(h, c)| h.len().max(c.len()) + 2).collect();
    let line = format!("+{}+\n", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("+"));
    let head: Vec<String> = header
        .iter()
        .zip(&widths)
        .map(|(h, w)| {
            let left = (w - h.len()) / 2;
            format!("{}{}{}", " ".repeat(left), h.to_uppercase(), " ".repeat(w - h.len() - left))
        })
        .collect();
    let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:>width$} ", width = w - 1)).collect();
    format!("{line}|{}|\n{line}|{}|\n{line}", head.join("|"), cells.join("|"))
}

/// Written, not println!: a closed stdout (`| head -0`) ends the output quietly instead of a panic.
fn print(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn print_status(s: &SnapshotStatus, out: WriteOut) {
    let row = vec![format!("{:x}", s.hash), s.revision.to_string(), s.total_key.to_string(), humanize_bytes(s.total_size)];
    print(&match out {
        WriteOut::Simple => format!("{}\n", row.join(", ")),
        WriteOut::Table => table(&["hash", "revision", "total keys", "total size"], &row),
        WriteOut::Json => format!("{}\n", serde_json::to_string(s).unwrap_or_default()),
        WriteOut::Fields => format!(
            "\"Hash\" : {}\n\"Revision\" : {}\n\"Keys\" : {}\n\"Size\" : {}\n",
            s.hash, s.revision, s.total_key, s.total_size
        ),
    });
}

/// As etcdutl 3.6 prints `hashkv` (the hash in decimal, unlike `snapshot status`).
fn print_hash_kv(h: &HashKv, out: WriteOut) {
    let row = vec![h.hash.to_string(), h.hash_revision.to_string(), h.compact_revision.to_string()];
    print(&match out {
        WriteOut::Simple => format!("{}\n", row.join(", ")),
        WriteOut::Table => table(&["hash", "hash revision", "compact revision"], &row),
        WriteOut::Json => format!("{}\n", serde_json::to_string(h).unwrap_or_default()),
        WriteOut::Fields => format!(
            "\"Hash\" : {}\n\"Hash revision\" : {}\n\"Compact revision\" : {}\n",
            h.hash, h.hash_revision, h.compact_revision
        ),
    });
}

/// `--timeout 0` waits indefinitely, as etcdutl's.
fn lock_timeout(t: Duration) -> Option<Duration> {
    (!t.is_zero()).then_some(t)
}

/// Why `backup` does not apply to an etcd-rs data dir.
const BACKUP_REFUSED: &str = "etcdutl-rs backup: 'etcdutl backup' is etcd's legacy copy of an etcd data dir \
(its v2 WAL and snap files, rewritten for --force-new-cluster); an etcd-rs data dir holds etcd-rs's own WAL and a \
redb backend, so there is nothing for it to copy. Take a backup with 'etcdctl snapshot save' against the running \
member (restore it with 'etcdutl-rs snapshot restore'), or write an etcd data dir with \
'etcdutl-rs export-etcd-data-dir' and run etcd's 'etcdutl backup' on that";

/// Why `migrate` does not apply to an etcd-rs data dir.
const MIGRATE_REFUSED: &str = "etcdutl-rs migrate: 'etcdutl migrate' changes the storage version of etcd's bbolt \
db (the 3.5 <-> 3.6 schema in meta/storageVersion); an etcd-rs data dir holds a redb backend that has no storage \
version, and etcd-rs serves it unchanged whatever the cluster version. To hand the data to etcd, write an etcd \
data dir with 'etcdutl-rs export-etcd-data-dir' (etcd 3.4/3.5 format) and run etcd's 'etcdutl migrate' on that";

fn run(cli: Cli) -> Result<(), Failure> {
    let timeout = lock_timeout(cli.timeout);
    match cli.command {
        Command::Snapshot(SnapshotCommand::Status { filename }) => {
            let out = write_out(&cli.write_out)?;
            stat(&filename)?;
            let s = snapshot_status(&filename).map_err(|e| Failure(EXIT_ERROR, e.to_string()))?;
            print_status(&s, out);
        }
        Command::Snapshot(SnapshotCommand::Restore {
            filename,
            data_dir,
            wal_dir,
            name,
            initial_cluster,
            initial_cluster_token,
            initial_advertise_peer_urls,
            skip_hash_check,
        }) => {
            stat(&filename)?;
            let cfg = RestoreConfig {
                snapshot: filename,
                name,
                data_dir,
                wal_dir,
                initial_cluster,
                initial_cluster_token,
                initial_advertise_peer_urls,
                skip_hash_check,
            };
            let r = restore(&cfg).map_err(|e| Failure(EXIT_ERROR, e.to_string()))?;
            eprintln!(
                "restored snapshot {} into {}: member {:x}, cluster {:x}, {} revisions, {} leases, {} users, {} roles",
                cfg.snapshot.display(),
                r.data_dir.display(),
                r.member_id,
                r.cluster_id,
                r.loaded.revisions,
                r.loaded.leases,
                r.loaded.auth_users,
                r.loaded.auth_roles
            );
            for b in &r.loaded.skipped_buckets {
                eprintln!("skipped bucket {b:?}: etcd-rs has no table for it");
            }
        }
        Command::Defrag { data_dir } => {
            let waiting = |db: &std::path::Path| {
                eprintln!(
                    "waiting for etcd to close and release its lock on {:?}. To defrag a running etcd instance, omit --data-dir.",
                    db.display().to_string()
                )
            };
            let d = defrag_data_dir(&data_dir, timeout, waiting)
                .map_err(|e| Failure(EXIT_ERROR, format!("Failed to defragment etcd data[{}] ({e})", data_dir.display())))?;
            eprintln!(
                "finished defragmenting directory {}: {} -> {} bytes",
                d.path.display(),
                d.size_before,
                d.size_after
            );
        }
        Command::Hashkv { filename, rev } => {
            let out = write_out(&cli.write_out)?;
            print_hash_kv(&hash_kv_file(&filename, rev, timeout)?, out);
        }
        Command::Version => print(&format!(
            "etcdutl version: {ETCD_API_VERSION}\nAPI version: {}\netcdutl-rs version: {ETCD_RS_VERSION}\n",
            ETCD_API_VERSION.split('.').take(2).collect::<Vec<_>>().join(".")
        )),
        Command::Backup { .. } => return Err(Failure(EXIT_ERROR, BACKUP_REFUSED.into())),
        Command::Migrate { .. } => return Err(Failure(EXIT_ERROR, MIGRATE_REFUSED.into())),
        Command::ExportEtcdDataDir { data_dir, wal_dir, output_data_dir, output_wal_dir } => {
            let cfg = ExportConfig { data_dir, wal_dir, output_data_dir, output_wal_dir, timeout };
            let x = export_etcd_data_dir(&cfg)?;
            eprintln!(
                "wrote etcd data dir {}: member {:x}, cluster {:x}, snapshot at index {} term {}, {} entries after it, \
                 {} revisions, {} leases, {} users, {} members",
                cfg.output_data_dir.display(),
                x.member_id,
                x.cluster_id,
                x.snapshot_index,
                x.snapshot_term,
                x.entries_after,
                x.backend.loaded.revisions,
                x.backend.loaded.leases,
                x.backend.loaded.auth_users,
                x.backend.members
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            // cobra: help exits 0, a usage error (unknown command, missing flag) 1
            return ExitCode::from(if e.use_stderr() { EXIT_ERROR } else { 0 });
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            eprintln!("Error: {msg}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_as_go_durations() {
        assert_eq!(parse_go_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "10", "s", "10x", "-1s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_print_as_go_humanize() {
        assert_eq!(humanize_bytes(0), "0 B");
        assert_eq!(humanize_bytes(9), "9 B");
        assert_eq!(humanize_bytes(36864), "37 kB");
        assert_eq!(humanize_bytes(4096), "4.1 kB");
        assert_eq!(humanize_bytes(20_480_000), "20 MB");
        assert_eq!(humanize_bytes(1_500_000_000), "1.5 GB");
    }

    #[test]
    fn the_status_table_is_drawn_as_etcdutl_draws_it() {
        let row = vec!["bfbf105a".to_string(), "6".into(), "12".into(), "37 kB".into()];
        assert_eq!(
            table(&["hash", "revision", "total keys", "total size"], &row),
            "+----------+----------+------------+------------+\n\
             |   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n\
             +----------+----------+------------+------------+\n\
             | bfbf105a |        6 |         12 |      37 kB |\n\
             +----------+----------+------------+------------+\n"
        );
    }
}
