#!/usr/bin/env bash
# Where a 3-member etcd-rs cluster spends its CPU under load: starts m1..m3 on loopback (release
# binary, fresh data dirs), runs the 256-client put load spread over the three endpoints, and
# records `perf record` (cpu-clock samples, DWARF call graphs: the release build has no frame
# pointers) of every member for PROFILE_SECONDS. Prints `perf report --no-children` top entries per
# member, leader first; the perf.data files stay in $OUT for `perf report -i` (callers, -g).
# When perf cannot sample here, falls back to `valgrind --tool=callgrind` on m1 under a smaller
# load (instruction counts: they do not move with machine noise) and prints callgrind_annotate's top.
#
# Environment (all optional):
#   ETCD_RS_BIN, BENCH_BIN, ETCDCTL_BIN   as in compare.sh
#   PROFILE_SECONDS  seconds recorded per member (default 10)
#   WARMUP_SECONDS   seconds of load before the recording (default 15: a fresh member's first
#                    seconds are spent growing its heap, page faults and zeroing that a
#                    long-running member does not pay)
#   TOP              entries printed per member (default 10)
#   FREQ             samples per second (default 499)
#   CALLGRAPH        perf --call-graph mode: dwarf (default), fp, or none
#   LOAD             the load generator's arguments (default: 256 clients / 16 conns put, 256 B)
#   OUT              where data dirs, logs and profiles go (default: a new dir under /var/tmp)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
ETCD_RS_BIN="${ETCD_RS_BIN:-$here/target/release/etcd-rs}"
BENCH_BIN="${BENCH_BIN:-$here/target/release/etcd-rs-bench}"
ETCDCTL_BIN="${ETCDCTL_BIN:-$(command -v etcdctl || echo /usr/bin/etcdctl)}"
PROFILE_SECONDS="${PROFILE_SECONDS:-10}"
WARMUP_SECONDS="${WARMUP_SECONDS:-15}"
TOP="${TOP:-10}"
FREQ="${FREQ:-499}"
CALLGRAPH="${CALLGRAPH:-dwarf}"
LOAD="${LOAD:---conns 16 --clients 256 put --key-size 8 --val-size 256 --key-space-size 100000}"
OUT="${OUT:-$(mktemp -d /var/tmp/etcd-rs-profile.XXXXXX)}"
for b in "$ETCD_RS_BIN" "$BENCH_BIN" "$ETCDCTL_BIN"; do [ -x "$b" ] || { echo "missing $b" >&2; exit 1; }; done
log() { echo "[profile] $*" >&2; }

# Can perf sample here? (Hardware counters are often missing in VMs; cpu-clock is a software event.)
USE_PERF=""
if command -v perf >/dev/null && perf record -q -e cpu-clock -F 999 -o "$OUT/probe.data" -- \
     sh -c 'i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done' >/dev/null 2>&1 &&
   perf report -i "$OUT/probe.data" --stdio 2>/dev/null | grep -q '%'; then
  USE_PERF=1
fi
rm -f "$OUT/probe.data"
command -v valgrind >/dev/null || [ -n "$USE_PERF" ] || { echo "neither perf nor valgrind can profile here" >&2; exit 1; }

