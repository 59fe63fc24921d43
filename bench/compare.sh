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
#   SECTIONS      which sections to run, space separated
#                 (default "kv big watch lease cluster cluster5 cluster-go cluster-big"):
#                   kv      put / range / txn-put series on one member (ROUNDS per side)
#                   big     BIG_KEYS keys: peak RSS, data dir, restart (once per side)
#                   watch   idle-watcher memory, put-to-event latency with 100 and 10,000 watchers
#                   lease   lease keep-alive throughput
#                   cluster put (256 clients; 1 client to the leader and to a follower), range,
#                           the kube mix, on a 3-member loopback cluster of each
#                   cluster5 put (256 clients) on a 5-member loopback cluster of each
#                   cluster-go put (256 clients) on 3 members with Go's clientv3 as the load
#                           generator (bench/go/clientv3_put; GO_SECONDS per run, default 15)
#                   cluster-big  BIG_KEYS keys on a 3-member cluster: summed peak RSS (once per side)
#   ROUNDS        rounds per side for the kv, watch, lease, cluster, cluster5, cluster-go sections (default 3)
#   BIG_KEYS      keys written for the RSS / data-dir / restart rows of big and cluster-big
#                 (default 1000000; 0 skips both)
#   SCALE         multiplies the request totals (puts, ranges, keep-alives) of the short workloads
#                 (default 1); watcher counts do not scale
#   IDLE_WATCHERS idle watchers opened for the memory-per-watcher row (default 10000)
#   BENCH_THREADS threads of the load generator (default 1: on a small machine it shares the
#                 cores with the server under test, and one thread costs it the least CPU per
#                 request; 0 is one per core)
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
SECTIONS="${SECTIONS:-kv big watch lease cluster cluster5 cluster-go cluster-big}"
IDLE_WATCHERS="${IDLE_WATCHERS:-10000}"
BENCH_THREADS="${BENCH_THREADS:-1}"
for s in $SECTIONS; do
  case "$s" in kv|big|watch|lease|cluster|cluster5|cluster-go|cluster-big) ;;
    *) echo "unknown section $s in SECTIONS (kv big watch lease cluster cluster5 cluster-go cluster-big)" >&2; exit 1;; esac
done
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
OUT="${OUT:-$(mktemp -d /var/tmp/etcd-compare.XXXXXX)}"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
for b in "$ETCD_BIN" "$ETCD_RS_BIN" "$BENCH_BIN"; do [ -x "$b" ] || { echo "missing $b (cargo build --release)" >&2; exit 1; }; done
calc() { awk "BEGIN{printf \"%.3f\", $*}"; }
log() { echo "[compare] $*" >&2; }

# A port no socket uses (listening or connected; TIME-WAIT does not stop a bind), below the
# kernel's ephemeral range: the members' and clients' outgoing connections take local ports from
# that range, and one of them holding a port between our check and a member's bind made the member
# fail with "address already in use".
port_free() { ! ss -Htan exclude time-wait | awk '{print $4}' | grep -q ":$1\$"; }
EPHEMERAL_LOW=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
TAKEN=" "
free_port() { # free_port VAR: sets VAR to a free loopback port not handed out before in this run
  local p
  while :; do
    p=$((10000 + RANDOM % (EPHEMERAL_LOW > 12000 ? EPHEMERAL_LOW - 10000 : 20000)))
    [[ "$TAKEN" != *" $p "* ]] && port_free "$p" && { TAKEN="$TAKEN$p "; printf -v "$1" %s "$p"; return; }
  done
}
free_port CPORT; free_port PPORT
EP="127.0.0.1:$CPORT"
PID=""      # the single member (kv, big, watch, lease)
PIDS=""     # every server process started and not yet stopped
CPU_PIDS="" # the servers whose CPU time bench() charges to the requests (every member)
HOLD_PID="" # a watch-hold client

