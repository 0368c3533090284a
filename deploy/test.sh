#!/usr/bin/env bash
# Runs every check and test: formatting, lints, the test suite (each test in
# its own process: DPDK's EAL can start once per process), the
# model-checked table protocol, and a short run of every fuzz target.
# Run deploy/setup.sh first on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "build every binary (tests start them)"
cargo build --workspace --bins

step "test suite"
cargo nextest run --workspace --no-fail-fast "$@"

step "model check of the table publish protocol (loom)"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p fastpath-tables --release --test loom --no-default-features

step "fuzz targets, ${FUZZ_SECONDS:-20}s each"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}" FUZZ_SEED="${FUZZ_SEED:-1}" ./deploy/fuzz.sh
