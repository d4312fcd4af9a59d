#!/usr/bin/env bash
# The benchmark (docs/bench.md): weft vs the kernel's vxlan vs no encapsulation, pod to pod
# across two lab nodes, on every underlay mode (whole, nic, nic-nogro, partial), with the
# mixed kernel/weft paths, in one run. Prints a table and writes target/bench/results.json,
# results.md and results.svg.
#
#   ./scripts/bench.sh [SECONDS] [WEFT-BENCH FLAGS...]
#
# SECONDS per test (default 4): 4 underlays × 7 paths × (tcp-1, tcp-4, udp64, rtt) × 3
# rounds takes about 25 minutes on a 2-CPU machine, plus the release build. Flags after
# SECONDS go to weft-bench and replace the defaults they name, e.g.
#   ./scripts/bench.sh 1 --rounds 1 --underlay nic                   # a quick look (~2 min)
#   ./scripts/bench.sh 5 --paths kernel-vxlan,weft-vxlan,weft-vxlan-tc,weft-vxlan-userspace
#
# Exits non-zero if any path or test failed; the others are still measured and reported.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-4}"
case "$seconds" in
  '' | *[!0-9]* | 0)
    echo "usage: $0 [SECONDS] [WEFT-BENCH FLAGS...]   (SECONDS: a positive whole number of seconds per test)" >&2
    exit 2
    ;;
esac
[ "$#" -gt 0 ] && shift

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME "$0" "$seconds" "$@"
  fi
  echo "bench.sh: must run as root (it creates network namespaces)" >&2
  exit 1
fi

# The default tests leave out tcp-1-rev (the reverse of tcp-1 on a symmetric lab), to
# keep four underlays within the half hour; --tests replaces them.
defaults=()
case " $* " in
  *" --tests "* | *" --tests="*) ;;
  *) defaults+=(--tests tcp-1,tcp-4,udp64,rtt) ;;
esac
case " $* " in
  *" --out-dir "* | *" --out-dir="*) ;;
  *) defaults+=(--out-dir target/bench) ;;
esac

./scripts/setup.sh

echo "== cargo build --release"
cargo build --release --workspace --bins --locked

echo "== weft-bench --seconds $seconds ${defaults[*]} $*"
# weft-bench finds weftd next to itself (target/release), so the weft paths measure
# the release build.
exec target/release/weft-bench --seconds "$seconds" "${defaults[@]}" "$@"