# launch SIDE NAME DIR CPORT PPORT INITIAL_CLUSTER [FLAGS...]: starts one member with etcd's flags
# in the background; sets LAUNCHED to its pid.
launch() {
  local side=$1 name=$2 dir=$3 cport=$4 pport=$5 initial=$6 bin; shift 6
  if [ "$side" = etcd ]; then bin=$ETCD_BIN; else bin=$ETCD_RS_BIN; fi
  port_free "$cport" && port_free "$pport" || { echo "port $cport or $pport taken by someone else" >&2; exit 1; }
  setsid "$bin" --name "$name" --data-dir "$dir" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "$initial" --quota-backend-bytes 8589934592 "$@" \
    >> "$dir.log" 2>&1 < /dev/null &
  LAUNCHED=$!
  PIDS="$PIDS $LAUNCHED"
}
# wait_ready WHAT LOG PID ENDPOINT: until a linearizable read through ENDPOINT succeeds (60 s).
wait_ready() {
  local what=$1 logf=$2 pid=$3 ep=$4
  for _ in $(seq 1 1200); do
    kill -0 "$pid" 2>/dev/null || { echo "$what exited; log: $logf" >&2; tail -5 "$logf" >&2; exit 1; }
    "$BENCH_BIN" --endpoints "$ep" --dial-timeout 1s --total 1 --json range probe >/dev/null 2>&1 && return
    sleep 0.05
  done
  echo "$what not ready after 60 s; log: $logf" >&2; exit 1
}

# start SIDE DATADIR: starts a single member and waits until a read succeeds;
# sets PID and READY_S (seconds from exec to the first successful linearizable read).
start() {
  local side=$1 dir=$2
  local t0; t0=$(date +%s.%N)
  launch "$side" bench "$dir" "$CPORT" "$PPORT" "bench=http://127.0.0.1:$PPORT"
  PID=$LAUNCHED
  CPU_PIDS=$PID
  wait_ready "$side" "$dir.log" "$PID" "$EP"
  READY_S=$(calc "$(date +%s.%N) - $t0")
}
stop_pid() {
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 1 200); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
stop() { # stops every server started (and a watch-hold client)
  [ -z "$HOLD_PID" ] || { stop_pid "$HOLD_PID"; HOLD_PID=""; }
  local p
  for p in $PIDS; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $PIDS; do stop_pid "$p"; done
  PIDS=""; PID=""; CPU_PIDS=""
}
trap stop EXIT
trap 'exit 130' INT TERM
hwm_kb() { awk '/VmHWM/{print $2}' "/proc/${1:-$PID}/status"; }
rss_kb() { awk '/VmRSS/{print $2}' "/proc/${1:-$PID}/status"; }
dir_kb() { du -sk "$1" | awk '{print $1}'; }
record() { # record SIDE ROUND NAME JSON
  python3 -c 'import json,sys; d=json.loads(sys.argv[4]); d.update(side=sys.argv[1], round=int(sys.argv[2]), name=sys.argv[3]); print(json.dumps(d))' "$@" >> "$RESULTS"
}
cpu_ticks() { # utime + stime of the given pids, summed, in clock ticks
  local p t=0
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$t"
}
CLK_TCK="$(getconf CLK_TCK)"
bench() { # bench SIDE ROUND NAME ARGS...  (against $BENCH_EP, default the single member)
  local side=$1 round=$2 name=$3; shift 3
  log "$side round $round: $name"
  # the servers' CPU time over the run (every member of a cluster, summed): their cost per
  # request, whatever the load generator (on the same cores) costs
  local t0=""; [ -n "$CPU_PIDS" ] && t0=$(cpu_ticks $CPU_PIDS)
  local j; j=$("$BENCH_BIN" --endpoints "${BENCH_EP:-$EP}" --threads "$BENCH_THREADS" --json "$@")
  if [ -n "$t0" ]; then
    j=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); n=max(d["requests"],1); d["server_cpu_us_per_req"]=(int(sys.argv[3])-int(sys.argv[2]))/int(sys.argv[4])*1e6/n; print(json.dumps(d))' "$j" "$t0" "$(cpu_ticks $CPU_PIDS)" "$CLK_TCK")
  fi
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

