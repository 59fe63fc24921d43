//! The fdatasync probe: append `write_size` bytes then fdatasync, `count` times, in the data
//! directory's file system, as the WAL does once per raft Ready. Its median is the floor of a
//! single client's put latency on this machine.

use crate::histogram::Histogram;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// With `preallocate`, the file is first sized to hold every write (and synced), so each
/// fdatasync flushes data only, as in a preallocated WAL segment; without it each write extends
/// the file and fdatasync must also commit the new size.
pub fn probe(dir: &Path, write_size: usize, count: usize, preallocate: bool) -> std::io::Result<Histogram> {
    let path = dir.join(format!(".etcd-rs-bench-fsync-probe-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&path)?;
        if preallocate {
            f.set_len((write_size * count) as u64)?;
            f.write_all(&vec![0u8; write_size * count])?;
            f.sync_all()?;
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(0))?;
        }
        let buf = vec![0x5au8; write_size];
        let mut h = Histogram::new();
        for _ in 0..count {
            let t = Instant::now();
            f.write_all(&buf)?;
            f.sync_data()?;
            h.record(t.elapsed().as_nanos() as u64);
        }
        Ok(h)
    })();
    let _ = std::fs::remove_file(&path);
    result
}

pub fn print(dir: &Path, h: &Histogram, json: bool, preallocate: bool) {
    let ms = |ns: u64| ns as f64 / 1e6;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "workload": "fsync-probe", "preallocated": preallocate, "dir": dir.display().to_string(), "count": h.count(),
                "latency_ms": {"avg": h.mean() / 1e6, "min": ms(h.min()), "p50": ms(h.quantile(0.5)),
                    "p90": ms(h.quantile(0.9)), "p99": ms(h.quantile(0.99)), "p999": ms(h.quantile(0.999)), "max": ms(h.max())}
            })
        );
    } else {
        println!(
            "fdatasync in {} ({}): {} rounds, p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms, avg {:.3} ms",
            dir.display(),
            if preallocate { "preallocated file" } else { "appending file" },
            h.count(),
            ms(h.quantile(0.5)),
            ms(h.quantile(0.9)),
            ms(h.quantile(0.99)),
            ms(h.max()),
            h.mean() / 1e6
        );
    }
}
