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

K = int(os.environ.get("BIG_KEYS", "1000000"))  # keys of the big and cluster-big rows
KL = f"{K // 1000000}M" if K % 1000000 == 0 else f"{K:,}"

def has(*names):
    return any(r["name"] in names for r in rows)

if has("put-1c"):
    row("put, 1 client", "put-1c", "throughput", "req/s")
    row("put, 1 client", "put-1c", "latency_ms.p50", "p50 ms")
    row("put, 1 client", "put-1c", "latency_ms.p99", "p99 ms")
    row("put, 1 client", "put-1c", "server_cpu_us_per_req", "server CPU µs per request")
    b1, _ = med("etcd-rs", "put-1c", "latency_ms.p50")
    if fs and b1:
        print(f"| put, 1 client | etcd-rs p50 / fdatasync p50 | | {b1:.2f} / {fs:.2f} | {b1 / fs:.2f} | <= 1.2 | {'yes' if b1 / fs <= 1.2 else '**no**'} |")
    for label, name in [("put, 256 clients / 16 conns, 256 B values, 100k keys", "put-256c"),
                        ("range linearizable, 256 clients", "range-l-256c")]:
        row(label, name, "throughput", "req/s", (">=", 1.5))
        row(label, name, "server_cpu_us_per_req", "server CPU µs per request")
        row(label, name, "client_cpu_us_per_req", "load generator CPU µs per request")
        row(label, name, "latency_ms.p50", "p50 ms")
        row(label, name, "latency_ms.p99", "p99 ms", ("<=", 1.0))
        row(label, name, "latency_ms.p999", "p99.9 ms")
    for label, name in [("range serializable, 256 clients", "range-s-256c"),
                        ("txn-put (mod_revision CAS), 64 clients", "txn-put-64c")]:
        row(label, name, "throughput", "req/s")
        row(label, name, "latency_ms.p99", "p99 ms")
    row("server after the series above", "series-rss", "rss_mb", "peak RSS MiB")
if has("big"):
    row(f"put {KL} keys (256 B), 256 clients", "put-big", "throughput", "req/s")
    row(f"after {KL} keys", "big", "rss_mb", "peak RSS MiB", ("<=", 0.3))
    row(f"after {KL} keys", "big", "dir_mb", "data dir MiB")
    row(f"restart with {KL} keys", "big", "restart_s", "s to first read")
    row(f"restart with {KL} keys", "big", "restart_rss_mb", "peak RSS MiB")
if has("watch-idle", "watch-100", "watch-10k"):
    W = int(med("etcd-rs", "watch-idle", "watchers")[0] or med("etcd", "watch-idle", "watchers")[0]
            or int(os.environ.get("IDLE_WATCHERS", "10000")))
    row(f"{W:,} idle watchers (distinct keys, 100 per stream)", "watch-idle", "mib_per_10k",
        "VmRSS MiB per 10k watchers", ("<=", 1.0))
    for label, name in [("watch, 100 watchers (10 streams x 10), 200 puts/s", "watch-100"),
                        ("watch, 10,000 watchers (100 streams x 100), 10 puts/s", "watch-10k")]:
        row(label, name, "latency_ms.p50", "put-to-event p50 ms")
        row(label, name, "latency_ms.p99", "put-to-event p99 ms", ("<=", 1.0))
if has("lease-keepalive-256c"):
    row("lease keep-alive, 256 clients / 16 conns", "lease-keepalive-256c", "throughput", "req/s")
    row("lease keep-alive, 256 clients / 16 conns", "lease-keepalive-256c", "latency_ms.p99", "p99 ms")