watch_series() { # idle-watcher memory, then put-to-event latency with 100 and 10,000 watchers
  local side=$1 round=$2 dir="$OUT/$1-watch-$2"
  rm -rf "$dir" "$dir.log"
  start "$side" "$dir"
  # Memory: VmRSS with IDLE_WATCHERS idle watchers (distinct keys, 100 per stream, streams over
  # 10 connections) held open, minus VmRSS just before they were opened; both read 2 s after
  # the previous step so the server has settled.
  local per=100 streams=$(( (IDLE_WATCHERS + 99) / 100 ))
  [ "$IDLE_WATCHERS" -ge 100 ] || { per=$IDLE_WATCHERS; streams=1; }
  sleep 2
  local before; before=$(rss_kb)
  log "$side round $round: watch-hold ($((streams * per)) idle watchers)"
  "$BENCH_BIN" --endpoints "$EP" --conns 10 --json watch-hold --streams "$streams" --watchers-per-stream "$per" --hold 10m \
    > "$dir.hold" 2>> "$dir.log" &
  HOLD_PID=$!
  for _ in $(seq 1 1200); do
    [ -s "$dir.hold" ] && break
    kill -0 "$HOLD_PID" 2>/dev/null || { echo "watch-hold exited: $(cat "$dir.hold")" >&2; exit 1; }
    sleep 0.1
  done
  [ -s "$dir.hold" ] || { echo "watch-hold: watchers not created in 120 s" >&2; exit 1; }
  sleep 2
  local after; after=$(rss_kb)
  kill -0 "$HOLD_PID" 2>/dev/null || { echo "watch-hold exited while holding its watchers" >&2; exit 1; }
  local setup_s; setup_s=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["setup_s"])' "$dir.hold")
  stop_pid "$HOLD_PID"; HOLD_PID=""
  local nw=$((streams * per))
  record "$side" "$round" watch-idle "{\"watchers\": $nw, \"rss_before_mb\": $(calc "$before / 1024"), \"rss_after_mb\": $(calc "$after / 1024"), \"mib_per_10k\": $(calc "($after - $before) / 1024 * 10000 / $nw"), \"setup_s\": $setup_s}"
  # Latency: every watcher watches the key one client puts to at a fixed rate; an event's
  # latency is from just before its put is sent to its arrival on the watcher's stream.
  bench "$side" "$round" watch-100 --conns 1 --clients 1 --rate 200 --total "$(n 4000)" \
    watch-latency --streams 10 --watchers-per-stream 10
  bench "$side" "$round" watch-10k --conns 10 --clients 1 --rate 10 --total "$(n 300)" \
    watch-latency --streams 100 --watchers-per-stream 100 --drain-timeout 30s
  stop
  [ -n "${KEEP_DATA:-}" ] || rm -rf "$dir"
}

lease_series() {
  local side=$1 round=$2 dir="$OUT/$1-lease-$2"
  rm -rf "$dir" "$dir.log"
  start "$side" "$dir"
  bench "$side" "$round" lease-keepalive-256c --conns 16 --clients 256 --total "$(n 100000)" lease-keepalive
  stop
  [ -n "${KEEP_DATA:-}" ] || rm -rf "$dir"
}

