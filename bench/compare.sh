#!/usr/bin/env bash
# Side-by-side benchmark of etcd-rs against the real etcd: same flags, fresh data dirs, same ports,
# each workload series run A/B/A/B (ROUNDS times per side), medians and the ratio etcd-rs / etcd.
# Prints the README's benchmark table (markdown) on stdout; progress and raw JSON go to stderr and
# $OUT/results.jsonl.
#
# Environment (all optional):
#   ETCD_BIN      reference etcd (default: etcd on PATH, else /usr/bin/etcd, else /opt/etcd-3.5/bin/etcd)
#   ETCDCTL_BIN   etcdctl for seeding a key (default: etcdctl on PATH)
#   ETCD_RS_BIN   etcd-rs (default: target/release/etcd-rs)
#   BENCH_BIN     etcd-rs-bench (default: target/release/etcd-rs-bench)
#   ROUNDS        rounds per side for the short workloads (default 3)
#   BIG_KEYS      keys written for the RSS / data-dir / restart rows (default 1000000; 0 skips)
#   SCALE         multiplies the request totals of the short workloads (default 1)
#   OUT           where data dirs, logs and results go (default: a new dir under /var/tmp)
#   KEEP_DATA     set to keep each server's data dir after its run (removed by default)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
find_etcd() {
  command -v etcd 2>/dev/null && return
  for p in /usr/bin/etcd /usr/local/bin/etcd /opt/etcd-3.5/bin/etcd; do [ -x "$p" ] && { echo "$p"; return; }; done
  echo "no etcd found: set ETCD_BIN" >&2; exit 1
}
ETCD_BIN="${ETCD_BIN:-$(find_etcd)}"
ETCDCTL_BIN="${ETCDCTL_BIN:-$(command -v etcdctl || echo "$(dirname "$ETCD_BIN")/etcdctl")}"
ETCD_RS_BIN="${ETCD_RS_BIN:-$here/target/release/etcd-rs}"
BENCH_BIN="${BENCH_BIN:-$here/target/release/etcd-rs-bench}"
ROUNDS="${ROUNDS:-3}"
BIG_KEYS="${BIG_KEYS:-1000000}"
SCALE="${SCALE:-1}"
OUT="${OUT:-$(mktemp -d /var/tmp/etcd-compare.XXXXXX)}"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
for b in "$ETCD_BIN" "$ETCD_RS_BIN" "$BENCH_BIN"; do [ -x "$b" ] || { echo "missing $b (cargo build --release)" >&2; exit 1; }; done
calc() { awk "BEGIN{printf \"%.3f\", $*}"; }
log() { echo "[compare] $*" >&2; }

port_free() { ! ss -ltn | awk '{print $4}' | grep -q ":$1\$"; }
pick_ports() {
  while :; do
    CPORT=$((20000 + RANDOM % 30000)); PPORT=$((CPORT + 1))
    port_free "$CPORT" && port_free "$PPORT" && return
  done
}
pick_ports
EP="127.0.0.1:$CPORT"
PID=""

# start SIDE DATADIR: starts the server with etcd's flags and waits until a read succeeds;
# sets PID and READY_S (seconds from exec to the first successful linearizable read).
start() {
  local side=$1 dir=$2 bin
  if [ "$side" = etcd ]; then bin=$ETCD_BIN; else bin=$ETCD_RS_BIN; fi
  port_free "$CPORT" || { echo "port $CPORT taken by someone else" >&2; exit 1; }
  local t0; t0=$(date +%s.%N)
  setsid "$bin" --name bench --data-dir "$dir" \
    --listen-client-urls "http://$EP" --advertise-client-urls "http://$EP" \
    --listen-peer-urls "http://127.0.0.1:$PPORT" --initial-advertise-peer-urls "http://127.0.0.1:$PPORT" \
    --initial-cluster "bench=http://127.0.0.1:$PPORT" --quota-backend-bytes 8589934592 \
    >> "$dir.log" 2>&1 < /dev/null &
  PID=$!
  for _ in $(seq 1 1200); do
    kill -0 "$PID" 2>/dev/null || { echo "$side exited; log: $dir.log" >&2; tail -5 "$dir.log" >&2; exit 1; }
    if "$BENCH_BIN" --endpoints "$EP" --dial-timeout 1s --total 1 --json range probe >/dev/null 2>&1; then
      READY_S=$(calc "$(date +%s.%N) - $t0"); return
    fi
    sleep 0.05
  done
  echo "$side not ready after 60 s" >&2; exit 1
}
stop() {
  [ -n "$PID" ] || return 0
  kill -TERM "$PID" 2>/dev/null || true
  for _ in $(seq 1 200); do kill -0 "$PID" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  PID=""
}
trap stop EXIT
hwm_kb() { awk '/VmHWM/{print $2}' "/proc/$PID/status"; }
dir_kb() { du -sk "$1" | awk '{print $1}'; }
record() { # record SIDE ROUND NAME JSON
  python3 -c 'import json,sys; d=json.loads(sys.argv[4]); d.update(side=sys.argv[1], round=int(sys.argv[2]), name=sys.argv[3]); print(json.dumps(d))' "$@" >> "$RESULTS"
}
bench() { # bench SIDE ROUND NAME ARGS...
  local side=$1 round=$2 name=$3; shift 3
  log "$side round $round: $name"
  local j; j=$("$BENCH_BIN" --endpoints "$EP" --json "$@")
  record "$side" "$round" "$name" "$j"
}
n() { awk "BEGIN{printf \"%d\", $1 * $SCALE}"; }

