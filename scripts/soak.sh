#!/usr/bin/env bash
# The soak (issue 17): a two-node weft lab for MINUTES (default 10) with a long-lived,
# paced TCP stream between pods on the two nodes, fake peer leases coming and going in
# etcd a few times a second, and a weftd restart (SIGTERM, start) on node 2 every
# minute. Prints RSS and open descriptors of both weftds at start and end, restarts,
# churn operations, bytes moved and the stream's longest stall; exits non-zero if the
# stream failed or stalled, or node 1's weftd grew by more than 10% in RSS or
# descriptors after a warm-up minute (see tests/src/bin/weft-soak.rs for why).
#
#   ./scripts/soak.sh [MINUTES] [weft-soak flags...]   # e.g. --rate 4194304
#
# Not part of CI or scripts/test.sh. Uses the debug build (cargo build --workspace
# --bins), or the binaries in $WEFT_BIN_DIR. The lab is removed on exit, also when the
# run is interrupted (Ctrl-C, SIGTERM).
set -euo pipefail
cd "$(dirname "$0")/.."

minutes="${1:-10}"
case "$minutes" in
  '' | *[!0-9]* | 0)
    echo "usage: $0 [MINUTES] [weft-soak flags...]   (a positive whole number of minutes)" >&2
    exit 2
    ;;
esac
shift $(( $# > 0 ? 1 : 0 ))

if [ "$(id -u)" -ne 0 ]; then
  echo "soak.sh: must run as root (it creates network namespaces)" >&2
  exit 1
fi

if [ -z "${WEFT_BIN_DIR:-}" ]; then
  echo "== cargo build --workspace --bins"
  cargo build --workspace --bins --locked
  bin="$(pwd)/target/debug"
else
  bin="$WEFT_BIN_DIR"
fi
export WEFT_BIN_DIR="$bin"
prefix="soak$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n')"
soak_pid=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$soak_pid" ] && kill -0 "$soak_pid" 2>/dev/null; then
    kill -TERM "$soak_pid" 2>/dev/null || true
    wait "$soak_pid" 2>/dev/null || true
  fi
  # weft-soak removes its lab when it ends; after an interruption the lab's record in
  # /run/weft-lab lets weft-lab remove what is left (namespaces, etcd, weftds).
  if [ -f "/run/weft-lab/$prefix.json" ]; then
    "$bin/weft-lab" down --prefix "$prefix" || rc=1
  fi
  left=$(ip netns list | grep -c "^$prefix-" || true)
  if [ "$left" != 0 ]; then
    echo "soak.sh: $left namespaces of lab $prefix are left" >&2
    rc=1
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== weft-soak --minutes $minutes --prefix $prefix $*"
# In the background so that the traps run at once on a signal.
"$bin/weft-soak" --minutes "$minutes" --prefix "$prefix" "$@" &
soak_pid=$!
wait "$soak_pid"
