//! `list-rss`: one whole list of a range, with Range or with RangeStream (`--stream`), while the
//! server's resident memory is watched (`--server-pid`, same machine): how much a large list
//! makes the server grow (issue 16: under 64 MiB with RangeStream for 1M keys).
//!
//! The server's peak is read from its VmHWM after resetting it (`/proc/PID/clear_refs` "5")
//! just before the list, and also sampled every 5 ms from VmRSS in case the reset is refused;
//! the growth is the peak minus the VmRSS just before the list. The server's CPU time during the
//! list (user + system, from /proc) is reported too: on a busy machine it varies less than the
//! list's wall-clock time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::RangeRequest;
use prost::Message;
use serde_json::json;

use crate::workloads::BenchError;
use crate::Global;

#[derive(Args, Debug)]
pub struct ListRssArgs {
    /// Start of the range.
    pub key: String,
    /// End of the range (exclusive); "\0" lists from KEY to the end of the key space.
    pub end: Option<String>,
    /// List with KV.RangeStream (etcd 3.7) instead of one Range.
    #[arg(long)]
    pub stream: bool,
    /// The server's process id (its memory is read from /proc).
    #[arg(long)]
    pub server_pid: u32,
    /// Pause this long after each received chunk (a slow client: the server must not read ahead).
    #[arg(long, default_value = "0ms", value_parser = crate::parse_duration)]
    pub chunk_delay: Duration,
}

/// A `/proc/PID/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// CPU time (user + system) the process has used so far, in clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the command name, which is in parentheses and may hold spaces
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ').skip(11);
    Some(f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?)
}

/// Samples VmRSS every 5 ms until stopped; keeps the largest.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak_kib: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kib = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak_kib.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = status_kib(pid, "VmRSS:") {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssSampler { stop, peak_kib, thread }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.peak_kib.load(Ordering::Relaxed)
    }
}

/// (keys, bytes of responses, chunks) of one list.
async fn list(kv: &mut KvClient<tonic::transport::Channel>, req: RangeRequest, a: &ListRssArgs) -> Result<(u64, u64, u64), tonic::Status> {
    if !a.stream {
        let resp = kv.range(req).await?.into_inner();
        return Ok((resp.kvs.len() as u64, resp.encoded_len() as u64, 1));
    }
    let mut stream = kv.range_stream(req).await?.into_inner();
    let (mut keys, mut bytes, mut chunks) = (0, 0, 0);
    while let Some(c) = stream.message().await? {
        chunks += 1;
        bytes += c.encoded_len() as u64;
        keys += c.range_response.map_or(0, |r| r.kvs.len() as u64);
        if !a.chunk_delay.is_zero() {
            tokio::time::sleep(a.chunk_delay).await;
        }
    }
    Ok((keys, bytes, chunks))
}

/// A key argument: "\0" (the two characters, as a shell passes it) is the zero byte.
fn key_arg(k: &str) -> Vec<u8> {
    match k {
        "\\0" | "\0" => vec![0],
        k => k.as_bytes().to_vec(),
    }
}

pub async fn list_rss(g: &Global, a: ListRssArgs) -> Result<(), BenchError> {
    let end = a.end.as_deref().map(key_arg).unwrap_or_default();
    let req = RangeRequest { key: key_arg(&a.key), range_end: end, ..Default::default() };
    let mut kv = KvClient::new(g.channel(0)).max_decoding_message_size(usize::MAX);
    let pid = a.server_pid;
    let before = status_kib(pid, "VmRSS:").ok_or_else(|| BenchError::Setup(format!("cannot read /proc/{pid}/status")))?;
    let hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let cpu_before = cpu_ticks(pid);
    let sampler = RssSampler::start(pid);
    let started = Instant::now();
    let listed = list(&mut kv, req, &a).await;
    let secs = started.elapsed().as_secs_f64();
    let sampled = sampler.finish();
    // USER_HZ is 100 on Linux
    let cpu_secs = cpu_before.zip(cpu_ticks(pid)).map(|(b, a)| a.saturating_sub(b) as f64 / 100.0);
    let (keys, bytes, chunks) = listed.map_err(|s| BenchError::Setup(format!("list: {:?}: {}", s.code(), s.message())))?;
    let hwm = if hwm_reset { status_kib(pid, "VmHWM:").unwrap_or(0) } else { 0 };
    let peak = sampled.max(hwm);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let out = json!({
        "workload": "list-rss",
        "rpc": if a.stream { "RangeStream" } else { "Range" },
        "keys": keys,
        "response_mib": bytes as f64 / (1024.0 * 1024.0),
        "chunks": chunks,
        "seconds": secs,
        "server_cpu_seconds": cpu_secs,
        "server_rss_before_mib": mib(before),
        "server_peak_rss_mib": mib(peak),
        "server_rss_growth_mib": mib(peak.saturating_sub(before)),
        "peak_from": if hwm_reset && hwm >= sampled { "VmHWM" } else { "VmRSS samples" },
    });
    if g.json {
        println!("{out}");
    } else {
        println!(
            "{}: {keys} keys ({:.1} MiB) in {chunks} responses, {secs:.2} s; server RSS {:.1} MiB before, peak {:.1} MiB: growth {:.1} MiB",
            out["rpc"].as_str().unwrap_or(""),
            bytes as f64 / (1024.0 * 1024.0),
            mib(before),
            mib(peak),
            mib(peak.saturating_sub(before)),
        );
    }
    Ok(())
}