# Issue 15's targets for 3- and 5-member clusters (ratio etcd-rs / etcd); CPU is summed over
# the members.
if has("cluster-put-256c", "cluster-range-l-256c", "cluster-range-s-256c", "cluster-kube"):
    L = "3 members: put, 256 clients / 16 conns over all 3"
    row(L, "cluster-put-256c", "throughput", "req/s", (">=", 1.5))
    row(L, "cluster-put-256c", "latency_ms.p50", "p50 ms")
    row(L, "cluster-put-256c", "latency_ms.p99", "p99 ms", ("<=", 0.7))
    row(L, "cluster-put-256c", "server_cpu_us_per_req", "server CPU µs per request (sum of 3)", ("<=", 0.35))
    row(L, "cluster-put-256c", "client_cpu_us_per_req", "load generator CPU µs per request")
    for label, name in [("3 members: put, 1 client to the leader", "cluster-put-1c"),
                        ("3 members: put, 1 client to a follower", "cluster-put-1c-follower")]:
        row(label, name, "throughput", "req/s")
        row(label, name, "latency_ms.p50", "p50 ms", ("<=", 0.8))
        row(label, name, "latency_ms.p99", "p99 ms")
        row(label, name, "server_cpu_us_per_req", "server CPU µs per request (sum of 3)")
    for label, name in [("3 members: range linearizable, 256 clients over all 3", "cluster-range-l-256c"),
                        ("3 members: range serializable, 256 clients over all 3", "cluster-range-s-256c")]:
        row(label, name, "throughput", "req/s", (">=", 2.0))
        row(label, name, "latency_ms.p99", "p99 ms")
        row(label, name, "server_cpu_us_per_req", "server CPU µs per request (sum of 3)")
    L = "3 members: kube mix, 64 clients / 16 conns, 2 informers (prev_kv)"
    row(L, "cluster-kube", "throughput", "req/s", (">=", 1.5))
    row(L, "cluster-kube", "latency_ms.p99", "p99 ms (all operations)")
    row(L, "cluster-kube", "watch_latency_ms.p50", "put-to-event p50 ms")
    row(L, "cluster-kube", "watch_latency_ms.p99", "put-to-event p99 ms", ("<=", 1.0))
    row(L, "cluster-kube", "server_cpu_us_per_req", "server CPU µs per request (sum of 3)")
    row("3 members after the series above", "cluster-rss", "rss_mb", "peak RSS MiB (sum of 3)")
if has("cluster5-put-256c"):
    L = "5 members: put, 256 clients / 16 conns over all 5"
    row(L, "cluster5-put-256c", "throughput", "req/s", (">=", 1.5))
    row(L, "cluster5-put-256c", "latency_ms.p99", "p99 ms")
    row(L, "cluster5-put-256c", "server_cpu_us_per_req", "server CPU µs per request (sum of 5)")
if has("cluster-go-put-256c"):
    L = "3 members: put, 256 clients / 16 Go clientv3 clients over all 3"
    row(L, "cluster-go-put-256c", "throughput", "req/s", (">=", 1.5))
    row(L, "cluster-go-put-256c", "latency_ms.p99", "p99 ms")
    row(L, "cluster-go-put-256c", "server_cpu_us_per_req", "server CPU µs per request (sum of 3)")
if has("cluster-big"):
    row(f"3 members: put {KL} keys (256 B), 256 clients", "cluster-put-big", "throughput", "req/s")
    row(f"3 members: put {KL} keys (256 B), 256 clients", "cluster-put-big", "server_cpu_us_per_req",
        "server CPU µs per request (sum of 3)")
    row(f"3 members after {KL} keys", "cluster-big", "rss_mb", "peak RSS MiB (sum of 3)", ("<=", 0.3))
    row(f"3 members after {KL} keys", "cluster-big", "dir_mb", "data dirs MiB (sum of 3)")
errs = {(r["side"], r["name"]): r.get("errors", 0) for r in rows if r.get("errors")}
for r in rows:  # a watcher that missed, repeated or reordered events is an error too
    if r.get("events_missing_prev_kv") or r.get("informers_caught_up") is False:
        k = (r["side"], f'{r["name"]} round {r["round"]} ({r.get("events_missing_prev_kv", 0)} events without '
                        f'prev_kv, informers caught up: {r.get("informers_caught_up")})')
        errs[k] = errs.get(k, 0) + 1
    missing = r.get("events_expected", 0) - r.get("events_received", 0)
    if missing or r.get("events_out_of_order"):
        k = (r["side"], f'{r["name"]} round {r["round"]} ({missing} events missing, '
                        f'{r.get("events_out_of_order", 0)} out of order)')
        errs[k] = errs.get(k, 0) + 1
if errs:
    print()
    print("errors: " + ", ".join(f"{s} {n}: {e}" for (s, n), e in errs.items()))