series() { # the short workloads on one fresh server
  local side=$1 round=$2 dir="$OUT/$1-$2"
  rm -rf "$dir" "$dir.log"
  start "$side" "$dir"
  bench "$side" "$round" put-1c --conns 1 --clients 1 --total "$(n 2000)" put --key-size 8 --val-size 256 --key-space-size 100000
  bench "$side" "$round" put-256c --conns 16 --clients 256 --total "$(n 100000)" put --key-size 8 --val-size 256 --key-space-size 100000
  "$ETCDCTL_BIN" --endpoints "$EP" put foo "$(head -c 256 /dev/zero | tr '\0' x)" >/dev/null
  bench "$side" "$round" range-l-256c --conns 16 --clients 256 --total "$(n 100000)" range foo --consistency l
  bench "$side" "$round" range-s-256c --conns 16 --clients 256 --total "$(n 100000)" range foo --consistency s
  bench "$side" "$round" txn-put-64c --conns 16 --clients 64 --total "$(n 50000)" txn-put --key-size 8 --val-size 256 --key-space-size 100000
  record "$side" "$round" series-rss "{\"rss_mb\": $(calc "$(hwm_kb) / 1024"), \"ready_s\": $READY_S}"
  stop
  [ -n "${KEEP_DATA:-}" ] || rm -rf "$dir"
}

big() { # BIG_KEYS keys of 256 bytes, then peak RSS, data-dir size and restart-to-ready
  local side=$1 dir="$OUT/$1-big"
  rm -rf "$dir" "$dir.log"
  start "$side" "$dir"
  bench "$side" 0 put-big --conns 16 --clients 256 --total "$BIG_KEYS" put --key-size 8 --val-size 256 --key-space-size "$BIG_KEYS" --sequential-keys
  local rss; rss=$(hwm_kb)
  stop
  local size; size=$(dir_kb "$dir")
  start "$side" "$dir"
  record "$side" 0 big "{\"rss_mb\": $(calc "$rss / 1024"), \"dir_mb\": $(calc "$size / 1024"), \"restart_s\": $READY_S, \"restart_rss_mb\": $(calc "$(hwm_kb) / 1024")}"
  stop
  [ -n "${KEEP_DATA:-}" ] || rm -rf "$dir"
}

log "etcd: $ETCD_BIN ($("$ETCD_BIN" --version | head -1)); etcd-rs: $ETCD_RS_BIN; results: $RESULTS"
fsync_json=$("$BENCH_BIN" fsync-probe --dir "$OUT" --count 1000 --json)
record machine 0 fsync "$fsync_json"
for r in $(seq 1 "$ROUNDS"); do
  series etcd "$r"
  series etcd-rs "$r"
done
if [ "$BIG_KEYS" -gt 0 ]; then
  big etcd
  big etcd-rs
fi

ETCD_VERSION="$("$ETCD_BIN" --version | head -1)" MACHINE="$(nproc) vCPU $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(df -T "$OUT" | awk 'NR==2{print $2}') on $(df "$OUT" | awk 'NR==2{print $1}'), Linux $(uname -r)" \
BIG_KEYS="$BIG_KEYS" python3 "$here/bench/summarize.py" "$RESULTS"
