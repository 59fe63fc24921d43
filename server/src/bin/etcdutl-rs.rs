//! `etcdutl-rs`: what `etcdutl` does offline, for etcd-rs: `snapshot status` of a snapshot file
//! (etcd's format, from etcd or etcd-rs) and `snapshot restore` of one into a new etcd-rs data
//! dir. Output and errors as etcdutl 3.5 prints them. The work is in `etcd_server::backup` and
//! `etcd_server::restore`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use etcd_server::backup::{snapshot_status, SnapshotStatus};
use etcd_server::restore::{restore, RestoreConfig};

#[derive(Parser)]
#[command(name = "etcdutl-rs", about = "An administrative command line tool for etcd-rs data (as etcdutl)")]
struct Cli {
    /// set the output format (fields, json, simple, table)
    #[arg(short = 'w', long = "write-out", global = true, default_value = "simple")]
    write_out: WriteOut,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum WriteOut {
    Fields,
    Json,
    Simple,
    Table,
}

#[derive(Subcommand)]
enum Command {
    /// Manages etcd node snapshots
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Gets backend snapshot status of a given file
    Status { filename: PathBuf },
    /// Restores an etcd member snapshot to an etcd-rs directory
    Restore {
        filename: PathBuf,
        /// Path to the output data directory
        #[arg(long = "data-dir", default_value = "")]
        data_dir: PathBuf,
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
fn print_status(s: &SnapshotStatus, out: WriteOut) {
    use std::io::Write;
    let row = vec![format!("{:x}", s.hash), s.revision.to_string(), s.total_key.to_string(), humanize_bytes(s.total_size)];
    let text = match out {
        WriteOut::Simple => format!("{}\n", row.join(", ")),
        WriteOut::Table => table(&["hash", "revision", "total keys", "total size"], &row),
        WriteOut::Json => format!("{}\n", serde_json::to_string(s).unwrap_or_default()),
        WriteOut::Fields => format!(
            "\"Hash\" : {}\n\"Revision\" : {}\n\"Keys\" : {}\n\"Size\" : {}\n",
            s.hash, s.revision, s.total_key, s.total_size
        ),
    };
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Go's wording of a failed stat.
fn stat(path: &std::path::Path) -> Result<(), String> {
    std::fs::metadata(path).map(|_| ()).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        format!("stat {}: {why}", path.display())
    })
}

fn run(cli: Cli) -> Result<(), String> {
    let Command::Snapshot(cmd) = cli.command;
    match cmd {
        SnapshotCommand::Status { filename } => {
            stat(&filename)?;
            let s = snapshot_status(&filename).map_err(|e| e.to_string())?;
            print_status(&s, cli.write_out);
        }
        SnapshotCommand::Restore {
            filename,
            data_dir,
            name,
            initial_cluster,
            initial_cluster_token,
            initial_advertise_peer_urls,
            skip_hash_check,
        } => {
            stat(&filename)?;
            let cfg = RestoreConfig {
                snapshot: filename,
                name,
                data_dir,
                initial_cluster,
                initial_cluster_token,
                initial_advertise_peer_urls,
                skip_hash_check,
            };
            let r = restore(&cfg).map_err(|e| e.to_string())?;
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
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 128 } else { 0 });
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
