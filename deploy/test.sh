#!/usr/bin/env bash
# Runs every check and test: formatting, lints, the test suite (each test in
# its own process: DPDK's EAL can start once per process), and the
# model-checked table protocol. Run deploy/setup.sh first on a fresh machine.
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
