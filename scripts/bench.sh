#!/usr/bin/env bash
# The benchmark (docs/bench.md): weft vs the kernel's vxlan vs no encapsulation, pod to pod
# across two lab nodes, every path in one run. Prints a table and writes
# target/bench/results.json and target/bench/results.svg.
#
#   ./scripts/bench.sh [SECONDS]    # seconds per test; the default 5 keeps the whole
#                                   # benchmark (5 paths × 5 runs) under 5 minutes
#
# Exits non-zero if any path or test failed; the others are still measured and reported.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-5}"
case "$seconds" in
  '' | *[!0-9]* | 0)
    echo "usage: $0 [SECONDS]   (a positive whole number of seconds per test)" >&2
    exit 2
    ;;
esac

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME "$0" "$@"
  fi
  echo "bench.sh: must run as root (it creates network namespaces)" >&2
  exit 1
fi

./scripts/setup.sh

echo "== cargo build --release"
cargo build --release --workspace --bins --locked

echo "== weft-bench --seconds $seconds"
# weft-bench finds weftd next to itself (target/release), so the weft paths measure
# the release build.
exec target/release/weft-bench --seconds "$seconds" --out-dir target/bench
