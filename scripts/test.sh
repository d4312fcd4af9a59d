#!/usr/bin/env bash
# The README's test command: installs what is missing, builds, runs every test
# (unit, property, and the root end-to-end tests in network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build (the e2e tests run the real binaries)"
cargo build --workspace --locked --bins

echo "== cargo test"
# The root e2e tests create their own namespaces with per-run prefixes, so they can run
# in parallel; on 2 cores, two test threads keep timing-sensitive ones honest.
cargo test --workspace --locked -- --test-threads="${WEFT_TEST_THREADS:-2}"
