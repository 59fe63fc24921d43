//! One etcd-compatible member process: its command line and its end.
//!
//! Invariant: the command line uses only flags etcd 3.4, etcd 3.5 and etcd-rs all accept, so any
//! of them can take any member's place; a process is reaped by whoever stops it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What distinguishes one member's command line from another's.
pub struct MemberFlags<'a> {
    pub name: &'a str,
    pub data_dir: &'a Path,
    pub client_url: &'a str,
    pub listen_peer_url: &'a str,
    pub advertised_peer_url: &'a str,
    pub initial_cluster: &'a str,
    /// `new` or `existing`.
    pub initial_state: &'a str,
    pub token: &'a str,
    pub snapshot_count: u64,
    pub heartbeat_ms: u64,
    pub election_ms: u64,
}

/// Starts `binary` with `flags`, stdout and stderr appended to `log`. `ETCD_*` variables of the
/// caller's environment are not passed on: etcd and etcd-rs read them as flags.
pub fn spawn_member(binary: &Path, flags: &MemberFlags, log: &Path) -> Result<Child, String> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut command = Command::new(binary);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCD_") {
            command.env_remove(key);
        }
    }
    command
        .args(["--name", flags.name])
        .arg("--data-dir")
        .arg(flags.data_dir)
        .args(["--listen-client-urls", flags.client_url])
        .args(["--advertise-client-urls", flags.client_url])
        .args(["--listen-peer-urls", flags.listen_peer_url])
        .args(["--initial-advertise-peer-urls", flags.advertised_peer_url])
        .args(["--initial-cluster", flags.initial_cluster])
        .args(["--initial-cluster-state", flags.initial_state])
        .args(["--initial-cluster-token", flags.token])
        .args(["--snapshot-count", &flags.snapshot_count.to_string()])
        .args(["--heartbeat-interval", &flags.heartbeat_ms.to_string()])
        .args(["--election-timeout", &flags.election_ms.to_string()])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))
}

/// Why the process is gone (its exit status), or None while it runs.
pub fn exit_reason(child: &mut Child) -> Option<String> {
    match child.try_wait() {
        Ok(Some(status)) => Some(status.to_string()),
        Ok(None) => None,
        Err(e) => Some(e.to_string()),
    }
}

pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child this process started and has not reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Sends `sig` (after SIGCONT: a paused process handles nothing) and waits up to `within` for
/// the process to exit, then SIGKILLs it. True when it exited by itself in time.
pub async fn stop_child(mut child: Child, sig: libc::c_int, within: Duration) -> bool {
    signal(child.id(), libc::SIGCONT);
    signal(child.id(), sig);
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() > deadline => {
                signal(child.id(), libc::SIGKILL);
                let _ = child.wait();
                return false;
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
