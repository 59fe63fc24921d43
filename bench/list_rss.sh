#!/usr/bin/env bash
# Server memory while listing a large keyspace: RangeStream vs Range (issue 16 point 3).
#
# Loads KEYS keys (8-byte keys, VAL_SIZE-byte values, as `put --sequential-keys`) into a fresh
# etcd-rs, then, on a freshly restarted server each time (clean baseline), lists them all once
# with RangeStream and once with Range (`etcd-rs-bench list-rss`) and prints one JSON line per
# list: the server's RSS before, its peak during the list, and the growth. LISTS > 1 lists that
# many times in each server process (the later lists show what the first one left behind).
#
#   cargo build --release --bin etcd-rs -p etcd-bench
#   bench/list_rss.sh                  # KEYS=1000000 VAL_SIZE=256
#   KEYS=100000 CHUNK_DELAY=5ms bench/list_rss.sh
#   DATA_DIR=/tmp/data1m LISTS=3 MODES=stream bench/list_rss.sh   # 3 RangeStream lists, same process
#
# Environment: ETCD_RS_BIN (default target/release/etcd-rs), BENCH_BIN (default
# target/release/etcd-rs-bench), KEYS, VAL_SIZE, CHUNK_DELAY (a pause after each RangeStream
# chunk, a slow client), OUT (JSON lines appended there too; default: none), DATA_DIR (a data dir
# to keep: loaded when it does not exist yet, reused as it is when it does), LISTS (lists per
# server process, default 1), MODES ("stream range" by default: which RPCs, each on a fresh server),
# ETCD_RS_FLAGS (more flags for etcd-rs, e.g. "--max-request-bytes=262144": smaller chunks).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${ETCD_RS_BIN:-$PWD/target/release/etcd-rs}
BENCH=${BENCH_BIN:-$PWD/target/release/etcd-rs-bench}
KEYS=${KEYS:-1000000}
VAL_SIZE=${VAL_SIZE:-256}
CHUNK_DELAY=${CHUNK_DELAY:-0ms}
LISTS=${LISTS:-1}
MODES=${MODES:-stream range}
DIR=$(mktemp -d /tmp/list-rss.XXXXXX)
DATA=${DATA_DIR:-$DIR/data}
PID=

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CPORT=$(free_port)
PPORT=$(free_port)
EP=127.0.0.1:$CPORT

stop() {
  if [[ -n $PID ]]; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=
  fi
}
cleanup() { stop; rm -rf "$DIR"; }
trap cleanup EXIT

start() {
  "$BIN" --name m --data-dir "$DATA" \
    --listen-client-urls "http://$EP" --advertise-client-urls "http://$EP" \
    --listen-peer-urls "http://127.0.0.1:$PPORT" --initial-advertise-peer-urls "http://127.0.0.1:$PPORT" \
    --initial-cluster "m=http://127.0.0.1:$PPORT" ${ETCD_RS_FLAGS:-} >>"$DIR/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 600); do
    if "$BENCH" --endpoints="$EP" --total=1 range probe >/dev/null 2>&1; then return; fi
    sleep 0.2
  done
  echo "etcd-rs did not become ready; log:" >&2
  tail -20 "$DIR/server.log" >&2
  exit 1
}

if [[ ! -d $DATA ]]; then
  start
  echo "loading $KEYS keys of $VAL_SIZE-byte values..." >&2
  "$BENCH" --endpoints="$EP" --conns=16 --clients=256 --total="$KEYS" --threads=1 --json \
    put --key-size=8 --val-size="$VAL_SIZE" --key-space-size="$KEYS" --sequential-keys >/dev/null
  stop
fi

for m in $MODES; do
  case $m in
    stream) mode=--stream ;;
    range) mode= ;;
    *) echo "unknown mode $m in MODES (stream range)" >&2; exit 1 ;;
  esac
  start
  sleep 2
  for _ in $(seq "$LISTS"); do
    line=$("$BENCH" --endpoints="$EP" --json list-rss '\0' '\0' --server-pid "$PID" --chunk-delay "$CHUNK_DELAY" $mode)
    echo "$line"
    [[ -n ${OUT:-} ]] && echo "$line" >>"$OUT"
    sleep 1
  done
  stop
done
