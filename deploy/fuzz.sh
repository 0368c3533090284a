#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS (default 60) each (FUZZ_SEED: libFuzzer
# seed, default random), starting from its
# seed corpus and writing new inputs to a scratch directory, so the seeds stay
# as committed. A crash fails the run and leaves its input under the target's
# fuzz/artifacts/. cargo-fuzz needs -Z flags: RUSTC_BOOTSTRAP=1 allows them on
# a stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
# libFuzzer seed: 0 picks a random one; test.sh passes a fixed seed so a CI
# run is repeatable (a crash it reports can be reproduced).
seed="${FUZZ_SEED:-0}"
targets=(
  "fastpath/packet parse_frame"
  "fastpath/tables validate_slot"
  "ovn-bridge/ovsdb codec"
  "fastpath conntrack"
)
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
for t in "${targets[@]}"; do
  read -r dir target <<<"$t"
  scratch=$(mktemp -d)
  seeds="$dir/fuzz/corpus/$target"
  [ -d "$seeds" ] || seeds=""
  printf '\n\033[1m== fuzz %s/%s for %ss\033[0m\n' "$dir" "$target" "$seconds"
  # Built first, on its own: a target that does not build fails the run
  # (the run's output below is filtered to its summary lines).
  (cd "$dir" && RUSTC_BOOTSTRAP=1 cargo fuzz build "$target" >"$scratch/build.log" 2>&1) || {
    tail -n 30 "$scratch/build.log" >&2
    echo "fuzz: $dir/$target does not build" >&2
    exit 1
  }
  rm -f "$scratch/build.log"
  (cd "$dir" && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "$scratch" ${seeds:+"$OLDPWD/$seeds"} -- \
     -max_total_time="$seconds" -seed="$seed" -print_final_stats=1 2>&1 | grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|SUMMARY|==[0-9]+==ERROR|Done)" || true)
  (cd "$dir" && test ! -d fuzz/artifacts/"$target" || test -z "$(ls -A fuzz/artifacts/"$target" 2>/dev/null)") || {
    echo "fuzz: $dir/$target found a crash: see $dir/fuzz/artifacts/$target" >&2
    exit 1
  }
  rm -rf "$scratch"
done