PIDS=()
cleanup() { # stop the members, drop their data dirs (profiles and logs stay)
  local p; for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$OUT/m1" "$OUT/m2" "$OUT/m3"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# free loopback ports below the ephemeral range (as compare.sh picks them)
low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
TAKEN=" "
free_port() { # free_port VAR: sets VAR to a port not handed out before in this run
  local p
  while :; do
    p=$((10000 + RANDOM % (low > 12000 ? low - 10000 : 20000)))
    [[ "$TAKEN" == *" $p "* ]] || ss -Htan exclude time-wait | awk '{print $4}' | grep -q ":$p\$" || { TAKEN="$TAKEN$p "; printf -v "$1" %s "$p"; return; }
  done
}
cp=() pp=() eps="" initial=""
for i in 1 2 3; do
  free_port "cp[$i]"; free_port "pp[$i]"
  initial="${initial:+$initial,}m$i=http://127.0.0.1:${pp[i]}"
  eps="${eps:+$eps,}127.0.0.1:${cp[i]}"
done
for i in 1 2 3; do
  wrap=()
  [ -n "$USE_PERF" ] || [ "$i" != 1 ] || wrap=(valgrind --tool=callgrind --callgrind-out-file="$OUT/m1.callgrind")
  "${wrap[@]}" "$ETCD_RS_BIN" --name "m$i" --data-dir "$OUT/m$i" \
    --listen-client-urls "http://127.0.0.1:${cp[i]}" --advertise-client-urls "http://127.0.0.1:${cp[i]}" \
    --listen-peer-urls "http://127.0.0.1:${pp[i]}" --initial-advertise-peer-urls "http://127.0.0.1:${pp[i]}" \
    --initial-cluster "$initial" --initial-cluster-state new --quota-backend-bytes 8589934592 \
    > "$OUT/m$i.log" 2>&1 < /dev/null &
  PIDS[i]=$!
done
for i in 1 2 3; do
  for _ in $(seq 1 1200); do
    "$BENCH_BIN" --endpoints "127.0.0.1:${cp[i]}" --dial-timeout 1s --total 1 --json range probe >/dev/null 2>&1 && break
    kill -0 "${PIDS[i]}" 2>/dev/null || { echo "m$i exited; log: $OUT/m$i.log" >&2; exit 1; }
    sleep 0.05
  done
done
leader=$("$ETCDCTL_BIN" --endpoints "$eps" endpoint status -w json | python3 -c '
import json, sys
for s in json.load(sys.stdin):
    if s["Status"]["header"]["member_id"] == s["Status"]["leader"]:
        print(s["Endpoint"])')
order=()
for i in 1 2 3; do [ "127.0.0.1:${cp[i]}" = "$leader" ] && order=("$i" "${order[@]}") || order+=("$i"); done
log "cluster up (leader m${order[0]} at $leader); output in $OUT"

if [ -n "$USE_PERF" ]; then
  cg=(); [ "$CALLGRAPH" = none ] || cg=(--call-graph "$([ "$CALLGRAPH" = dwarf ] && echo dwarf,16384 || echo "$CALLGRAPH")")
  # The load runs WARMUP_SECONDS before and 2 s after the recording window.
  # shellcheck disable=SC2086
  "$BENCH_BIN" --endpoints "$eps" --threads 1 --duration "$((WARMUP_SECONDS + PROFILE_SECONDS + 2))s" --json $LOAD > "$OUT/load.json" &
  load=$!
  sleep "$WARMUP_SECONDS"
  rec=()
  for i in 1 2 3; do
    perf record -q -e cpu-clock -F "$FREQ" "${cg[@]}" -p "${PIDS[i]}" -o "$OUT/m$i.perf" -- sleep "$PROFILE_SECONDS" 2>> "$OUT/perf.log" &
    rec+=($!)
  done
  wait "${rec[@]}"
  wait "$load"
  log "load: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.0f req/s, p99 %.1f ms, %d errors" % (d["throughput"], d["latency_ms"]["p99"], d["errors"]))' "$OUT/load.json")"
  for i in "${order[@]}"; do
    role=follower; [ "$i" = "${order[0]}" ] && role=leader
    echo "== m$i ($role): top $TOP by self time (perf report --no-children, cpu-clock) =="
    perf report -i "$OUT/m$i.perf" --no-children --stdio -g none --sort dso,sym 2>/dev/null |
      awk -v top="$TOP" '!/^#/ && NF && n++ < top' # reads all: no SIGPIPE under pipefail
  done
else
  log "perf cannot sample here: callgrind on m1 with a smaller load"
  # shellcheck disable=SC2086
  "$BENCH_BIN" --endpoints "$eps" --threads 1 --total 5000 --json ${LOAD/--clients 256/--clients 16} > "$OUT/load.json"
  kill -TERM "${PIDS[1]}"; wait "${PIDS[1]}" 2>/dev/null || true
  role=follower; [ "${order[0]}" = 1 ] && role=leader
  echo "== m1 ($role): top $TOP by self instructions (callgrind_annotate) =="
  callgrind_annotate "$OUT/m1.callgrind" 2>/dev/null | sed -n '/Ir/,$p' | awk -v top="$TOP" '!/^-/ && n++ < top + 2'
fi