# start_cluster SIDE TAG SIZE: SIZE members m1..mSIZE on loopback, started together, each ready
# when a linearizable read through it succeeds. Sets M_PIDS[i], M_EPS[i], CLUSTER_EPS (all client
# endpoints, comma separated), CLUSTER_DIR (data dirs are $CLUSTER_DIR.m<i>) and CPU_PIDS.
start_cluster() {
  local side=$1 tag=$2 size=$3 i initial=""
  CLUSTER_DIR="$OUT/$side-$tag"
  rm -rf "$CLUSTER_DIR".m* "$CLUSTER_DIR".m*.log
  local cp=() pp=()
  M_PIDS=(); M_EPS=(); CLUSTER_EPS=""
  for i in $(seq 1 "$size"); do
    free_port "cp[$i]"; free_port "pp[$i]"
    initial="${initial:+$initial,}m$i=http://127.0.0.1:${pp[i]}"
    M_EPS[i]="127.0.0.1:${cp[i]}"
    CLUSTER_EPS="${CLUSTER_EPS:+$CLUSTER_EPS,}${M_EPS[i]}"
  done
  for i in $(seq 1 "$size"); do
    launch "$side" "m$i" "$CLUSTER_DIR.m$i" "${cp[i]}" "${pp[i]}" "$initial" \
      --initial-cluster-state new --initial-cluster-token "bench-$side-$tag"
    M_PIDS[i]=$LAUNCHED
  done
  for i in $(seq 1 "$size"); do wait_ready "$side m$i" "$CLUSTER_DIR.m$i.log" "${M_PIDS[i]}" "${M_EPS[i]}"; done
  CPU_PIDS="${M_PIDS[*]}"
}
stop_cluster() {
  stop
  [ -n "${KEEP_DATA:-}" ] || rm -rf "$CLUSTER_DIR".m?
}
# leader_ep: the client endpoint of the member that is leader now (etcdctl endpoint status).
leader_ep() {
  "$ETCDCTL_BIN" --endpoints "$CLUSTER_EPS" endpoint status -w json | python3 -c '
import json, sys
for s in json.load(sys.stdin):
    if s["Status"]["header"]["member_id"] == s["Status"]["leader"]:
        print(s["Endpoint"]); break
else:
    sys.exit("no member says it is the leader")'
}
cluster_rss_mb() { # the members' VmHWM, summed, in MiB
  local p kb=0
  for p in "${M_PIDS[@]}"; do kb=$((kb + $(hwm_kb "$p"))); done
  calc "$kb / 1024"
}

cluster_series() { # a 3-member loopback cluster; the 256-client loads are spread over the three endpoints
  local side=$1 round=$2
  start_cluster "$side" "cluster-$round" 3
  BENCH_EP=$CLUSTER_EPS
  bench "$side" "$round" cluster-put-256c --conns 16 --clients 256 --total "$(n 100000)" put --key-size 8 --val-size 256 --key-space-size 100000
  # One client, its connection to the leader, then to a follower (forwarded to the leader).
  local leader follower e
  leader=$(leader_ep)
  for e in "${M_EPS[@]}"; do [ "$e" = "$leader" ] || { follower=$e; break; }; done
  BENCH_EP=$leader bench "$side" "$round" cluster-put-1c --conns 1 --clients 1 --total "$(n 1000)" put --key-size 8 --val-size 256 --key-space-size 100000
  BENCH_EP=$follower bench "$side" "$round" cluster-put-1c-follower --conns 1 --clients 1 --total "$(n 1000)" put --key-size 8 --val-size 256 --key-space-size 100000
  "$ETCDCTL_BIN" --endpoints "$CLUSTER_EPS" put foo "$(head -c 256 /dev/zero | tr '\0' x)" >/dev/null
  bench "$side" "$round" cluster-range-l-256c --conns 16 --clients 256 --total "$(n 100000)" range foo --consistency l
  bench "$side" "$round" cluster-range-s-256c --conns 16 --clients 256 --total "$(n 100000)" range foo --consistency s
  # The Kubernetes-like mix; its 2 informers watch (prev_kv) through the first two members.
  bench "$side" "$round" cluster-kube --conns 16 --clients 64 --total "$(n 20000)" kube --objects 10000 --informers 2
  unset BENCH_EP
  record "$side" "$round" cluster-rss "{\"rss_mb\": $(cluster_rss_mb)}"
  stop_cluster
}

cluster5_series() { # put, 256 clients / 16 conns spread over a 5-member loopback cluster
  local side=$1 round=$2
  start_cluster "$side" "cluster5-$round" 5
  BENCH_EP=$CLUSTER_EPS bench "$side" "$round" cluster5-put-256c --conns 16 --clients 256 --total "$(n 100000)" put --key-size 8 --val-size 256 --key-space-size 100000
  stop_cluster
}

