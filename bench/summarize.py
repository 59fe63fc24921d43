#!/usr/bin/env python3
"""Turns compare.sh's results.jsonl into the README benchmark table: per-metric medians per side
and the ratio etcd-rs / etcd, with the issue's targets checked."""
import json, os, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]

def med(side, name, path):
    vals = []
    for r in rows:
        if r["side"] == side and r["name"] == name:
            v = r
            for k in path.split("."):
                v = v.get(k) if isinstance(v, dict) else None
            if v is not None:
                vals.append(float(v))
    return (statistics.median(vals), len(vals)) if vals else (None, 0)

fs = med("machine", "fsync", "latency_ms.p50")[0]
print(f"etcd: {os.environ.get('ETCD_VERSION', '?')}; machine: {os.environ.get('MACHINE', '?')}; "
      f"fdatasync p50 in the data dir: {fs:.3f} ms" if fs is not None else "")
print()
print("| workload | metric | etcd | etcd-rs | etcd-rs / etcd | target | met |")
print("| --- | --- | ---: | ---: | ---: | --- | --- |")

def fmt(v, unit):
    if v is None:
        return "-"
    if unit == "req/s":
        return f"{v:,.0f}"
    return f"{v:.2f}" if v < 100 else f"{v:,.0f}"

def row(label, name, path, unit, target=None):
    a, na = med("etcd", name, path)
    b, nb = med("etcd-rs", name, path)
    ratio = b / a if a and b is not None else None
    t, met = "", ""
    if target and ratio is not None:
        op, x = target
        t = f"ratio {op} {x}"
        met = "yes" if (ratio >= x if op == ">=" else ratio <= x) else "**no**"
    runs = f" (n={na}/{nb})" if max(na, nb) > 1 else ""
    print(f"| {label}{runs} | {unit} | {fmt(a, unit)} | {fmt(b, unit)} | "
          f"{'-' if ratio is None else f'{ratio:.2f}'} | {t} | {met} |")

row("put, 1 client", "put-1c", "throughput", "req/s")
row("put, 1 client", "put-1c", "latency_ms.p50", "p50 ms")
row("put, 1 client", "put-1c", "latency_ms.p99", "p99 ms")
b1, _ = med("etcd-rs", "put-1c", "latency_ms.p50")
if fs and b1:
    print(f"| put, 1 client | etcd-rs p50 / fdatasync p50 | | {b1:.2f} / {fs:.2f} | {b1 / fs:.2f} | <= 1.2 | {'yes' if b1 / fs <= 1.2 else '**no**'} |")
for label, name in [("put, 256 clients / 16 conns, 256 B values, 100k keys", "put-256c"),
                    ("range linearizable, 256 clients", "range-l-256c")]:
    row(label, name, "throughput", "req/s", (">=", 1.5))
    row(label, name, "latency_ms.p50", "p50 ms")
    row(label, name, "latency_ms.p99", "p99 ms", ("<=", 1.0))
    row(label, name, "latency_ms.p999", "p99.9 ms")
for label, name in [("range serializable, 256 clients", "range-s-256c"),
                    ("txn-put (mod_revision CAS), 64 clients", "txn-put-64c")]:
    row(label, name, "throughput", "req/s")
    row(label, name, "latency_ms.p99", "p99 ms")
row("server after the series above", "series-rss", "rss_mb", "peak RSS MiB")
K = int(os.environ.get("BIG_KEYS", "1000000"))
KL = f"{K // 1000000}M" if K % 1000000 == 0 else f"{K:,}"
row(f"put {KL} keys (256 B), 256 clients", "put-big", "throughput", "req/s")
row(f"after {KL} keys", "big", "rss_mb", "peak RSS MiB", ("<=", 0.5))
row(f"after {KL} keys", "big", "dir_mb", "data dir MiB")
row(f"restart with {KL} keys", "big", "restart_s", "s to first read")
row(f"restart with {KL} keys", "big", "restart_rss_mb", "peak RSS MiB")
errs = {(r["side"], r["name"]): r.get("errors", 0) for r in rows if r.get("errors")}
if errs:
    print()
    print("errors: " + ", ".join(f"{s} {n}: {e}" for (s, n), e in errs.items()))