# The Go clientv3 put load generator (bench/go/clientv3_put), built once per run in GOPATH mode
# against Debian's golang-etcd-server-dev (clientv3 3.4); empty when `go` is missing.
GO_PUT=""
build_go_put() {
  command -v go >/dev/null || { log "cluster-go skipped: go not installed (apt-get install golang-go golang-etcd-server-dev)"; return 1; }
  GO_PUT="$OUT/clientv3_put"
  GO111MODULE=off GOFLAGS= GOPATH="$OUT/gopath:/usr/share/gocode" GOCACHE="$OUT/go-cache" \
    go build -o "$GO_PUT" "$here/bench/go/clientv3_put/main.go"
}
cluster_go_series() { # put, 256 clients / 16 clientv3 clients over a 3-member cluster, Go's client
  local side=$1 round=$2
  start_cluster "$side" "cluster-go-$round" 3
  log "$side round $round: cluster-go-put-256c"
  local t0 j; t0=$(cpu_ticks $CPU_PIDS)
  j=$("$GO_PUT" --endpoints "$CLUSTER_EPS" --conns 16 --clients 256 --val-size 256 --key-space 100000 --duration "${GO_SECONDS:-15}s")
  j=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); n=max(d["requests"],1); d["server_cpu_us_per_req"]=(int(sys.argv[3])-int(sys.argv[2]))/int(sys.argv[4])*1e6/n; print(json.dumps(d))' "$j" "$t0" "$(cpu_ticks $CPU_PIDS)" "$CLK_TCK")
  record "$side" "$round" cluster-go-put-256c "$j"
  stop_cluster
}

cluster_big() { # BIG_KEYS keys of 256 bytes on a 3-member cluster, then the members' peak RSS summed
  local side=$1
  start_cluster "$side" cluster-big 3
  BENCH_EP=$CLUSTER_EPS bench "$side" 0 cluster-put-big --conns 16 --clients 256 --total "$BIG_KEYS" put --key-size 8 --val-size 256 --key-space-size "$BIG_KEYS" --sequential-keys
  local disk=0 i
  for i in "${!M_PIDS[@]}"; do disk=$((disk + $(dir_kb "$CLUSTER_DIR.m$i"))); done
  record "$side" 0 cluster-big "{\"rss_mb\": $(cluster_rss_mb), \"dir_mb\": $(calc "$disk / 1024")}"
  stop_cluster
}

log "etcd: $ETCD_BIN ($("$ETCD_BIN" --version | head -1)); etcd-rs: $ETCD_RS_BIN; results: $RESULTS"
fsync_json=$("$BENCH_BIN" fsync-probe --dir "$OUT" --count 1000 --json)
record machine 0 fsync "$fsync_json"
log "sections: $SECTIONS"
run_section() { # run_section FN: FN etcd r, FN etcd-rs r for r in 1..ROUNDS (A/B/A/B), timed
  local t0=$SECONDS r
  for r in $(seq 1 "$ROUNDS"); do
    "$1" etcd "$r"
    "$1" etcd-rs "$r"
  done
  log "$1: $((SECONDS - t0)) s"
}
want kv && run_section series
if want big && [ "$BIG_KEYS" -gt 0 ]; then
  t0=$SECONDS
  big etcd
  big etcd-rs
  log "big: $((SECONDS - t0)) s"
fi
want watch && run_section watch_series
want lease && run_section lease_series
want cluster && run_section cluster_series
want cluster5 && run_section cluster5_series
want cluster-go && build_go_put && run_section cluster_go_series
if want cluster-big && [ "$BIG_KEYS" -gt 0 ]; then
  t0=$SECONDS
  cluster_big etcd
  cluster_big etcd-rs
  log "cluster-big: $((SECONDS - t0)) s"
fi

ETCD_VERSION="$("$ETCD_BIN" --version | head -1)" MACHINE="$(nproc) vCPU $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/Mem:/{print $2}') GiB RAM, $(df -T "$OUT" | awk 'NR==2{print $2}') on $(df "$OUT" | awk 'NR==2{print $1}'), Linux $(uname -r)" \
BIG_KEYS="$BIG_KEYS" SCALE="$SCALE" IDLE_WATCHERS="$IDLE_WATCHERS" python3 "$here/bench/summarize.py" "$RESULTS"
